"""What a run prints while it trains: a progress bar on a terminal, lines in a log.

- :class:`RunProgressBar`: Lightning's Rich bar with two fixes. Its description read ``Epoch 0/-2`` for runs
  bounded by steps (``max_epochs`` -1), and its total was the steps left at the epoch's start, so a run resumed
  mid-epoch counted past it (``5/1``): here the epoch shows its bound only when there is one, and the total
  counts the batches the resumed epoch had already run.
- :class:`ProgressLines`: when the output is not a terminal (nohup, tee, SLURM), the bar writes nothing useful;
  this writes one line every ``every_seconds`` with the step, the loss, the rate and the time left, and one
  after each validation.
- :class:`RunSummary`: the model summary without Lightning's ``FLOPs`` column and ``Total FLOPs: 0`` line
  (it counts FLOPs only for a model with an ``example_input_array``, which ours do not have).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelSummary, ProgressBar, RichProgressBar
from lightning.pytorch.utilities.model_summary import get_human_readable_count
from lightning.pytorch.utilities.rank_zero import rank_zero_info


def train_total(trainer: Trainer) -> int | float:
    """Batches this epoch will run: the loader's, or fewer when ``max_steps`` ends the run inside it, counting
    the batches a resumed epoch ran before it was stopped."""
    total = trainer.num_training_batches
    if trainer.max_steps is not None and trainer.max_steps > 0:
        done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        left = (trainer.max_steps - trainer.global_step) * trainer.accumulate_grad_batches
        total = min(total, done + max(0, left))
    return total


def epoch_label(trainer: Trainer) -> str:
    """``Epoch e`` (0-based, as Lightning counts), with ``/last`` only when the run has a bound in epochs."""
    label = f"Epoch {trainer.current_epoch}"
    if trainer.max_epochs is not None and trainer.max_epochs > 0:
        label += f"/{trainer.max_epochs - 1}"
    return label


class RunProgressBar(RichProgressBar):
    """Lightning's Rich progress bar with a true description and total (see the module docstring)."""

    @property
    def total_train_batches(self) -> int | float:
        return train_total(self.trainer)

    def _get_train_description(self, current_epoch: int) -> str:
        description = epoch_label(self.trainer)
        if len(self.validation_description) > len(description):
            description = f"{description:{len(self.validation_description)}}"  # as Lightning pads it
        return description


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _number(value: Any) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{value:.4g}"


class ProgressLines(ProgressBar):
    """Plain progress lines for logs (see the module docstring).

    Args:
        every_seconds: at most one training line per this many seconds (0: every step); the first step and the
            last always get one.
    """

    def __init__(self, every_seconds: float = 30.0) -> None:
        super().__init__()
        if isinstance(every_seconds, bool) or not isinstance(every_seconds, (int, float)) or not every_seconds >= 0:
            raise ValueError(f"ProgressLines: every_seconds must be a number >= 0, got {every_seconds!r}")
        self.every_seconds = float(every_seconds)
        self._enabled = True
        self._started: float | None = None
        self._start_step = 0
        self._last_line = -math.inf
        self._total_steps: int | float = math.inf

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _write(self, trainer: Trainer, line: str) -> None:
        if self._enabled and trainer.is_global_zero:
            print(f"ssmzoo: {line}", file=sys.stdout, flush=True)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._started, self._start_step = time.perf_counter(), trainer.global_step
        self._last_line = -math.inf
        try:
            total = trainer.estimated_stepping_batches
        except Exception:  # an iterable loader of unknown length: no total, no ETA
            total = math.inf
        self._total_steps = total if total and total > 0 else math.inf
        bound = f" of {int(self._total_steps):,}" if math.isfinite(self._total_steps) else ""
        self._write(trainer, f"training from step {trainer.global_step:,}{bound}; a line every "
                             f"{self.every_seconds:g} s (--progress_interval)")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.perf_counter()
        step = trainer.global_step
        last = math.isfinite(self._total_steps) and step >= self._total_steps
        if not (now - self._last_line >= self.every_seconds or step == self._start_step + 1 or last):
            return
        self._last_line = now
        elapsed = now - (self._started or now)
        done = step - self._start_step
        rate = elapsed / done if done else math.nan
        left = (self._total_steps - step) * rate if math.isfinite(self._total_steps) and done else math.nan
        metrics = self.get_metrics(trainer, pl_module)
        loss = next((metrics[k] for k in ("train/loss", "train_loss", "loss") if k in metrics), None)
        total = f"/{int(self._total_steps):,}" if math.isfinite(self._total_steps) else ""
        parts = [f"step {step:,}{total}", epoch_label(trainer).lower()]
        if loss is not None:
            parts.append(f"loss {_number(loss)}")
        parts.append(f"{rate:.3g} s/step" if math.isfinite(rate) else "s/step ?")
        parts.append(f"elapsed {_duration(elapsed)}")
        if math.isfinite(left):
            parts.append(f"ETA {_duration(left)}")
        self._write(trainer, "   ".join(parts))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        values = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val")}
        if values:
            shown = "   ".join(f"{k} {_number(v)}" for k, v in sorted(values.items()))
            self._write(trainer, f"validation at step {trainer.global_step:,}: {shown}")

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, "testing")

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, "predicting")


class RunSummary(ModelSummary):
    """The model summary in plain text, without the FLOPs Lightning cannot count for our models."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        columns = [(name, values) for name, values in summary_data if name != "FLOPs" or total_flops]
        if not columns:
            return
        rows = len(columns[0][1])
        header = [name.strip() for name, _ in columns]  # the first column is Lightning's row index, named " "
        table = [header] + [[values[i] for _, values in columns] for i in range(rows)]
        widths = [max(len(row[j]) for row in table) for j in range(len(header))]
        lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
        lines.insert(1, "-" * len(lines[0]))
        frozen = total_parameters - trainable_parameters
        lines.append(f"{get_human_readable_count(trainable_parameters)} trainable parameters"
                     + (f", {get_human_readable_count(frozen)} frozen" if frozen else "")
                     + f", {model_size:.3f} MB" + (f", {get_human_readable_count(total_flops)} FLOPs" if total_flops else ""))
        rank_zero_info("\n".join(lines))
