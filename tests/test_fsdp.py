"""FSDP with torch.compile on CPU: the Mamba LM config under Lightning's ``ModelParallelStrategy`` (FSDP2,
``fully_shard``: each block, then the network; ``Task.configure_model``) on 2 processes (gloo), with
``--compile true``, ends at the weights of one process at double the batch, in float64 (as tests/test_ddp.py
does for DDP: the training sampler gives the two ranks together the samples of the one process's step, FSDP
averages the gradients). Lightning's own ``fsdp`` strategy refuses a CPU accelerator ("The strategy `fsdp` requires
a GPU accelerator"), and ``ModelParallelStrategy`` refuses ``precision=64-true``, so a callback turns the task to
float64 before the network is sharded, in both runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from test_ddp import last_weights_of_fit

ROOT = Path(__file__).resolve().parents[1]
BATCH, STEPS = 2, 6
FSDP = ["--trainer.strategy.class_path=lightning.pytorch.strategies.ModelParallelStrategy",
        "--trainer.strategy.init_args.data_parallel_size=2", "--trainer.strategy.init_args.tensor_parallel_size=1",
        "--trainer.strategy.init_args.save_distributed_checkpoint=false"]


class Float64(Callback):
    """The task in float64, before ``configure_model`` shards it (Lightning's setup hook comes first); in one
    process, its initial weights saved to ``out``."""

    def __init__(self, out: str = "") -> None:
        self.out = out

    def setup(self, trainer, pl_module, stage) -> None:
        pl_module.double()

    def on_train_start(self, trainer, pl_module) -> None:
        assert all(p.dtype == torch.float64 for p in pl_module.parameters())
        if self.out and trainer.world_size == 1:
            torch.save(pl_module.state_dict(), self.out)


def fit(root: Path, corpus: Path, *extra: str) -> dict:
    """``ssmzoo fit`` of a tiny configs/lm/mamba.yaml in a new process; the state dict of its last.ckpt."""
    callbacks = [{"class_path": "test_fsdp.Float64", "init_args": {"out": str(root / "initial.pt")}}]
    arguments = ["--config", str(ROOT / "configs/lm/mamba.yaml"),
                 f"--data.init_args.path={corpus}", "--data.init_args.seq_len=16", "--data.init_args.val_split=1",
                 "--data.init_args.test_split=1", "--model.init_args.model.init_args.d_model=16",
                 "--model.init_args.model.init_args.n_layers=2", f"--trainer.max_steps={STEPS}",
                 f"--trainer.val_check_interval={STEPS}", "--trainer.limit_val_batches=1",
                 "--model.init_args.sample_length=0", "--trainer.enable_progress_bar=false",
                 "--trainer.enable_model_summary=false", "--test_after_fit=false", "--compile=true",
                 f"--trainer.default_root_dir={root}", *extra]
    return last_weights_of_fit(arguments, callbacks, root / "lm_mamba", STEPS)


@pytest.mark.slow
def test_fsdp_with_compile_on_two_cpu_processes_equals_one_process_at_double_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMZOO_DATA", str(tmp_path / "data"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    # three documents of 8 lines of 48 characters: 24 windows of 16 tokens per split, so the 6 steps are one epoch
    # of whole batches in both runs
    for i, line in enumerate(["ROMEO: O, she doth teach the torches to burn!", "JULIET: My bounty is as boundless as the sea,",
                              "MERCUTIO: O, then, I see Queen Mab hath been.."]):
        (corpus / f"{i}.txt").write_text(f"{line:<48}\n" * 8)
    from ssmzoo.data.lm import TextDataModule

    data = TextDataModule(path=str(corpus), tokenizer="byte", seq_len=16, val_split=1, test_split=1, batch_size=4)
    assert len(data.dataset("train")) == STEPS * 2 * BATCH
    single = fit(tmp_path / "single", corpus, "--trainer.devices=1", f"--data.init_args.batch_size={2 * BATCH}")
    sharded = fit(tmp_path / "fsdp", corpus, "--trainer.devices=2", *FSDP, f"--data.init_args.batch_size={BATCH}")
    assert single.keys() == sharded.keys()
    for name in single:
        assert single[name].dtype == torch.float64
        torch.testing.assert_close(sharded[name], single[name], rtol=1e-9, atol=1e-11, msg=name)
    # training moved the weights far beyond that tolerance
    initial = torch.load(tmp_path / "single" / "initial.pt", weights_only=True)
    assert max((single[k] - initial[k]).abs().max().item() for k in single) > 1e-3


def test_a_float64_language_model_keeps_float64_in_its_loss():
    """Before: the task cast the logits to float32 for the cross entropy, so float64 runs (this file's, the DDP
    test's) compared losses rounded to float32; half-precision logits are still upcast to float32."""
    from ssmzoo import LanguageModel
    from ssmzoo.tasks import LanguageModelingTask

    torch.manual_seed(0)
    task = LanguageModelingTask(LanguageModel(11, 8, n_layers=1, layer="mamba", layer_args={"d_state": 4}),
                                sample_length=0)
    ids = torch.randint(0, 11, (2, 7))
    batch = {"input_ids": ids, "targets": torch.roll(ids, -1, 1)}
    assert task.double()._loss(batch)[2].dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert task.float()._loss(batch)[2].dtype == torch.float32


def test_without_a_device_mesh_configure_model_leaves_the_network_alone():
    from ssmzoo import LanguageModel
    from ssmzoo.tasks import LanguageModelingTask

    task = LanguageModelingTask(LanguageModel(11, 8, n_layers=1, layer="mamba", layer_args={"d_state": 4}),
                                sample_length=0)
    before = dict(task.model.named_parameters())
    task.configure_model()
    assert dict(task.model.named_parameters()) == before and not hasattr(task.model, "param_tags_by_name")
