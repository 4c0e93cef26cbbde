"""Multi-process training through Lightning's DDP strategy, on CPU (gloo), with ssmzoo's datamodules.

What makes 2 ranks × batch b the same training as 1 process × batch 2b: the training sampler
(:class:`ssmzoo.data.loader.EpochSampler`) draws one permutation per (run seed, epoch), the same on every rank,
and gives rank r the positions r, r + R, r + 2R, ... of it, so step k of the R ranks together takes exactly the
samples of step k of one process at R times the batch; DDP averages the ranks' gradients, and each rank's loss
is the mean over its samples, so the averaged gradient is the mean over all R·b samples, as in one process.
With no batch statistics (layer norm, not batch norm), no dropout and float64, the weights then agree to
rounding. The fast test checks the sampler's arithmetic; the slow one runs ``ssmzoo fit --trainer.strategy ddp
--trainer.devices 2`` and checks what the ranks saw and the checkpoint it wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import TensorDataset

from ssmzoo.data import loader as loader_module
from ssmzoo.data.loader import ResumableDataLoader

TESTS = Path(__file__).resolve().parent


def rank_batches(monkeypatch, n: int, batch_size: int, world: int, rank: int, epoch: int) -> list[list[int]]:
    """The batches of ``rank`` of ``world`` in ``epoch``, as the loader builds them once torch.distributed is up."""
    monkeypatch.setattr(loader_module.dist, "is_initialized", lambda: world > 1)
    monkeypatch.setattr(loader_module.dist, "get_world_size", lambda: world)
    monkeypatch.setattr(loader_module.dist, "get_rank", lambda: rank)
    loader = ResumableDataLoader(TensorDataset(torch.arange(n)), batch_size, shuffle=True, seed=5)
    loader.sampler.set_epoch(epoch)
    return [batch[0].tolist() for batch in loader]


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("epoch", [0, 1])
def test_ranks_together_take_the_batches_of_one_process_at_the_combined_batch(monkeypatch, world, epoch):
    n, b = 24 * world, 4
    single = rank_batches(monkeypatch, n, world * b, 1, 0, epoch)
    ranks = [rank_batches(monkeypatch, n, b, world, r, epoch) for r in range(world)]
    assert all(len(r) == len(single) for r in ranks)  # the same number of steps per epoch
    for step, combined in enumerate(single):
        parts = [r[step] for r in ranks]
        assert sorted(sum(parts, [])) == sorted(combined)  # step k together == step k alone
    seen = [set(sum(r, [])) for r in ranks]
    assert sum(len(s) for s in seen) == n and set().union(*seen) == set(range(n))  # disjoint, and all of it
    # another epoch is another order, the same on every rank
    assert rank_batches(monkeypatch, n, b, world, 0, epoch + 1) != ranks[0]


# -- the real thing: two processes ----------------------------------------------------------------------------


def sample_key(x: torch.Tensor, length: torch.Tensor) -> str:
    """A sample's identity: a hash of its values (Pathfinder images are all different; the test checks that)."""
    return hashlib.sha1(x[: int(length)].to(torch.float64).numpy().tobytes()).hexdigest()[:16]


class RecordBatches(Callback):
    """Writes, per rank, the samples of every training step to ``<out>/rank<r>.json`` (run in the ranks' processes
    through ``--trainer.callbacks``)."""

    def __init__(self, out: str) -> None:
        self.out, self.steps = out, []

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0:
            torch.save(pl_module.state_dict(), Path(self.out) / "initial.pt")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        x, lengths, _ = batch
        self.steps.append([sample_key(x[i].cpu(), lengths[i]) for i in range(len(x))])

    def on_train_end(self, trainer, pl_module) -> None:
        path = Path(self.out) / f"rank{trainer.global_rank}-of-{trainer.world_size}.json"
        path.write_text(json.dumps(self.steps))


# 64 training images (80 generated, 8 validation, 8 test); no batch norm, no dropout, float64.
CONFIG = """
seed_everything: 3
test_after_fit: false
trainer:
  max_epochs: 2
  accelerator: cpu
  precision: 64-true
  num_sanity_val_steps: 0
  enable_progress_bar: false
  enable_model_summary: false
  log_every_n_steps: 1
model:
  class_path: ssmzoo.tasks.ClassificationTask
  init_args:
    model:
      class_path: ssmzoo.models.SequenceModel
      init_args:
        d_model: 8
        n_layers: 2
        layer: s4d
        layer_args: {d_state: 4, bidirectional: true, dropout: 0.0}
        norm: layer
        prenorm: true
        dropout: 0.0
    lr: 0.01
    warmup: 2
data:
  class_path: ssmzoo.data.lra.GeneratedPathfinderDataModule
  init_args: {n: 80, contour_length: 6, generator_seed: 4}
"""
N_TRAIN, BATCH, STEPS = 64, 4, 2 * 64 // 8


