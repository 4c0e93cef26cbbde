"""Runs never lose work: a folder per run even for runs started together, last.ckpt always the latest
state, --ckpt_path last resumes in the run's own folder, a resumed run ends bit-identical to an
uninterrupted one, and a bad checkpoint is reported by name."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from ssmzoo.cli import run
from ssmzoo.cli.runs import allocate_version, run_dir_of

# 40 training samples in batches of 4: 10 steps per epoch, 2 epochs. Dropout in the model (so the global
# RNG matters), shuffled batches (so the data order matters), validation every 4 steps, last.ckpt every 3.
CONFIG = """
seed_everything: 7
test_after_fit: false
last_checkpoint: {every_n_train_steps: 3}
trainer:
  max_epochs: 2
  val_check_interval: 4
  accelerator: cpu
  devices: 1
  enable_progress_bar: false
  enable_model_summary: false
  log_every_n_steps: 1
model:
  class_path: ssmzoo.tasks.ClassificationTask
  init_args:
    model:
      class_path: ssmzoo.models.SequenceModel
      init_args:
        d_model: 16
        n_layers: 2
        layer: s4d
        layer_args: {d_state: 4, bidirectional: true, dropout: 0.1}
        norm: batch
        prenorm: false
        dropout: 0.2
    lr: 0.01
    warmup: 3
data:
  class_path: ssmzoo.data.lra.ListOpsDataModule
  init_args: {n_train: 40, n_val: 8, n_test: 8, min_length: 4, max_length: 40, max_depth: 3, max_args: 4,
              seed: 1, batch_size: 4}
"""
STEPS = 20


class Killed(Exception):
    """Stands for the process being killed."""


class KillAt(Callback):
    """Raises Killed when training is about to run the step after ``at_step``, as a kill would."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            raise Killed(f"killed at step {self.at_step}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The config file and a data root shared by this module's runs (ListOps is generated once)."""
    root = tmp_path_factory.mktemp("runs")
    (root / "cfg").mkdir()
    config = root / "cfg" / "tiny.yaml"  # its runs are named cfg_tiny
    config.write_text(CONFIG)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSMZOO_DATA", str(root / "data"))
        torch.set_num_threads(1)  # a tiny model on shared cores
        yield config, root


def fit(config: Path, root: Path, *extra: str):
    return run(["fit", "--config", str(config), "--trainer.default_root_dir", str(root), *extra])


@pytest.fixture(scope="module")
def uninterrupted(setup):
    config, root = setup
    cli = fit(config, root / "uninterrupted")
    return cli, {k: v.clone() for k, v in cli.model.state_dict().items()}


def val_losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "metrics.csv") as f:
        return {int(r["step"]): float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")}


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"differ: {different}"


# at 6: mid-epoch, from the every-3-steps checkpoint; at 8: just after a validation; at 13: in the second
# epoch, one step after the last checkpoint (12), which the resumed run does again
@pytest.mark.parametrize("kill_at,resume_from", [(6, 6), (8, 8), (13, 12)])
def test_a_killed_run_resumed_with_ckpt_path_last_ends_bit_identical(setup, uninterrupted, kill_at, resume_from,
                                                                      tmp_path, monkeypatch):
    config, root = setup
    reference_cli, reference = uninterrupted
    runs = root / f"killed_at_{kill_at}"
    killer = json.dumps([{"class_path": f"{__name__}.KillAt", "init_args": {"at_step": kill_at}}])
    with pytest.raises(Killed):
        fit(config, runs, "--trainer.callbacks", killer)
    run_dir = runs / "cfg_tiny" / "version_0"
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == resume_from and resume_from % 10 != 0  # a mid-epoch checkpoint
    assert last["loops"]["fit_loop"]["state_dict"]["combined_loader"]  # the data order's position is in it

    monkeypatch.chdir(tmp_path)  # resume from another working directory
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = fit(config, runs, "--ckpt_path", "last")
    assert not [w for w in caught if "not resumable" in str(w.message)]
    assert resumed.trainer.global_step == STEPS
    assert_same_tensors(resumed.model.state_dict(), reference)
    final, reference_final = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)
                              for d in (run_dir, Path(reference_cli.trainer.log_dir)))
    assert final["global_step"] == reference_final["global_step"] == STEPS
    for state, reference_state in zip(final["optimizer_states"][0]["state"].values(),
                                      reference_final["optimizer_states"][0]["state"].values()):
        assert_same_tensors(state, reference_state)
    # the resumed run continued in its own folder, keeping the first part's logs
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["version_0"]
    assert Path(resumed.trainer.log_dir) == run_dir
    losses, reference_losses = val_losses(run_dir), val_losses(Path(reference_cli.trainer.log_dir))
    assert min(losses) < kill_at and losses == reference_losses


