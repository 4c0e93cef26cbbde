"""The ``ssmzoo`` command: a LightningCLI over ssmzoo's tasks and datamodules (and any other).

    ssmzoo fit --config configs/lra/listops/s4d_small.yaml     # train, then test the best checkpoint
    ssmzoo fit --config configs/lra/listops/s4d_small.yaml --ckpt_path last   # resume that config's newest run
    ssmzoo validate|test --config X.yaml --ckpt_path C.ckpt
    ssmzoo data listops --out DIR ...                           # write a generated data set to files

A config's keys are the constructors' arguments (``model: {class_path, init_args}``, ``data: ...``,
``trainer: ...``), so a bad key or a wrong type fails with jsonargparse's message. On top of Lightning's:

- **The task decides what is monitored.** ``checkpoint`` (a ModelCheckpoint) keeps the best checkpoint by
  the task's ``monitor``/``monitor_mode`` (``val/acc`` max for classification, ``val/mse`` min for
  forecasting; :class:`ssmzoo.tasks.Task`); ``--early_stopping_patience N`` stops on the same metric.
- **The data decides its shapes.** Number of classes, vocabulary, input channels, lookback and horizon are
  taken from the datamodule (``DATA_LINKS``), so configs do not repeat them.
- **Runs never lose work.** Each run gets its own folder ``<default_root_dir>/<config folder>_<config
  name>/version_<n>`` (taken atomically; ``default_root_dir`` made absolute), ``last.ckpt`` is rewritten
  every ``--last_checkpoint.every_n_train_steps`` steps, after every validation and at the end, checkpoints
  carry the random states and the data order's position, and ``--ckpt_path last`` resumes the newest run of
  the config in its own folder, ending with the weights an uninterrupted run would have.
- **fit ends with a test** of the best checkpoint (``--test_after_fit``), a line with the task's headline
  metrics and ``results.json`` in the run folder (``test`` writes one too).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_only

# Imported so that `--model.help ClassificationTask`, `--data ListOpsDataModule` and the help's lists of
# known subclasses know ssmzoo's tasks and datamodules by their short names.
import ssmzoo.data  # noqa: F401
import ssmzoo.tasks  # noqa: F401

from ..allocator import keep_freed_memory_from_env
from ..data.commands import build_parser as build_data_parser
from ..data.commands import main as data_main
from .callbacks import LastCheckpoint, LoaderPosition, RNGStates
from .checkpoint_io import with_atomic_checkpoint_io
from .runs import RunCSVLogger, allocate_version, check_checkpoint, find_last_checkpoint, run_dir_of, run_name

RESULTS_FILE = "results.json"
MODEL_ARGS = "model.init_args.model.init_args"


def _zero_is_none(value: int) -> int | None:
    """Datamodules say 0 for "no vocabulary" / "no real-valued channels"; models take None."""
    return value or None


# Values the data decides, linked from the instantiated datamodule into the task's model: (datamodule
# attribute, model constructor argument, conversion). A link applies when the datamodule has the attribute
# and the chosen model class takes the argument, so one table serves classification (d_output, vocab_size,
# d_input), forecasting (n_inputs, n_outputs, lookback, horizon) and language modelling (vocab_size).
#
# Why links into the *nested* model work, and keep checkpoints loadable: jsonargparse applies an
# "instantiate" link to ``model.init_args.model.init_args.X`` while it builds the task, before the task's
# constructor runs, so the value is in the config the task receives. LightningCLI saves exactly that config
# as the task's hyperparameters, so ``ClassificationTask.load_from_checkpoint(path)`` rebuilds the same
# model without the datamodule, and ``ssmzoo test --config C --ckpt_path X`` applies the same links again.
DATA_LINKS: tuple[tuple[str, str, Any], ...] = (
    ("num_classes", "d_output", None),
    ("vocab_size", "vocab_size", _zero_is_none),
    ("d_input", "d_input", _zero_is_none),
    ("n_inputs", "n_inputs", None),
    ("n_outputs", "n_outputs", None),
    ("lookback", "lookback", None),
    ("horizon", "horizon", None),
)


def _task_class(model: Namespace | None) -> type | None:
    class_path = getattr(model, "class_path", None) if model is not None else None
    if not class_path:
        return None
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name, None)


def task_monitor(model: Namespace) -> str | None:
    """The task class's ``monitor`` (None for a LightningModule that declares none: keep the latest)."""
    return getattr(_task_class(model), "monitor", None)


def task_monitor_mode(model: Namespace) -> str:
    return getattr(_task_class(model), "monitor_mode", "min")