def last_weights_of_fit(arguments: list[str], callbacks: list[dict], run_folder: Path, steps: int) -> dict:
    """``ssmzoo fit ARGUMENTS`` with ``callbacks`` in a new process (tests/ importable, one OpenMP thread; Lightning's
    launcher starts the other ranks by running the same command again); the state dict of the last.ckpt of the one
    run under ``run_folder``, which must have reached ``steps``. Shared with tests/test_fsdp.py."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "ssmzoo.cli", "fit", *arguments, "--trainer.callbacks", json.dumps(callbacks)]
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
    output = done.stdout.decode()
    assert done.returncode == 0, output[-6000:]
    (run_dir,) = run_folder.iterdir()  # one run folder, even with two processes
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == steps, output[-3000:]
    return checkpoint["state_dict"]


def fit(config: Path, root: Path, record: Path, *extra: str) -> dict:
    """``ssmzoo fit`` of ``config`` in a new process, returning the state dict of the run's last.ckpt."""
    record.mkdir(parents=True)
    callbacks = [{"class_path": "test_ddp.RecordBatches", "init_args": {"out": str(record)}}]
    return last_weights_of_fit(["--config", str(config), "--trainer.default_root_dir", str(root), *extra],
                               callbacks, root / "cfg_ddp", STEPS)


def steps_seen(folder: Path, name: str) -> list[list[str]]:
    return json.loads((folder / name).read_text())


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_equals_one_process_at_double_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMZOO_DATA", str(tmp_path / "data"))
    (tmp_path / "cfg").mkdir()
    config = tmp_path / "cfg" / "ddp.yaml"
    config.write_text(CONFIG)

    # the data, generated once here (both runs read it); every training image is different
    from ssmzoo.data.lra import GeneratedPathfinderDataModule

    datamodule = GeneratedPathfinderDataModule(n=80, contour_length=6, generator_seed=4)
    datamodule.prepare_data()
    images, _ = datamodule.load_split("train")
    train = [sample_key(torch.from_numpy(x), torch.tensor(len(x))) for x in images]
    assert len(train) == N_TRAIN and len(set(train)) == N_TRAIN

    single = fit(config, tmp_path / "single", tmp_path / "seen_single", "--trainer.devices", "1",
                 "--data.init_args.batch_size", str(2 * BATCH))
    ddp = fit(config, tmp_path / "ddp", tmp_path / "seen_ddp", "--trainer.devices", "2", "--trainer.strategy", "ddp",
              "--data.init_args.batch_size", str(BATCH))

    one = steps_seen(tmp_path / "seen_single", "rank0-of-1.json")
    rank0, rank1 = (steps_seen(tmp_path / "seen_ddp", f"rank{r}-of-2.json") for r in (0, 1))
    assert len(one) == len(rank0) == len(rank1) == STEPS
    per_epoch = STEPS // 2
    for epoch in range(2):
        steps = range(epoch * per_epoch, (epoch + 1) * per_epoch)
        seen0, seen1 = (sum((rank[k] for k in steps), []) for rank in (rank0, rank1))
        # the two ranks saw disjoint halves of the training set, all of it, once
        assert not set(seen0) & set(seen1) and sorted(seen0 + seen1) == sorted(train)
    for k in range(STEPS):  # and at every step, together, the samples the single process took
        assert len(rank0[k]) == len(rank1[k]) == BATCH and sorted(rank0[k] + rank1[k]) == sorted(one[k])

    assert single.keys() == ddp.keys()
    for name in single:
        assert single[name].dtype == torch.float64
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-9, atol=1e-11, msg=name)
    # both started from the same weights, and training moved them far beyond that tolerance
    initial = torch.load(tmp_path / "seen_single" / "initial.pt", weights_only=True)
    initial_ddp = torch.load(tmp_path / "seen_ddp" / "initial.pt", weights_only=True)
    assert all(torch.equal(initial[k], initial_ddp[k]) for k in initial)
    assert max((single[k] - initial[k]).abs().max().item() for k in single if k in initial) > 1e-3
