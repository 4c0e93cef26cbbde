"""ClassificationTask and the ssmzoo CLI, end to end on a tiny synthetic data set."""

from __future__ import annotations

import csv
import json
import math
import sys
from unittest import mock
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import EarlyStopping
from torch.utils.data import DataLoader, TensorDataset

from ssmzoo.cli import SsmzooCLI, main, run
from ssmzoo.data.commands import main as data_main
from ssmzoo.tasks import ClassificationTask
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
        d_model: 8
        n_layers: 1
        layer: s4d
        layer_args: {{d_state: 4, bidirectional: true, lr: 0.001}}
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
    assert (run_dir / "metrics.csv").is_file() and (run_dir / "config.yaml").is_file()
    assert list(run_dir.glob("events.out.tfevents*"))  # TensorBoard logs share the run's folder
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 6 and results["run_dir"] == str(run_dir)
    assert 0.0 <= results["test_acc"] <= 1.0 and results["test_acc"] == results["test_metrics"]["test/acc"]
    assert results["majority_baseline"] == pytest.approx(cli.datamodule.majority_class_accuracy("test"))
    assert results["config"] == [str(root / "tiny.yaml")]
    # the best checkpoint, by the task's own metric, has an absolute path
    assert results["checkpoint"].startswith(str(run_dir / "checkpoints" / "best-"))
    assert (results["monitor"], cli.trainer.checkpoint_callback.mode) == ("val/acc", "max")
    with open(run_dir / "metrics.csv") as f:
        val_acc = [float(row["val/acc"]) for row in csv.DictReader(f) if row["val/acc"]]
    assert len(val_acc) == 2 and results["best_score"] == pytest.approx(max(val_acc))
    # last.ckpt holds the final state, whether or not the last validation improved
    assert torch.load(results["last_checkpoint"], weights_only=True)["global_step"] == 6


def test_data_decides_the_models_shape(fitted):
    cli, _ = fitted
    model = cli.model.model
    assert (model.d_output, model.vocab_size, model.d_input) == (3, 6, None)  # from TinyClassification


def test_test_subcommand_reloads_the_best_checkpoint_from_another_directory(fitted, tmp_path, monkeypatch):
    cli, root = fitted
    best = cli.results["checkpoint"]
    monkeypatch.chdir(tmp_path)  # the checkpoint path is absolute, so the working directory does not matter
    again = run(["test", "--config", str(root / "tiny.yaml"), "--ckpt_path", best,
                 "--trainer.default_root_dir", str(root / "runs")])
    metrics = again.trainer.callback_metrics
    reloaded, trained = again.model.state_dict(), cli.model.state_dict()  # cli.model holds the best weights
    assert reloaded.keys() == trained.keys() and all(torch.equal(reloaded[k], trained[k]) for k in trained)
    assert float(metrics["test/acc"]) == pytest.approx(cli.results["test_acc"])
    assert float(metrics["test/majority_baseline"]) == pytest.approx(cli.results["majority_baseline"])
    # a run of its own, with its own results
    assert again.results_path.parent.name == "version_1"
    assert json.loads(again.results_path.read_text())["test_acc"] == pytest.approx(cli.results["test_acc"])


def test_load_from_checkpoint_needs_no_datamodule(fitted):
    """The values linked from the data are in the checkpoint's hyperparameters."""
    cli, _ = fitted
    task = ClassificationTask.load_from_checkpoint(cli.results["checkpoint"])
    assert (task.model.d_output, task.model.vocab_size) == (3, 6)
    reloaded, trained = task.state_dict(), cli.model.state_dict()
    assert reloaded.keys() == trained.keys() and all(torch.equal(reloaded[k], trained[k]) for k in trained)


def test_a_linked_value_set_in_the_config_is_refused(tmp_path):
    config = tmp_path / "linked.yaml"
    config.write_text(CONFIG.replace("d_model: 8", "d_model: 8\n        d_output: 3"))
    with pytest.raises(ValueError, match="d_output=3 is set in the config, but ssmzoo takes d_output from the datamodule"):
        run(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path)])


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


