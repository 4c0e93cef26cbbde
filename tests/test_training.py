"""ClassificationTask and the ssmzoo CLI, end to end on a tiny synthetic data set."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
from pathlib import Path
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset

from ssmzoo.cli import main, run
from ssmzoo.tasks.schedule import warmup_cosine, warmup_steps_from


class TinyClassification(LightningDataModule):
    """Label = the first token's class; right-padded (tokens, lengths, labels) batches.

    Labels are drawn unevenly (class 0 twice as often) so the majority baseline is not 1/classes."""

    def __init__(
        self,
        n_train: int = 48,
        n_eval: int = 24,
        length: int = 10,
        num_classes: int = 3,
        batch_size: int = 16,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.n_train, self.n_eval, self.length = n_train, n_eval, length
        self.num_classes, self.batch_size, self.seed = num_classes, batch_size, seed
        self.vocab_size = num_classes + 3  # PAD=0, class tokens 1..num_classes, then filler tokens

    def _split(self, n: int, seed: int) -> TensorDataset:
        g = torch.Generator().manual_seed(seed)
        weights = torch.ones(self.num_classes)
        weights[0] = 2.0
        labels = torch.multinomial(weights, n, replacement=True, generator=g)
        lengths = torch.randint(2, self.length + 1, (n,), generator=g)
        tokens = torch.randint(self.num_classes + 1, self.vocab_size, (n, self.length), generator=g)
        tokens[:, 0] = labels + 1
        tokens[torch.arange(self.length)[None] >= lengths[:, None]] = 0
        return TensorDataset(tokens, lengths, labels)

    def setup(self, stage: str | None = None) -> None:
        self.splits = {
            "train": self._split(self.n_train, self.seed),
            "val": self._split(self.n_eval, self.seed + 1),
            "test": self._split(self.n_eval, self.seed + 2),
        }

    def majority_class_accuracy(self, split: str = "test") -> float:
        if not hasattr(self, "splits"):
            self.setup()
        majority = torch.bincount(self.splits["train"].tensors[2]).argmax()
        return float((self.splits[split].tensors[2] == majority).float().mean())

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["train"], batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["val"], batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["test"], batch_size=self.batch_size)


DATA_PATH = f"{TinyClassification.__module__}.TinyClassification"

CONFIG = f"""
seed_everything: 3
trainer:
  max_steps: 6
  val_check_interval: 3
  accelerator: cpu
  devices: 1
  enable_progress_bar: false
  enable_model_summary: false
model:
  class_path: ssmzoo.tasks.ClassificationTask
  init_args:
    model:
      class_path: ssmzoo.models.SequenceModel
      init_args:
        vocab_size: 6
        d_model: 8
        n_layers: 1
        layer: s4d
        layer_args: {{d_state: 4, bidirectional: true, lr: 0.001}}
        d_output: 3
        norm: batch
        prenorm: false
    lr: 0.01
    weight_decay: 0.05
    warmup: 2
data:
  class_path: {DATA_PATH}
  init_args: {{batch_size: 16}}
