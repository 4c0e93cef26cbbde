"""Slow: generated LRA data is learnable end to end. ``ssmzoo data pathfinder`` writes 20,000 Pathfinder-32 images
at Pathfinder's easiest level (contour length 6: the mini-LRA's tiny-size check; on LRA's hard level, 14, this
model stays at chance in this budget), the datamodule that reads the LRA release reads them, and the mini-LRA S4D
(``configs/lra/mini/pathfinder_s4d.yaml``: d_model 64, 4 layers, 1,000 steps of 16), trained by ``ssmzoo fit``,
beats chance on the 2,000 held-out test images by more than sampling noise could explain.

The images, the split and the run are those of ``python benchmarks/lra/run.py --mini --task pathfinder --model s4d
--threads 1`` (the command writes the same images as the config's GeneratedPathfinderDataModule, and a CPU run with
one thread is deterministic), so this reproduces that mini-LRA row. About 20 minutes on an idle core."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ssmzoo.cli import main as ssmzoo_main
from ssmzoo.cli import run

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_s4d_learns_generated_pathfinder_above_chance(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMZOO_DATA", str(tmp_path / "cache"))
    torch.set_num_threads(1)  # as the mini-LRA row; two threads on a shared 2-core machine wait for each other
    ssmzoo_main(["data", "pathfinder", "--out", str(tmp_path / "data"), "--size", "32", "--n", "20000", "--seed", "0",
                 "--contour-length", "6", "--workers", "2"])
    cli = run(["fit", "--config", str(ROOT / "configs" / "lra" / "mini" / "pathfinder_s4d.yaml"),
               "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false",
               "--data", "ssmzoo.data.lra.PathfinderDataModule",
               "--data.init_args.data_dir", str(tmp_path / "data" / "curv_baseline"),
               "--data.init_args.resolution", "32", "--data.init_args.batch_size", "16"])

    results = cli.results
    n_test = len(cli.datamodule.load_split("test")[1])
    assert n_test == 2000 and results["steps"] == 1000
    # chance is the better of the majority label and a coin; 3 standard deviations of a coin's accuracy on
    # n_test images above it (a guesser passes with probability about 0.001)
    chance = max(results["majority_baseline"], 0.5)
    bound = chance + 3 * math.sqrt(0.25 / n_test)
    assert results["test_acc"] > bound, (results["test_acc"], bound, results["run_dir"])