def help_text(args, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_help_lists_every_subcommand_and_ssmzoos_classes(capsys):
    top = help_text(["--help"], capsys)
    for subcommand in ("fit", "validate", "test", "data"):
        assert f"    {subcommand} " in top
    fit = help_text(["fit", "--help"], capsys)
    for name in ("ssmzoo.tasks.ClassificationTask", "ssmzoo.tasks.ForecastingTask",
                 "ListOpsDataModule", "InformerDataModule", "ARDataModule", "SelectiveCopyingDataModule"):
        assert name in fit
    assert "--early_stopping_patience" in fit and "--last_checkpoint.every_n_train_steps" in fit
    task = help_text(["fit", "--model.help", "ClassificationTask"], capsys)
    assert "--model.lr" in task and "--model.warmup" in task
    assert "--data.n_train" in help_text(["fit", "--data.help", "ListOpsDataModule"], capsys)
    data = help_text(["data", "--help"], capsys)
    assert "listops" in data and "paths" in data


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


def test_data_paths_command_says_what_is_where(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SSMZOO_DATA", str(tmp_path))
    (tmp_path / "ETT-small").mkdir()
    (tmp_path / "ETT-small" / "ETTh2.csv").write_text("date,OT\n")
    found = {name: present for name, _, present in data_main(["paths"])}
    assert found["ETTh2"] and not found["ETTh1"] and not found["LRA Text (IMDB)"]
    main(["data", "paths"])  # the same through the ssmzoo command
    out = capsys.readouterr().out.split("data root:")[-1]
    assert str(tmp_path / "imdb") in out and "--data.init_args.data_dir" in out


def _built(config: Path, *extra: str) -> SsmzooCLI:
    """The CLI with everything built from ``config`` and nothing run (from a clean sys.argv, not pytest's, as a
    command line would give it)."""
    args = ["--config", str(config), "--trainer.logger=false", *extra]
    with mock.patch.object(sys, "argv", ["ssmzoo", *args]):
        return SsmzooCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                         run=False)


@pytest.mark.parametrize(
    "config,monitor,mode",
    [("configs/lra/listops/s4d_small.yaml", "val/acc", "max"), ("configs/timeseries/ar/spacetime_ar8.yaml", "val/mse", "min")],
)
def test_checkpointing_and_early_stopping_follow_the_tasks_metric(config, monitor, mode, tmp_path, monkeypatch):
    monkeypatch.setenv("SSMZOO_DATA", str(tmp_path))
    cli = _built(ROOT / config, "--early_stopping_patience=2", f"--trainer.default_root_dir={tmp_path}")
    assert (type(cli.model).monitor, type(cli.model).monitor_mode) == (monitor, mode)
    best = cli.trainer.checkpoint_callback
    stop = [c for c in cli.trainer.callbacks if isinstance(c, EarlyStopping)]
    assert (best.monitor, best.mode) == (monitor, mode)
    assert len(stop) == 1 and (stop[0].monitor, stop[0].mode, stop[0].patience) == (monitor, mode, 2)


def test_early_stopping_needs_a_positive_patience_and_a_task_that_names_its_metric(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(CONFIG)
    with pytest.raises(ValueError, match="--early_stopping_patience must be an int >= 1"):
        _built(config, "--early_stopping_patience=0")
    plain = tmp_path / "plain.yaml"
    plain.write_text(CONFIG.replace("ssmzoo.tasks.ClassificationTask", f"{__name__}.PlainTask"))
    with pytest.raises(ValueError, match="PlainTask declares no monitored metric"):
        _built(plain, "--early_stopping_patience=1")


class PlainTask(ClassificationTask):
    """A task that does not say which metric its runs follow."""

    monitor = None


def test_evaluation_of_a_diverged_model_warns_that_its_accuracy_is_meaningless():
    from lightning.pytorch import Trainer

    from ssmzoo import SequenceModel

    data = TinyClassification()
    model = SequenceModel(d_output=3, vocab_size=data.vocab_size, d_model=8, n_layers=1, layer="s4d",
                          layer_args={"d_state": 4})
    task = ClassificationTask(model)
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)
    with torch.no_grad():  # a finite model: no warning
        trainer.validate(task, datamodule=data, verbose=False)
        model.decoder.bias.fill_(float("nan"))  # what a diverged run leaves behind
    with pytest.warns(UserWarning, match=r"2 val batch\(es\) .* non-finite logits"):
        trainer.validate(task, datamodule=data, verbose=False)
    with pytest.warns(UserWarning, match=r"test batch\(es\) .* non-finite logits"):
        trainer.test(task, datamodule=data, verbose=False)
