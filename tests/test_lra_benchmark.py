"""benchmarks/lra/run.py at tiny size: one mini-LRA config trained through the CLI, its result JSON and the table
that labels its data (here the Fashion-MNIST stand-in, on IDX files written by the test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_fashion_mnist import write_fashion

ROOT = Path(__file__).resolve().parents[1]


def test_run_py_trains_a_mini_config_and_labels_the_stand_in(tmp_path):
    write_fashion(tmp_path / "fashion", n_train=24, n_test=8)
    tiny = ["--data.init_args.data_dir", str(tmp_path / "fashion"), "--data.init_args.val_size", "8",
            "--data.init_args.batch_size", "4", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
            "--trainer.val_check_interval", "2", "--model.init_args.model.init_args.d_model", "8",
            "--model.init_args.model.init_args.n_layers", "1", "--trainer.enable_model_summary", "false"]
    command = [sys.executable, str(ROOT / "benchmarks" / "lra" / "run.py"), "--mini", "--task", "fashion_mnist",
               "--model", "s4d", "--threads", "1", "--root", str(tmp_path / "runs"),
               "--results-dir", str(tmp_path / "out" / "results"), "--", *tiny]
    env = {**os.environ, "SSMZOO_DATA": str(tmp_path / "cache")}
    done = subprocess.run(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    assert done.returncode == 0, done.stdout.decode()[-4000:]

    result = json.loads((tmp_path / "out" / "results" / "mini_fashion_mnist_s4d.json").read_text())
    assert result["task"] == "image" and result["layer"] == "s4d" and result["steps"] == 2 and result["mini"]
    assert result["data"].startswith("STAND-IN: ") and "Fashion-MNIST" in result["stand_in"]
    assert result["config"] == "configs/lra/mini/fashion_mnist_s4d.yaml" and result["batch_size"] == 4
    assert 0 <= result["test_acc"] <= 1 and result["wall_time_s"] > 0 and result["cpu_time_s"] > 0
    assert result["load_1min"]["samples"] >= 2 and "1 threads" in result["machine"]
    # the recorded command reproduces the run where it was written: the results folder is part of it
    assert f"--results-dir {tmp_path / 'out' / 'results'}" in result["command"], result["command"]
    table = (tmp_path / "out" / "results.md").read_text()
    row = next(line for line in table.splitlines() if "fashion_mnist_s4d.yaml" in line)
    assert "STAND-IN" in row and "another data set" in row  # the published Image number is labelled as such
    assert "not run yet" in table  # the other mini cases


def test_each_results_folder_has_its_own_table(tmp_path):
    """Before, every results folder's table was <parent>/results.md, so a run into recipes/mamba_recipe rewrote the
    table of recipes/results without that folder's rows."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lra_run", ROOT / "benchmarks" / "lra" / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    assert run.table_path(tmp_path / "lra" / "results") == tmp_path / "lra" / "results.md"
    assert run.table_path(tmp_path / "recipes" / "mamba_recipe") == tmp_path / "recipes" / "mamba_recipe.md"


def test_overfit_reads_each_epochs_accuracy_mean_loss_and_the_steps_run(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("overfit", ROOT / "benchmarks" / "lra" / "overfit.py")
    overfit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(overfit)
    metrics = tmp_path / "metrics.csv"
    # the CSV logger's layout: step rows with the loss, an epoch-end row with the accuracy
    metrics.write_text("epoch,step,train/acc,train/loss\n0,0,,0.9\n0,1,,0.7\n0,1,0.5,\n1,2,,0.4\n1,3,,0.2\n1,3,0.75,\n")
    epochs, steps = overfit.epochs_of(metrics)
    assert steps == 4
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert [e["acc"] for e in epochs] == [0.5, 0.75]
    assert [round(e["loss"], 6) for e in epochs] == [0.8, 0.3]
