"""Language-modelling and recall tasks: metrics are sums over the split (bits per byte as defined, independent of
the batch size), samples after validation leave the run's random state alone, a killed LM run resumes to the same
weights, ``ssmzoo test`` reproduces the fit's test numbers, and recall counts only the asked tokens."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from test_runs import Killed

from ssmzoo.cli import run
from ssmzoo.data.lm import TextDataModule
from ssmzoo.data.synthetic import NeedleDataModule
from ssmzoo import Segments
from ssmzoo.models import LanguageModel
from ssmzoo.tasks import LanguageModelingTask, RecallTask
from ssmzoo.tasks.schedule import warmup_constant

DOCS = ["Now is the winter of our discontent\nMade glorious summer by this sun of York;\n" * 4,
        "All the world's a stage,\nAnd all the men and women merely players;\n" * 4,
        "Friends, Romans, countrymen, lend me your ears;\n" * 5,
        "O Romeo, Romeo! wherefore art thou Romeo? — « naïve » 日本\n" * 4]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add overhead


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMZOO_DATA", str(tmp_path / "data"))
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i, text in enumerate(DOCS):
        (folder / f"{i}.txt").write_text(text)
    return folder


def trainer(**kwargs) -> Trainer:
    return Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                   enable_checkpointing=False, **kwargs)


@pytest.mark.parametrize("tokenizer", ["byte", "bpe"])
def test_bits_per_byte_is_the_split_sum_whatever_the_batch_size(corpus, tokenizer):
    torch.manual_seed(0)
    data = TextDataModule(path=str(corpus), tokenizer=tokenizer, bpe_vocab_size=300, seq_len=24, val_split=2,
                          test_split=1, batch_size=3)
    model = LanguageModel(data.vocab_size, 16, 1, layer="s4d", layer_args=dict(d_state=4))
    task = LanguageModelingTask(model, sample_length=0)
    results = []
    for batch_size in (3, 7):
        data.batch_size = batch_size
        results.append(trainer().validate(task, datamodule=data, verbose=False)[0])
    assert results[0] == pytest.approx(results[1], rel=1e-6)
    # by hand: total nats over every target of the split, over ln 2 times the bytes those targets cover
    nats = tokens = num_bytes = 0.0
    dataset = data.dataset("val")
    with torch.no_grad():
        for i in range(len(dataset)):
            w = dataset[i]
            segments = Segments.from_seq_idx(w["seq_idx"][None])  # the task packs: no document sees another
            logits = model(w["input_ids"][None], segments=segments).double()
            nats += float(F.cross_entropy(logits[0], w["targets"], reduction="sum"))
            tokens += len(w["targets"])
            num_bytes += int(w["num_bytes"])
    assert results[0]["val/bpb"] == pytest.approx(nats / (math.log(2) * num_bytes), rel=1e-5)
    assert results[0]["val/loss"] == pytest.approx(nats / tokens, rel=1e-5)
    assert results[0]["val/ppl"] == pytest.approx(math.exp(nats / tokens), rel=1e-5)


def test_a_sample_after_validation_uses_its_own_seed(corpus, tmp_path):
    torch.manual_seed(0)
    data = TextDataModule(path=str(corpus), seq_len=24, val_split=1, test_split=1, batch_size=4)
    task = LanguageModelingTask(LanguageModel(data.vocab_size, 16, 1, layer="mamba", layer_args=dict(d_state=4)),
                                sample_length=12, sample_prompt="Romeo")
    before = torch.get_rng_state()
    trainer(default_root_dir=str(tmp_path)).validate(task, datamodule=data, verbose=False)
    assert torch.equal(torch.get_rng_state(), before)
    first = task.last_sample
    assert first.startswith("Romeo") and len(first.encode()) >= len("Romeo") + 1
    trainer(default_root_dir=str(tmp_path)).validate(task, datamodule=data, verbose=False)
    assert task.last_sample == first  # the same step: the same sample


CONFIG = """
seed_everything: 5
test_after_fit: true
last_checkpoint: {every_n_train_steps: 2}
trainer:
  max_steps: 8
  val_check_interval: 3
  accelerator: cpu
  devices: 1
  enable_progress_bar: false
  enable_model_summary: false
model:
  class_path: ssmzoo.tasks.LanguageModelingTask
  init_args:
    model:
      class_path: ssmzoo.models.LanguageModel
      init_args: {d_model: 16, n_layers: 2, layer: s4d, layer_args: {d_state: 4, dropout: 0.2}, d_intermediate: 16}
    lr: 0.01
    sample_length: 6
data:
  class_path: ssmzoo.data.lm.TextDataModule
  init_args: {path: CORPUS, seq_len: 16, batch_size: 2, val_split: 1, test_split: 1}