class SsmzooCLI(LightningCLI):
    """LightningCLI with ssmzoo's run handling (see the module docstring)."""

    results: dict[str, Any] | None = None
    results_path: Path | None = None
    run_dir: Path | None = None

    # -- arguments ---------------------------------------------------------------------------------
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After fit: test the best checkpoint, print the task's headline metrics and write "
            "results.json into the run folder.",
        )
        parser.add_argument(
            "--run_name",
            type=Optional[str],
            default=None,
            help="Name of the runs' folder under trainer.default_root_dir; default <config folder>_<config "
            "name>. --ckpt_path last resumes the newest run under this name.",
        )
        parser.add_argument(
            "--early_stopping_patience",
            type=Optional[int],
            default=None,
            help="Stop after this many validations without improvement of the task's monitored metric "
            "(null: never stop early).",
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.filename": "best-epoch{epoch}-step{step}",
                "checkpoint.auto_insert_metric_name": False,
                "checkpoint.save_last": False,  # last.ckpt is LastCheckpoint's
                "trainer.default_root_dir": "runs",
            }
        )
        # The best checkpoint follows the metric the task declares; a task class without one keeps the latest.
        parser.link_arguments("model", "checkpoint.monitor", compute_fn=task_monitor, apply_on="parse")
        parser.link_arguments("model", "checkpoint.mode", compute_fn=task_monitor_mode, apply_on="parse")
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        for attribute, argument, compute in DATA_LINKS:
            parser.link_arguments(
                f"data.{attribute}", f"{MODEL_ARGS}.{argument}", compute_fn=compute, apply_on="instantiate"
            )

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        super()._add_subcommands(parser, **kwargs)
        # `ssmzoo data ...` is dispatched by main() before this parser runs; registered here so that
        # `ssmzoo --help` lists it beside fit/validate/test/predict.
        data = build_data_parser()
        subcommands = parser._subcommands_action
        if subcommands is not None:
            subcommands.add_subcommand("data", ArgumentParser(description=data.description), help=data.description)

    # -- before anything is built --------------------------------------------------------------------
    def _section(self) -> Namespace:
        """The parsed config of the subcommand (``self.subcommand`` is set only after the checkpoint is read)."""
        subcommand = self.config.get("subcommand")
        return self.config[subcommand] if subcommand else self.config

    def _config_paths(self) -> list[str]:
        paths = self._section().get("config") or []
        return [str(p.relative if hasattr(p, "relative") else p) for p in paths]

    def _parse_ckpt_path(self) -> None:
        """Resolve ``--ckpt_path last`` and check the checkpoint before LightningCLI reads its hyperparameters
        (which it does here, with a bare ``torch.load``), so a bad file is reported by name."""
        cfg = self._section()
        root = Path(cfg.trainer.default_root_dir or "runs").expanduser().resolve()
        cfg.trainer.default_root_dir = str(root)  # so every checkpoint path, the best one too, is absolute
        self.run_name = cfg.get("run_name") or run_name(self._config_paths())
        self.resumed_from: Path | None = None
        ckpt_path = cfg.get("ckpt_path")
        if ckpt_path is not None and ckpt_path not in ("best", "hpc") and not str(ckpt_path).startswith("registry"):
            path = find_last_checkpoint(root, self.run_name) if ckpt_path == "last" else Path(ckpt_path).expanduser().resolve()
            check_checkpoint(path)
            cfg.ckpt_path = str(path)
            self.resumed_from = path
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        cfg = self._section()
        if self.resumed_from is None:  # with a checkpoint, LightningCLI has put its model arguments in the config
            for _, argument, _ in DATA_LINKS:
                value = cfg.get(f"{MODEL_ARGS}.{argument}")
                if value is not None:
                    raise ValueError(
                        f"{MODEL_ARGS}.{argument}={value!r} is set in the config, but ssmzoo takes {argument} "
                        "from the datamodule; remove it from the config and the command line"
                    )
        patience = cfg.get("early_stopping_patience")
        if patience is not None:
            if patience < 1:
                raise ValueError(f"--early_stopping_patience must be an int >= 1 or null, got {patience!r}")
            if task_monitor(cfg.get("model")) is None:
                raise ValueError(
                    f"--early_stopping_patience: the model class {cfg.model.class_path} declares no monitored "
                    "metric (class attributes `monitor` and `monitor_mode`, see ssmzoo.tasks.Task)"
                )
        # A resumed fit continues in the run folder its checkpoint came from.
        self.run_dir = run_dir_of(self.resumed_from) if self.subcommand == "fit" and self.resumed_from else None

    # -- the trainer -----------------------------------------------------------------------------------
    def _loggers(self, root: Path) -> list[Logger]:
        if self.run_dir is not None:
            save_dir, name, version = self.run_dir.parent.parent, self.run_dir.parent.name, int(self.run_dir.name[8:])
        else:
            save_dir, name = root, self.run_name
            # rank 0 takes the folder; other ranks write no logs and get their paths from rank 0
            version = allocate_version(root / name) if rank_zero_only.rank == 0 else None
        return [
            RunCSVLogger(save_dir=save_dir, name=name, version=version),
            TensorBoardLogger(save_dir=save_dir, name=name, version=version, default_hp_metric=False),
        ]

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        if trainer_config.get("logger") in (None, True):
            trainer_config["logger"] = self._loggers(Path(trainer_config["default_root_dir"]))
        # checkpoints written atomically in their own folder, read with weights_only=True (checkpoint_io.py)
        trainer_config["plugins"] = with_atomic_checkpoint_io(trainer_config.get("plugins"))
        callbacks = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        callbacks += [RNGStates(), LoaderPosition()]
        patience = self._section().get("early_stopping_patience")
        if patience is not None:
            callbacks.append(EarlyStopping(monitor=self.model.monitor, mode=self.model.monitor_mode, patience=patience))
        return self._instantiate_trainer(trainer_config, callbacks)

    # -- fit, then test the best checkpoint -------------------------------------------------------------
    def before_fit(self) -> None:
        self._started = time.perf_counter()
        if self.resumed_from is not None:
            print(f"ssmzoo: resuming from {self.resumed_from} in {self.trainer.log_dir}")

    def before_test(self) -> None:
        self._started = time.perf_counter()

    def after_fit(self) -> None:
        if not self._section().get("test_after_fit", True) or self.trainer.state.status == TrainerStatus.INTERRUPTED:
            return
        if self.datamodule is None or not is_overridden("test_dataloader", self.datamodule, LightningDataModule):
            print("ssmzoo: no test split in the datamodule; skipping the test after fit")
            return
        callback = self.trainer.checkpoint_callback
        best = callback.best_model_path if isinstance(callback, ModelCheckpoint) else ""
        best = best if best and os.path.isfile(best) else None
        metrics = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best, verbose=False)
        self._finish(metrics, checkpoint=best)

    def after_test(self) -> None:
        self._finish(self.trainer.callback_metrics, checkpoint=self._section().get("ckpt_path"))

    def _finish(self, metrics: Any, checkpoint: str | None) -> None:
        trainer = self.trainer
        if isinstance(metrics, list):
            metrics = metrics[0] if metrics else {}
        metrics = {k: float(v) for k, v in metrics.items() if k.startswith("test/")}
        task = type(self.model)
        headline = {key: metrics.get(name) for key, name in getattr(task, "headline", {}).items()}
        callback = trainer.checkpoint_callback
        best_score = getattr(callback, "best_model_score", None)
        last = next((c for c in trainer.checkpoint_callbacks if isinstance(c, LastCheckpoint)), None)
        self.results = {
            "subcommand": self.subcommand,
            "config": self._config_paths(),
            "run_dir": trainer.log_dir,
            "task": task.__name__,
            "model": type(getattr(self.model, "model", self.model)).__name__,
            "data": type(self.datamodule).__name__,
            **headline,
            "test_metrics": metrics,
            "monitor": getattr(callback, "monitor", None),
            "best_score": float(best_score) if best_score is not None else None,
            "checkpoint": checkpoint,
            "last_checkpoint": last.path if last is not None and last.dirpath and os.path.isfile(last.path) else None,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "seed": self._section().get("seed_everything"),
            "wall_time_s": round(time.perf_counter() - self._started, 1),
            "epochs": trainer.current_epoch,
            "steps": trainer.global_step,
        }
        if not trainer.is_global_zero:
            return
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.results_path = log_dir / RESULTS_FILE
        partial = self.results_path.with_name(f".{RESULTS_FILE}.{os.getpid()}")
        partial.write_text(json.dumps(self.results, indent=2) + "\n")
        os.replace(partial, self.results_path)  # never a half-written results.json
        summary = task.summary(headline) if hasattr(task, "summary") and headline else ", ".join(
            f"{k} {v:.4g}" for k, v in metrics.items()
        )
        print(f"ssmzoo: {summary}   ({self.results['wall_time_s']:.0f} s; results in {self.results_path})")


def run(args: list[str] | None = None) -> SsmzooCLI:
    """Run the ``ssmzoo`` LightningCLI on ``args`` (default: the command line) and return it."""
    return SsmzooCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={
            "prog": "ssmzoo",
            "description": "Train and evaluate ssmzoo's tasks with Lightning, from YAML configs "
            "(ssmzoo fit --config configs/lra/listops/s4d_small.yaml); `ssmzoo data` writes or locates data sets.",
        },
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``ssmzoo`` console script."""
    keep_freed_memory_from_env()  # this process is ours: large activations reused without page faults
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] == "data":
        data_main(argv[1:])
        return
    run(args)
