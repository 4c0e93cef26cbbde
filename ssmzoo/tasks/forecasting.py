"""Forecasting as a LightningModule: any Forecaster, MSE and MAE on the scaled values, and at the
end of a test run PNG plots of forecasts against the truth (matplotlib, a dependency, imported only then)."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..models.forecaster import Forecaster
from ..optim import param_groups
from .base import Task, run_folder
from .predict import PredictOptions, split_loader, write_csv


class ForecastingTask(Task):
    """Args:
        model: a Forecaster (x (batch, lookback, n_inputs) -> (batch, horizon, n_outputs)) whose
            ``loss(x, y)`` is the training objective.
        lr, weight_decay: AdamW settings (SSM parameters keep their tagged settings).
        plot_dir: where test plots and test metrics (JSON) go; None: the trainer's log_dir, if any.
        n_plots: how many test windows to plot (spread over the test split).
        lr_schedule: per epoch (0-based): "constant"; "halve" (lr · 0.5^max(0, epoch − 1): LTSF-Linear's
            ``type1``, which halves after every epoch from the second on); "cosine"
            (linear warmup over ``warmup_epochs`` from lr/1000, then cosine to ``min_lr`` at
            ``cosine_epochs``, constant after; the shape of SpaceTime's timm schedule).
        warmup_epochs, cosine_epochs, min_lr: the "cosine" schedule's settings.

    Logs ``train/loss``, ``val/mse``, ``val/mae``, ``test/mse``, ``test/mae``; checkpoints keep the best
    (lowest) ``val/mse``. The test also logs ``test/mse_drop_last`` and ``test/mae_drop_last``: the same
    without the last test batch when it is smaller than the first (what codes that test with
    ``drop_last=True`` report; equal to the full metrics when every batch is full).
    """

    monitor = "val/mse"
    monitor_mode = "min"
    headline = {"test_mse": "test/mse", "test_mae": "test/mae"}

    def __init__(self, model: Forecaster, lr: float = 1e-3, weight_decay: float = 0.0,
                 plot_dir: str | None = None, n_plots: int = 2,
                 lr_schedule: Literal["constant", "halve", "cosine"] = "constant", warmup_epochs: int = 0,
                 cosine_epochs: int = 100, min_lr: float = 0.0) -> None:
        super().__init__()
        if not isinstance(model, Forecaster):
            raise ValueError(f"ForecastingTask: model must be a ssmzoo Forecaster, got {type(model).__name__}")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"ForecastingTask: lr must be a number > 0, got {lr!r}")
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not weight_decay >= 0:
            raise ValueError(f"ForecastingTask: weight_decay must be a number >= 0, got {weight_decay!r}")
        if not isinstance(n_plots, int) or isinstance(n_plots, bool) or n_plots < 0:
            raise ValueError(f"ForecastingTask: n_plots must be an int >= 0, got {n_plots!r}")
        if lr_schedule not in ("constant", "halve", "cosine"):
            raise ValueError(f"ForecastingTask: lr_schedule must be 'constant', 'halve' or 'cosine', got {lr_schedule!r}")
        for arg, v, least in (("warmup_epochs", warmup_epochs, 0), ("cosine_epochs", cosine_epochs, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < least:
                raise ValueError(f"ForecastingTask: {arg} must be an int >= {least}, got {v!r}")
        if isinstance(min_lr, bool) or not isinstance(min_lr, (int, float)) or not 0 <= min_lr <= lr:
            raise ValueError(f"ForecastingTask: min_lr must be a number in [0, lr], got {min_lr!r}")
        # As in ClassificationTask: under the CLI the hparams are the config, which load_from_checkpoint needs;
        # built in Python, the model's weights are in the state dict, so the module is dropped from the hparams.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`.*")
            self.save_hyperparameters()
        if isinstance(self.hparams.get("model"), nn.Module):
            del self.hparams["model"]
        self.model, self.lr, self.weight_decay = model, lr, weight_decay
        self.plot_dir, self.n_plots = plot_dir, n_plots
        self.lr_schedule, self.warmup_epochs, self.cosine_epochs, self.min_lr = lr_schedule, warmup_epochs, cosine_epochs, min_lr
        self._sums: dict[str, Tensor] = {}
        self._batches: dict[str, tuple[int, Tensor]] = {}  # split -> (first batch size, last batch's sums)
        self._plot_windows: list[tuple[Tensor, Tensor, Tensor]] = []
        self.test_metrics: dict[str, float] = {}

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def _check_batch(self, x: Tensor, y: Tensor) -> None:
        m = self.model
        if y.dim() != 3 or tuple(y.shape[1:]) != (m.horizon, m.n_outputs):
            raise ValueError(
                f"ForecastingTask: targets have shape {tuple(y.shape)}, the model forecasts "
                f"(batch, horizon={m.horizon}, n_outputs={m.n_outputs}); make the data module's "
                "horizon and feature mode match the model"
            )

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        self._check_batch(x, y)
        loss = self.model.loss(x, y)
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss

    # MSE/MAE are averaged over every forecast value of the split, as in Informer's evaluation.
    def _accumulate(self, split: str, x: Tensor, y: Tensor) -> Tensor:
        self._check_batch(x, y)
        pred = self(x)
        err = pred - y
        batch = torch.stack([err.pow(2).sum(), err.abs().sum(), torch.tensor(float(err.numel()))]).double().cpu()
        self._sums[split] = self._sums.get(split, torch.zeros(3, dtype=torch.float64)) + batch
        first = self._batches.get(split, (x.shape[0], None))[0]
        self._batches[split] = (first, batch if x.shape[0] < first else None)
        return pred

    def _finish(self, split: str) -> dict[str, float]:
        sums = self._sums.pop(split, None)
        if sums is None:
            return {}
        metrics = {"mse": float(sums[0] / sums[2]), "mae": float(sums[1] / sums[2])}
        _, short = self._batches.pop(split, (0, None))
        if split == "test":
            kept = sums - short if short is not None else sums
            metrics.update(mse_drop_last=float(kept[0] / kept[2]), mae_drop_last=float(kept[1] / kept[2]))
        for k, v in metrics.items():
            self.log(f"{split}/{k}", v, prog_bar=split == "val")
        return metrics

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._accumulate("val", *batch)

    def on_validation_epoch_end(self) -> None:
        self._finish("val")

    def on_test_epoch_start(self) -> None:
        self._plot_windows = []

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        pred = self._accumulate("test", x, y)
        if self.n_plots > 0:  # one candidate window per batch; the plotted ones are spread over them
            self._plot_windows.append((x[0].cpu(), y[0].cpu(), pred[0].detach().cpu()))

    def on_test_epoch_end(self) -> None:
        self.test_metrics = self._finish("test")
        # rank 0 writes (every rank asking trainer.log_dir here wrote the same files at once under DDP)
        out_dir = self.plot_dir if self.trainer is None or self.trainer.is_global_zero else None
        out_dir = out_dir or run_folder(self.trainer)
        if out_dir is None or not self._plot_windows:
            return
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "test_metrics.json"), "w") as f:
            json.dump(self.test_metrics, f, indent=2)
        picks = torch.linspace(0, len(self._plot_windows) - 1, min(self.n_plots, len(self._plot_windows)))
        for i, j in enumerate(picks.round().long().unique().tolist()):
            window = self._plot_windows[j]
            plot_forecast(*window, os.path.join(out_dir, f"forecast_{i}.png"), title=type(self.model).__name__)

    @classmethod
    def summary(cls, results: dict[str, float | None]) -> str:
        if results.get("test_mse") is None or results.get("test_mae") is None:
            return super().summary(results)
        return f"test MSE {results['test_mse']:.4f}   MAE {results['test_mae']:.4f} (scaled values)"

    def lr_factor(self, epoch: int) -> float:
        """The multiplier of every group's lr during ``epoch`` (0-based), from ``lr_schedule``."""
        if self.lr_schedule == "halve":
            return 0.5 ** max(0, epoch - 1)
        if self.lr_schedule == "cosine":
            if epoch < self.warmup_epochs:
                return 1e-3 + (1 - 1e-3) * epoch / self.warmup_epochs
            floor = self.min_lr / self.lr
            progress = min(1.0, (epoch - self.warmup_epochs) / max(1, self.cosine_epochs - self.warmup_epochs))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    def configure_optimizers(self) -> dict:
        groups = param_groups(self.model, self.lr, self.weight_decay)
        for g in groups:
            g.pop("names", None)
        optimizer = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # -- ssmzoo predict: forecasts with their timestamps -----------------------------------------
    def prediction_loader(self, datamodule: Any, options: PredictOptions) -> Any:
        return split_loader(datamodule, options.split, type(self).__name__)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        x, y = batch
        self._check_batch(x, y)
        return {"inputs": x.float().cpu(), "forecast": self(x).float().cpu(), "actual": y.float().cpu()}

    def write_predictions(self, outputs: list[dict[str, Tensor]], folder: Path, datamodule: Any,
                          options: PredictOptions) -> list[Path]:
        """``forecasts.csv``: one row per window, forecast step and output channel, with the time of the forecast
        row (the datamodule's ``row_times(split)`` where it has them: ETT's dates; else the row's position in
        the split), the forecast and the true value, in the data's own units when the datamodule says how it
        scaled them (``mean``, ``std``), else scaled; and ``forecast_<split>_{first,last}.png``."""
        inputs = torch.cat([o["inputs"] for o in outputs])
        forecast = torch.cat([o["forecast"] for o in outputs])
        actual = torch.cat([o["actual"] for o in outputs])
        windows, horizon, channels = forecast.shape
        dataset = getattr(datamodule, "datasets", {}).get(options.split) if datamodule is not None else None
        lookback = getattr(dataset, "lookback", inputs.shape[1])
        stride = getattr(dataset, "stride", 1)
        row_times = getattr(datamodule, "row_times", None)
        times = list(row_times(options.split)) if callable(row_times) else None
        names, mean, std = _output_scaling(datamodule, channels)
        units = "data" if mean is not None else "scaled"
        header = ["window", "step", "time", "channel", "forecast", "actual", "units"]

        def rows() -> Any:
            for i in range(windows):
                for h in range(horizon):
                    row = i * stride + lookback + h
                    when = times[row] if times is not None and row < len(times) else row
                    for c in range(channels):
                        f, a = float(forecast[i, h, c]), float(actual[i, h, c])
                        if mean is not None:
                            f, a = f * std[c] + mean[c], a * std[c] + mean[c]
                        yield [i, h + 1, when, names[c], f"{f:.6g}", f"{a:.6g}", units]

        paths = [write_csv(folder / "forecasts.csv", header, rows())]
        for name, i in (("first", 0), ("last", windows - 1)):
            path = folder / f"forecast_{options.split}_{name}.png"
            plot_forecast(inputs[i], actual[i], forecast[i], str(path),
                          title=f"{type(self.model).__name__}, {options.split} window {i}")
            paths.append(path)
        err = forecast - actual
        print(f"ssmzoo: {windows} {options.split} windows forecast, MSE {float(err.pow(2).mean()):.4f}   "
              f"MAE {float(err.abs().mean()):.4f} (scaled values)")
        return paths


def _output_scaling(datamodule: Any, channels: int) -> tuple[list[str], list[float] | None, list[float] | None]:
    """(names, mean, std) of the forecast channels, from the datamodule's ``columns``, ``output_columns``, ``mean``
    and ``std`` where it has them (mean and std None when it does not say how it scaled)."""
    import numpy as np

    columns = getattr(datamodule, "output_columns", None) or list(range(channels))
    names_all = getattr(datamodule, "columns", None)
    names = [str(names_all[c]) if names_all is not None and c < len(names_all) else str(c) for c in columns]
    mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
    if mean is None or std is None or len(columns) != channels:
        return names, None, None
    mean, std = np.broadcast_to(np.asarray(mean, dtype=float), (max(columns) + 1,)), np.broadcast_to(
        np.asarray(std, dtype=float), (max(columns) + 1,))
    return names, [float(mean[c]) for c in columns], [float(std[c]) for c in columns]


def plot_forecast(x: Tensor, y: Tensor, pred: Tensor, path: str, title: str = "") -> None:
    """One PNG: the last output channel's history, true future and forecast (scaled values)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lookback, horizon = x.shape[0], y.shape[0]
    fig, ax = plt.subplots(figsize=(7, 2.6), dpi=80)
    ax.plot(range(lookback), x[:, -1].numpy(), color="0.5", lw=1, label="history")
    future = range(lookback, lookback + horizon)
    ax.plot(future, y[:, -1].numpy(), color="k", lw=1, label="truth")
    ax.plot(future, pred[:, -1].numpy(), color="tab:red", lw=1.2, label="forecast")
    ax.set_xlabel("time step")
    ax.set_ylabel("scaled value")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
