"""Slow: the generated LRA data is learnable end to end. ``ssmzoo data pathfinder`` writes images, the Pathfinder
datamodule that reads the LRA release reads them, and a small S4D trained by ``ssmzoo fit`` beats chance on the
held-out test images by more than sampling noise could explain."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ssmzoo.cli import main as ssmzoo_main
from ssmzoo.cli import run

# Pathfinder-32 at the easy level (contour length 6): 2,000 images, split 1,600 / 200 / 200 by the datamodule.
CONFIG = """
seed_everything: 1
trainer:
  max_steps: 300
  max_epochs: -1
  val_check_interval: 100
  check_val_every_n_epoch: null
  accelerator: cpu
  devices: 1
  log_every_n_steps: 10
  enable_progress_bar: false
  enable_model_summary: false
model:
  class_path: ssmzoo.tasks.ClassificationTask
  init_args:
    model:
      class_path: ssmzoo.models.SequenceModel
      init_args:
        d_model: 32
        n_layers: 2
        layer: s4d
        layer_args: {d_state: 16, bidirectional: true, lr: 0.001}
        norm: batch
        prenorm: true
        pooling: mean
    lr: 0.01
    weight_decay: 0.05
    warmup: 0.1
data:
  class_path: ssmzoo.data.lra.PathfinderDataModule
  init_args: {resolution: 32, batch_size: 16, val_fraction: 0.1, test_fraction: 0.1}
"""


@pytest.mark.slow
def test_s4d_learns_generated_pathfinder_above_chance(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMZOO_DATA", str(tmp_path / "cache"))
    torch.set_num_threads(1)  # two threads on a shared 2-core machine wait for each other
    ssmzoo_main(["data", "pathfinder", "--out", str(tmp_path / "data"), "--size", "32", "--n", "2000", "--seed", "0",
                 "--contour-length", "6", "--workers", "2"])
    (tmp_path / "cfg").mkdir()
    config = tmp_path / "cfg" / "pathfinder.yaml"
    config.write_text(CONFIG)
    cli = run(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "runs"),
               "--data.init_args.data_dir", str(tmp_path / "data" / "curv_baseline")])

    results = cli.results
    n_test = len(cli.datamodule.load_split("test")[1])
    assert n_test == 200 and results["steps"] == 300
    # chance is the better of the majority label and a coin; 3 standard deviations of a coin's accuracy on
    # n_test images above it (a guesser passes with probability about 0.001)
    chance = max(results["majority_baseline"], 0.5)
    bound = chance + 3 * math.sqrt(0.25 / n_test)
    assert results["test_acc"] > bound, (results["test_acc"], bound, Path(results["run_dir"]))