"""


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit")
    config = root / "tiny.yaml"
    config.write_text(CONFIG)
    cli = run(["fit", "--config", str(config), "--trainer.default_root_dir", str(root / "runs")])
    return cli, root


ROOT = Path(__file__).resolve().parents[1]


def test_fit_writes_checkpoint_and_results(fitted):
    cli, root = fitted
    run_dir = root / "runs" / f"{root.name}_tiny" / "version_0"
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    assert any(name.startswith("best-") for name in checkpoints) and "last.ckpt" in checkpoints
    assert (run_dir / "metrics.csv").is_file()
    if importlib.util.find_spec("tensorboard") is not None:  # TensorBoard logs share the run's folder
        assert list(run_dir.glob("events.out.tfevents*"))
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 6
    assert 0.0 <= results["test_acc"] <= 1.0
    assert results["majority_baseline"] == pytest.approx(cli.datamodule.majority_class_accuracy("test"))
    assert results["config"] == [str(root / "tiny.yaml")]
    assert results["checkpoint"].startswith(str(run_dir / "checkpoints" / "best-"))
    # the best checkpoint is the one with the highest val/acc, as ModelCheckpoint was told
    assert (
        cli.trainer.checkpoint_callback.monitor == "val/acc" and cli.trainer.checkpoint_callback.mode == "max"
    )


def test_test_subcommand_reloads_the_best_checkpoint(fitted):
    cli, root = fitted
    best = cli.results["checkpoint"]
    again = run(
        [
            "test",
            "--config",
            str(root / "tiny.yaml"),
            "--ckpt_path",
            best,
            "--trainer.default_root_dir",
            str(root / "runs"),
        ]
    )
    metrics = again.trainer.callback_metrics
    reloaded, trained = again.model.state_dict(), cli.model.state_dict()  # cli.model holds the best weights
    assert reloaded.keys() == trained.keys() and all(torch.equal(reloaded[k], trained[k]) for k in trained)
    assert float(metrics["test/acc"]) == pytest.approx(cli.results["test_acc"])
    assert float(metrics["test/majority_baseline"]) == pytest.approx(cli.results["majority_baseline"])


def test_optimizer_groups_give_ssm_params_their_lr_and_no_weight_decay(fitted):
    cli, _ = fitted
    groups = cli.trainer.optimizers[0].param_groups
    by_name = {name: g for g in groups for name in g["names"]}
    ssm = [n for n in by_name if n.split(".")[-1] in ("log_dt", "log_A_real", "A_imag", "B")]
    assert len(ssm) == 4
    for name in ssm:
        assert by_name[name]["weight_decay"] == 0.0
        assert by_name[name]["initial_lr"] == pytest.approx(1e-3)
    dense = by_name["encoder.weight"]
    assert dense["weight_decay"] == pytest.approx(0.05) and dense["initial_lr"] == pytest.approx(0.01)
    assert by_name["decoder.bias"]["weight_decay"] == 0.0
    # cosine schedule, stepped per batch: after all 6 steps the multiplier is warmup_cosine(6, 2, 6) = 0
    assert dense["lr"] == pytest.approx(0.01 * warmup_cosine(6, 2, 6), abs=1e-12)


def test_unknown_config_key_fails_with_clear_message(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(CONFIG.replace("d_model: 8", "d_model: 8\n        d_modle: 8"))
    with pytest.raises(SystemExit) as err:
        main(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path)])
    assert err.value.code != 0
    assert "d_modle" in capsys.readouterr().err


def test_wrong_type_fails_with_clear_message(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(
        CONFIG.replace("pooling", "x").replace("prenorm: false", "prenorm: false\n        pooling: max")
    )
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path)])
    assert "pooling" in capsys.readouterr().err


def test_warmup_cosine_schedule():
    assert [warmup_cosine(s, 4, 12) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warmup_cosine(4, 4, 12) == 1.0
    assert warmup_cosine(8, 4, 12) == pytest.approx(0.5)  # half way through the decay: cos(π/2) = 0
    assert warmup_cosine(10, 4, 12) == pytest.approx(0.5 * (1 + math.cos(0.75 * math.pi)))
    assert warmup_cosine(12, 4, 12) == pytest.approx(0.0)
    assert warmup_steps_from(0.1, 200) == 20 and warmup_steps_from(30, 200) == 30
    for bad in (-1, 2.5, float("nan")):
        with pytest.raises(ValueError, match="warmup"):
            warmup_steps_from(bad, 100)


LRA_CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs" / "lra").rglob("*.yaml"))


@pytest.mark.parametrize("config", LRA_CONFIGS)
def test_shipped_lra_configs_build_and_run(config, monkeypatch):
    """Every key of a shipped LRA config is a constructor argument of the class it configures, and the
    model it builds takes the batches its datamodule makes (tokens or pixels, single or paired)."""
    from lightning import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    monkeypatch.setattr("sys.argv", ["ssmzoo"])
    cli = LightningCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       run=False, args=["--config", str(ROOT / config), "--trainer.logger=false"])
    model, data = cli.model.model.eval(), cli.datamodule
    assert model.d_output == data.num_classes
    batch, length = 2, 16
    if getattr(data, "vocab_size", 0):
        assert model.vocab_size == data.vocab_size
        x = torch.randint(1, data.vocab_size, (batch, length))
    else:
        assert model.d_input == data.d_input
        x = torch.randn(batch, length, data.d_input)
    if model.paired:
        x = torch.stack([x, x.flip(1)], 1)
    with torch.no_grad():
        assert model(x).shape == (batch, data.num_classes)


def test_data_command_writes_listops_files(tmp_path):
    main(
        [
            "data",
            "listops",
            "--out",
            str(tmp_path),
            "--n-train",
            "6",
            "--n-val",
            "2",
            "--n-test",
            "2",
            "--min-length",
            "3",
            "--max-length",
            "40",
            "--max-depth",
            "3",
            "--max-args",
            "3",
        ]
    )
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        lines = (tmp_path / f"basic_{split}.tsv").read_text().splitlines()
        assert lines[0].split("\t") == ["Source", "Target"] and len(lines) == n + 1


def test_data_command_needs_a_known_name(capsys):
    with pytest.raises(SystemExit):
        main(["data", "imagenet"])
    assert "listops" in capsys.readouterr().err
