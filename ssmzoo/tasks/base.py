"""What every ssmzoo task declares for training runs: the metric its checkpoints and early stopping follow,
and the test metrics that headline its results."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from lightning.pytorch import LightningModule


class Task(LightningModule):
    """A LightningModule that says how its runs are judged.

    Class attributes (read by the ``ssmzoo`` command before anything is built):
        monitor: the validation metric the best checkpoint and early stopping follow (e.g. ``"val/acc"``).
        monitor_mode: ``"max"`` when higher is better, ``"min"`` when lower is.
        headline: results key -> logged test metric, the numbers ``results.json`` leads with.

    A task takes its network as the constructor argument ``model``: the ``ssmzoo`` command links the values
    the data decides (classes, vocabulary, channels, lookback, horizon) into that network's arguments
    (``ssmzoo.cli.app.DATA_LINKS``).
    """

    monitor: ClassVar[str]
    monitor_mode: ClassVar[Literal["min", "max"]]
    headline: ClassVar[dict[str, str]]

    @classmethod
    def summary(cls, results: dict[str, float | None]) -> str:
        """One line naming the headline results (``results`` holds the ``headline`` keys)."""
        return "   ".join(f"{key} {value:.4g}" for key, value in results.items() if value is not None)


def run_folder(trainer: Any) -> str | None:
    """The run's folder on the global-zero process (None on the others), as ``trainer.log_dir`` names it but
    without its broadcast: that is a collective under DDP, so asking it on rank 0 alone (as code that writes a
    file does) hangs or kills the run."""
    if trainer is None or not trainer.is_global_zero:
        return None
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers = trainer.loggers
    if not loggers:
        return trainer.default_root_dir
    first = loggers[0]
    return first.log_dir if isinstance(first, (TensorBoardLogger, CSVLogger)) else first.save_dir
