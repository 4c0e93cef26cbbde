"""Shared by ar.py and ett.py: build a forecaster by name, train it with Lightning, test it."""

from __future__ import annotations

import tempfile
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from ssmzoo.models import LinearForecaster, SpaceTime, SSMForecaster
from ssmzoo.tasks import ForecastingTask


def build_model(name: str, n_inputs: int, n_outputs: int, lookback: int, horizon: int, d_model: int, d_state: int):
    if name == "spacetime":
        return SpaceTime(n_inputs, n_outputs, lookback, horizon, d_model=d_model, d_state=d_state, n_blocks=1)
    if name == "s4d":
        return SSMForecaster(n_inputs, n_outputs, lookback, horizon, layer="s4d",
                             layer_args={"d_state": d_state}, d_model=d_model, n_layers=1)
    if name == "nlinear":
        return LinearForecaster(n_inputs, n_outputs, lookback, horizon)
    if name == "dlinear":
        return LinearForecaster(n_inputs, n_outputs, lookback, horizon, decomposition=True)
    raise ValueError(f"unknown model {name!r}; choose spacetime, s4d, nlinear or dlinear")


def train_and_test(model, datamodule, max_epochs: int, lr: float, patience: int = 1,
                   plot_dir: str | None = None, seed: int = 0) -> dict:
    """Fit with early stopping on val/mse (best weights restored), test; returns metrics + seconds."""
    L.seed_everything(seed, verbose=False)
    task = ForecastingTask(model, lr=lr, plot_dir=plot_dir, n_plots=1 if plot_dir else 0)
    stop = EarlyStopping("val/mse", patience=patience, mode="min")
    best = ModelCheckpoint(dirpath=tempfile.mkdtemp(prefix="ssmzoo_ts_"), monitor="val/mse", mode="min")
    trainer = L.Trainer(max_epochs=max_epochs, callbacks=[stop, best], logger=False,
                        enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    start = time.perf_counter()
    trainer.fit(task, datamodule=datamodule)
    trainer.test(task, datamodule=datamodule, ckpt_path="best", verbose=False)
    return {**task.test_metrics, "epochs": trainer.current_epoch, "seconds": time.perf_counter() - start,
            "params": sum(p.numel() for p in model.parameters())}


def single_thread() -> None:
    # 2 shared cores: one intra-op thread avoids oversubscription (many-fold faster here)
    torch.set_num_threads(1)
