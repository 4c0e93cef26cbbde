"""The ``ssmzoo`` command: a LightningCLI over any LightningModule and LightningDataModule.

    ssmzoo fit --config configs/lra/listops/s4d_small.yaml     # train, then test the best checkpoint
    ssmzoo validate|test --config X.yaml --ckpt_path C.ckpt
    ssmzoo data listops --out DIR ...                           # write a generated data set to files

A config's keys are the constructors' arguments (``model: {class_path, init_args}``, ``data: ...``,
``trainer: ...``), so a bad key or a wrong type fails with jsonargparse's message. Defaults added
here: a ``checkpoint`` section (ModelCheckpoint, best ``val/acc``), CSV (and TensorBoard when
installed) logs under ``trainer.default_root_dir`` (``runs/``) named after the config file, and
``test_after_fit: true``: ``fit`` ends by testing the best checkpoint, printing the test accuracy
beside the majority-class baseline, and writing ``results.json`` into the run's log directory.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.utilities.model_helpers import is_overridden

RESULTS_FILE = "results.json"


def _tensorboard_installed() -> bool:
    return (
        importlib.util.find_spec("tensorboard") is not None
        or importlib.util.find_spec("tensorboardX") is not None
    )


class SsmzooCLI(LightningCLI):
    """LightningCLI with ssmzoo's defaults (see the module docstring)."""

    results: dict[str, Any] | None = None
    results_path: Path | None = None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After fit: test the best checkpoint, print test accuracy beside the majority-class "
            "baseline and write results.json into the run's log directory.",
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best-epoch{epoch}-step{step}",
                "checkpoint.auto_insert_metric_name": False,
                "checkpoint.save_last": True,
                "trainer.default_root_dir": "runs",
            }
        )

    # -- run name and loggers ---------------------------------------------------------------------
    def _config_paths(self) -> list[str]:
        section = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        paths = section.get("config") or []
        return [str(p.relative if hasattr(p, "relative") else p) for p in paths]

    def _run_name(self) -> str:
        paths = self._config_paths()
        if not paths:
            return "default"
        path = Path(paths[-1])
        return f"{path.parent.name}_{path.stem}" if path.parent.name else path.stem

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        trainer_config = self._get(self.config_init, "trainer", default={})
        if "logger" not in kwargs and trainer_config.get("logger") in (None, True):
            root = trainer_config.get("default_root_dir") or "runs"
            loggers: list[Logger] = [CSVLogger(save_dir=root, name=self._run_name())]
            if _tensorboard_installed():
                # Same directory as the CSV logs: one version folder per run holds both.
                loggers.append(
                    TensorBoardLogger(save_dir=root, name=self._run_name(), version=loggers[0].version)
                )
            kwargs["logger"] = loggers
        return super().instantiate_trainer(**kwargs)

    # -- fit, then test the best checkpoint -------------------------------------------------------
    def before_fit(self) -> None:
        self._fit_started = time.perf_counter()

    def after_fit(self) -> None:
        if not self.config[self.subcommand].get("test_after_fit", True):
            return
        trainer = self.trainer
        if self.datamodule is None or not is_overridden(
            "test_dataloader", self.datamodule, LightningDataModule
        ):
            print("ssmzoo: no test split in the datamodule; skipping the test after fit")
            return
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback is not None else ""
        ckpt_path = best if best else None
        metrics = trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path, verbose=False)
        metrics = {k: float(v) for k, v in (metrics[0] if metrics else {}).items()}
        test_acc, baseline = metrics.get("test/acc"), metrics.get("test/majority_baseline")
        self.results = {
            "config": self._config_paths(),
            "model": type(getattr(self.model, "model", self.model)).__name__,
            "task": type(self.model).__name__,
            "data": type(self.datamodule).__name__,
            "test_acc": test_acc,
            "majority_baseline": baseline,
            "test_metrics": metrics,
            "wall_time_s": round(time.perf_counter() - self._fit_started, 1),
            "epochs": trainer.current_epoch,
            "steps": trainer.global_step,
            "checkpoint": ckpt_path,
        }
        if not trainer.is_global_zero:
            return
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.results_path = log_dir / RESULTS_FILE
        self.results_path.write_text(json.dumps(self.results, indent=2) + "\n")
        if test_acc is not None:
            line = f"test accuracy {test_acc:.4f}"
            if baseline is not None:
                line += f"   majority-class baseline {baseline:.4f}"
        else:
            line = "test metrics " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        print(f"ssmzoo: {line}   ({self.results['wall_time_s']:.0f} s; results in {self.results_path})")


# `ssmzoo data NAME ...` runs that data set's generator command line (its module's ``main``).
DATA_COMMANDS = {"listops": "ssmzoo.data.lra.listops"}


def data_main(argv: list[str]) -> None:
    """``ssmzoo data NAME [--help] ...``: write a generated data set to files."""
    if not argv or argv[0] not in DATA_COMMANDS:
        names = ", ".join(DATA_COMMANDS)
        got = f" (got {argv[0]!r})" if argv else ""
        sys.stderr.write(f"usage: ssmzoo data {{{names}}} [--help] ...: name a data set{got}\n")
        raise SystemExit(2)
    importlib.import_module(DATA_COMMANDS[argv[0]]).main(argv[1:])


def run(args: list[str] | None = None) -> SsmzooCLI:
    """Run the LightningCLI on ``args`` (default: the command line) and return it."""
    return SsmzooCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``ssmzoo`` console script."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] == "data":
        data_main(argv[1:])
        return
    run(args)


if __name__ == "__main__":
    main()