"""


def fit(config: Path, root: Path, *extra: str):
    return run(["fit", "--config", str(config), "--trainer.default_root_dir", str(root), *extra])


def test_killed_run_resumes_to_the_same_weights_and_test_reproduces_its_numbers(corpus, tmp_path):
    """Dropout (the global RNG), shuffled windows (the loader's position) and samples at every validation: a run
    killed mid-epoch and resumed from last.ckpt ends with the uninterrupted run's weights; ssmzoo test on its best
    checkpoint gives the numbers fit reported."""
    (tmp_path / "cfg").mkdir()
    config = tmp_path / "cfg" / "lm.yaml"
    config.write_text(CONFIG.replace("CORPUS", str(corpus)))
    whole = fit(config, tmp_path / "whole")
    data = whole.datamodule
    assert len(data.dataset("train")) // 2 > 8  # one epoch: the kill is mid-epoch
    killer = json.dumps([{"class_path": "test_runs.KillAt", "init_args": {"at_step": 5}}])
    with pytest.raises(Killed):
        fit(config, tmp_path / "killed", "--trainer.callbacks", killer)
    resumed = fit(config, tmp_path / "killed", "--ckpt_path", "last")
    assert resumed.trainer.global_step == 8
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    samples = (Path(whole.trainer.log_dir) / "samples.txt").read_text()
    assert samples.count("--- step") == 2  # validations at steps 3 and 6

    tested = run(["test", "--config", str(config), "--ckpt_path", whole.results["checkpoint"],
                  "--trainer.default_root_dir", str(tmp_path / "whole")])
    again = json.loads(tested.results_path.read_text())
    for key in ("test_bpb", "test_ppl", "test_loss"):
        assert again[key] == pytest.approx(whole.results[key], rel=1e-6)


class Induction(torch.nn.Module):
    """Predicts, at each position, the token that followed the first earlier occurrence of the current token (the
    passkey oracle), except at the positions in ``wrong``, where it predicts token 0 (a filler, never a value)."""

    def __init__(self, vocab_size: int, wrong: int | None = None) -> None:
        super().__init__()
        self.vocab_size, self.wrong = vocab_size, wrong
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids):
        batch, length = input_ids.shape
        prediction = torch.zeros(batch, length, dtype=torch.long)
        for b in range(batch):
            seen = {}
            row = input_ids[b].tolist()
            for t, token in enumerate(row):
                if token in seen and seen[token] + 1 < t:
                    prediction[b, t] = row[seen[token] + 1]
                seen.setdefault(token, t)
        if self.wrong is not None:
            prediction[:, self.wrong] = 0
        return F.one_hot(prediction, self.vocab_size).float() * 10 + self.unused


def test_recall_counts_only_the_asked_tokens():
    data = NeedleDataModule(seq_len=24, pairs=2, num_train=4, num_val=8, num_test=8, batch_size=3)
    oracle = trainer().test(RecallTask(Induction(data.vocab_size)), datamodule=data, verbose=False)[0]
    assert oracle["test/acc"] == 1.0 and oracle["test/exact"] == 1.0
    # wrong at the first question (position 20), right at the second: half the tokens, no whole sequence
    half = trainer().test(RecallTask(Induction(data.vocab_size, wrong=20)), datamodule=data, verbose=False)[0]
    assert half["test/acc"] == 0.5 and half["test/exact"] == 0.0


def test_language_modeling_needs_byte_counts():
    data = NeedleDataModule(seq_len=24, num_train=4, num_val=4, num_test=4)
    task = LanguageModelingTask(Induction(data.vocab_size), sample_length=0)
    with pytest.raises(ValueError, match="num_bytes.*RecallTask"):
        trainer().validate(task, datamodule=data, verbose=False)


def test_bad_arguments():
    model = LanguageModel(11, 8, 1, layer="s4d", layer_args=dict(d_state=4))
    for kwargs, message in [(dict(model="x"), "model"), (dict(lr=0), "lr"), (dict(weight_decay=-1), "weight_decay"),
                            (dict(warmup=-1), "warmup"), (dict(lr_schedule="linear"), "lr_schedule"),
                            (dict(sample_length=-1), "sample_length"), (dict(sample_temperature=0), "sample_temperature"),
                            (dict(sample_top_k=1.5), "sample_top_k"), (dict(sample_prompt=3), "sample_prompt")]:
        with pytest.raises(ValueError, match=message):
            LanguageModelingTask(**{"model": model, **kwargs})
    with pytest.raises(ValueError, match="lr"):
        RecallTask(model, lr=-1.0)


def test_constant_schedule_after_warmup():
    assert [warmup_constant(s, 4) for s in range(7)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0]
    assert warmup_constant(0, 0) == 1.0


def test_first_use_under_inference_mode_gets_the_fast_backends():
    """``ssmzoo test`` in a fresh process runs the model first under Lightning's inference mode: the backends'
    probes must still run (with gradients), or every op falls back to its reference (and the neural memory's,
    which takes inner gradients, cannot run at all)."""
    import warnings

    from ssmzoo.models import MAC
    from ssmzoo.ops.causal_conv1d import dispatch as conv_dispatch
    from ssmzoo.ops.neural_memory import dispatch as memory_dispatch

    torch.manual_seed(0)
    model = MAC(48, d_model=16, n_layers=1, heads=2, segment_len=8)
    for dispatch in (conv_dispatch, memory_dispatch):
        dispatch.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed probe warns
        with torch.inference_mode():
            model(torch.randint(0, 48, (2, 20)))
    assert memory_dispatch._probed[("chunked", "cpu")] and conv_dispatch._probed[("conv", "cpu")]