def test_resumed_run_tests_its_best_checkpoint_from_another_directory(setup, tmp_path, monkeypatch):
    """The best checkpoint's path restored from the checkpoint is absolute, so the test after a resumed fit
    finds it from any working directory, even when the first run was given a relative root."""
    config, root = setup
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    monkeypatch.chdir(first)
    killer = json.dumps([{"class_path": f"{__name__}.KillAt", "init_args": {"at_step": 9}}])
    with pytest.raises(Killed):
        fit(config, Path("relative_runs"), "--trainer.callbacks", killer)
    last = first / "relative_runs" / "cfg_tiny" / "version_0" / "checkpoints" / "last.ckpt"
    monkeypatch.chdir(second)
    resumed = fit(config, Path("elsewhere"), "--ckpt_path", str(last), "--test_after_fit", "true")
    best = resumed.results["checkpoint"]
    assert os.path.isabs(best) and Path(best).parent == last.parent and Path(best).is_file()
    assert resumed.results_path == last.parent.parent / "results.json"
    assert 0.0 <= resumed.results["test_acc"] <= 1.0


def test_last_checkpoint_is_the_final_state_even_between_validations(setup, caplog):
    """Training ends at step 7, after the last validation (step 4): last.ckpt still holds step 7."""
    config, root = setup
    with caplog.at_level("INFO"):
        cli = fit(config, root / "final", "--trainer.max_steps", "7", "--last_checkpoint.every_n_train_steps", "0")
    # every save says what it writes: Lightning logged "`weights_only` was not set" per save otherwise
    assert not [r for r in caplog.records if "weights_only" in r.getMessage()]
    checkpoints = Path(cli.trainer.log_dir) / "checkpoints"
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 7
    best = [p.name for p in checkpoints.glob("best-*.ckpt")]
    assert best == ["best-epoch0-step4.ckpt"]


def test_checkpoints_carry_the_random_states(setup, uninterrupted):
    cli, _ = uninterrupted
    checkpoint = torch.load(Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    states = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("RNGStates"))
    assert set(states) == {"torch", "cuda", "numpy", "python"}
    assert states["torch"].dtype == torch.uint8 and len(states["python"][1]) == 625


def test_ckpt_path_last_without_a_run_names_what_it_looked_for(setup):
    config, root = setup
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume") as error:
        fit(config, root / "nothing", "--ckpt_path", "last")
    assert str(root / "nothing" / "cfg_tiny") + "/version_*/checkpoints/last.ckpt" in str(error.value)


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test"])
@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_a_damaged_checkpoint_is_reported_by_name(setup, uninterrupted, subcommand, damage, tmp_path):
    config, root = setup
    cli, _ = uninterrupted
    good = (Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt").read_bytes()
    bad = tmp_path / f"{damage}.ckpt"
    bad.write_bytes({"empty": b"", "truncated": good[: len(good) // 2], "garbage": b"\x80\x04not a pickle"}[damage])
    with pytest.raises(ValueError, match="--ckpt_path") as error:
        run([subcommand, "--config", str(config), "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(bad)])
    assert str(bad) in str(error.value)


def _allocate(parent: str, barrier, results) -> None:
    barrier.wait()
    results.put(allocate_version(Path(parent)))


def test_runs_started_together_get_their_own_folders(tmp_path):
    (tmp_path / "name" / "version_0").mkdir(parents=True)
    n = 6
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(n), context.Queue()
    processes = [context.Process(target=_allocate, args=(str(tmp_path / "name"), barrier, results)) for _ in range(n)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(60)
    assert sorted(results.get(timeout=5) for _ in range(n)) == list(range(1, n + 1))


def test_two_fits_started_at_the_same_moment_both_keep_their_results(setup, uninterrupted, tmp_path):
    config, root = setup  # `uninterrupted` has generated the data, so the two runs race for the run folder only
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    command = [sys.executable, "-m", "ssmzoo.cli", "fit", "--config", str(config), "--trainer.default_root_dir",
               str(tmp_path / "runs"), "--trainer.max_steps", "4", "--test_after_fit", "true"]
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0].decode() for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    folders = sorted((tmp_path / "runs" / "cfg_tiny").iterdir())
    assert [f.name for f in folders] == ["version_0", "version_1"]
    for folder in folders:
        results = json.loads((folder / "results.json").read_text())
        assert results["run_dir"] == str(folder) and Path(results["checkpoint"]).parent == folder / "checkpoints"


def test_run_dir_of_a_checkpoint():
    assert run_dir_of(Path("/r/name/version_3/checkpoints/last.ckpt")) == Path("/r/name/version_3")
    assert run_dir_of(Path("/somewhere/else.ckpt")) is None
