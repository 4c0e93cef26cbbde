"""Shared by ar.py and ett.py: forecasters by name, trained and tested through the `ssmzoo` command.

Each run is ``ssmzoo fit`` with the task, model and data given as command-line arguments: early stopping
on the task's monitored metric (val/mse), the best checkpoint tested at the end, its own run folder.
The model's channels, lookback and horizon come from the data (the CLI links them), so a model is named
by its architecture only.
"""

from __future__ import annotations

import json
import os

import torch

from ssmzoo.cli import run

TASK = "ssmzoo.tasks.ForecastingTask"


def model_spec(name: str, d_model: int, d_state: int) -> dict:
    """``{class_path, init_args}`` of the forecaster ``name`` (spacetime, s4d, nlinear, dlinear)."""
    specs = {
        "spacetime": ("ssmzoo.models.SpaceTime", {"d_model": d_model, "d_state": d_state, "n_blocks": 1}),
        "s4d": ("ssmzoo.models.SSMForecaster",
                {"layer": "s4d", "layer_args": {"d_state": d_state}, "d_model": d_model, "n_layers": 1}),
        "nlinear": ("ssmzoo.models.LinearForecaster", {}),
        "dlinear": ("ssmzoo.models.LinearForecaster", {"decomposition": True}),
    }
    if name not in specs:
        raise ValueError(f"unknown model {name!r}; choose {', '.join(specs)}")
    class_path, init_args = specs[name]
    return {"class_path": class_path, "init_args": init_args}


def train_and_test(model: dict, data: dict, max_epochs: int, lr: float, run_name: str, root: str,
                   patience: int = 1, plot_dir: str | None = None, seed: int = 0) -> dict:
    """``ssmzoo fit`` of ``model`` on ``data`` (both ``{class_path, init_args}``): early stopping with
    ``patience``, then the best checkpoint's test metrics, the epochs run, wall seconds and parameter count."""
    args = [
        "fit",
        f"--seed_everything={seed}",
        f"--model={TASK}",
        f"--model.init_args.model={json.dumps(model)}",
        f"--model.init_args.lr={lr}",
        f"--model.init_args.n_plots={1 if plot_dir else 0}",
        f"--data={json.dumps(data)}",
        f"--early_stopping_patience={patience}",
        f"--trainer.max_epochs={max_epochs}",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={root}",
        f"--run_name={run_name}",
    ]
    if plot_dir:
        args.append(f"--model.init_args.plot_dir={os.path.abspath(plot_dir)}")
    cli = run(args)
    results = cli.results
    assert results is not None, "ssmzoo fit wrote no results (is test_after_fit off?)"
    return {"mse": results["test_mse"], "mae": results["test_mae"], "epochs": results["epochs"],
            "seconds": results["wall_time_s"], "params": sum(p.numel() for p in cli.model.model.parameters()),
            "run_dir": results["run_dir"]}


def single_thread() -> None:
    # 2 shared cores: one intra-op thread avoids oversubscription (many-fold faster here)
    torch.set_num_threads(1)
