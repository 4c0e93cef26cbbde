"""The ``ssmzoo`` command's LightningCLI over ssmzoo's tasks and datamodules (and any other).

    ssmzoo fit --config configs/lra/listops/s4d_small.yaml     # train, then test the best checkpoint
    ssmzoo fit --config configs/lra/listops/s4d_small.yaml --ckpt_path last   # resume that config's newest run
    ssmzoo validate|test --config X.yaml --ckpt_path C.ckpt
    ssmzoo predict --config X.yaml --ckpt_path C.ckpt [--prompts '["To be"]']   # predictions into a run folder

A config's keys are the constructors' arguments (``model: {class_path, init_args}``, ``data: ...``,
``trainer: ...``), so a bad key or a wrong type fails with jsonargparse's message, and a value a constructor
refuses (a layer name, a ``layer_args`` key, a missing corpus) with that constructor's one message. Flags are
matched exactly, never by prefix. On top of Lightning's:

- **The task decides what is monitored.** ``checkpoint`` (a ModelCheckpoint) keeps the best checkpoint by
  the task's ``monitor``/``monitor_mode`` (``val/acc`` max for classification, ``val/mse`` min for
  forecasting; :class:`ssmzoo.tasks.Task`); ``--early_stopping_patience N`` stops on the same metric.
- **The data decides its shapes.** Number of classes, vocabulary, input channels, lookback and horizon are
  taken from the datamodule (``DATA_LINKS``), so configs do not repeat them.
- **Runs never lose work.** Each run gets its own folder ``<default_root_dir>/<config folder>_<config
  name>/version_<n>`` (taken atomically; ``default_root_dir`` made absolute), ``last.ckpt`` is rewritten
  every ``--last_checkpoint.every_n_train_steps`` steps, after every validation and at the end, checkpoints
  carry the random states and the data order's position, and ``--ckpt_path last`` resumes the newest run of
  the config in its own folder, ending with the weights an uninterrupted run would have. A run that fails
  before it wrote a checkpoint or results removes the files it wrote there (never anything else).
- **fit ends with a test** of the best checkpoint (``--test_after_fit``), a line with the task's headline
  metrics and ``results.json`` in the run folder (``test`` writes one too; without ``--ckpt_path`` it tests
  untrained weights and says so, loudly, in both).
- **predict writes a file** into a new run folder: class probabilities and labels, forecasts with their
  timestamps (CSV and a plot), or continuations of ``--prompts`` (the task's ``write_predictions``).
- **The first minutes.** ``--threads N`` (default: the CPUs available, OpenMP waiting passively so that other
  work on the cores does not stall it: ``threads.py``); on a terminal a progress bar, in a log a line every
  ``--progress_interval`` seconds (``progress.py``); libraries' advertisements and irrelevant warnings
  filtered (``quiet.py``).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from . import quiet

quiet.prepare_environment()

import torch  # noqa: E402
from jsonargparse import ArgumentParser, Namespace  # noqa: E402
from lightning.fabric.utilities.data import suggested_max_num_workers  # noqa: E402
from lightning.pytorch import LightningDataModule, LightningModule, Trainer  # noqa: E402
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, ModelSummary  # noqa: E402
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI  # noqa: E402
from lightning.pytorch.loggers import Logger, TensorBoardLogger  # noqa: E402
from lightning.pytorch.trainer.states import TrainerStatus  # noqa: E402
from lightning.pytorch.utilities.model_helpers import is_overridden  # noqa: E402
from lightning.pytorch.utilities.rank_zero import rank_zero_only  # noqa: E402

# Imported so that `--model.help ClassificationTask`, `--data ListOpsDataModule` and the help's lists of
# known subclasses know ssmzoo's tasks and datamodules by their short names.
import ssmzoo.data  # noqa: F401, E402
import ssmzoo.tasks  # noqa: F401, E402

from ..data.commands import build_parser as build_data_parser  # noqa: E402
from ..models.pretrained import run_checkpoint  # noqa: E402
from ..tasks.predict import PredictOptions  # noqa: E402
from .callbacks import LastCheckpoint, LoaderPosition, RNGStates  # noqa: E402
from .checkpoint_io import with_atomic_checkpoint_io  # noqa: E402
from .subcommands import SUBCOMMANDS  # noqa: E402
from .progress import ProgressLines, RunProgressBar, RunSummary  # noqa: E402
from .runs import (RunCSVLogger, allocate_version, check_checkpoint, find_last_checkpoint,  # noqa: E402
                   remove_failed_run, run_dir_of, run_name)
from .threads import apply_threads, check_threads, choose_threads  # noqa: E402

RESULTS_FILE = "results.json"
MODEL_ARGS = "model.init_args.model.init_args"
UNTRAINED = ("UNTRAINED WEIGHTS: `ssmzoo test` was given no --ckpt_path, so it tests the model as initialised, not "
             "a trained one; pass --ckpt_path (a .ckpt file, or `last` for the config's newest run)")


class UsageError(ValueError):
    """A command line or config the run cannot start from; ``main`` prints its message alone (no traceback)."""


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


def _ours(error: BaseException) -> BaseException | None:
    """The first error in ``error``'s chain that ssmzoo's own code raised about its arguments or files (a
    constructor refusing a value, a missing file), or None."""
    package = str(Path(__file__).resolve().parents[1])
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ValueError, FileNotFoundError)) and current.__traceback__ is not None:
            frame = current.__traceback__
            while frame.tb_next is not None:
                frame = frame.tb_next
            if os.path.abspath(frame.tb_frame.f_code.co_filename).startswith(package):
                return current
        current = current.__cause__ or current.__context__
    return None


class SsmzooCLI(LightningCLI):
    """LightningCLI with ssmzoo's run handling (see the module docstring)."""

    results: dict[str, Any] | None = None
    results_path: Path | None = None
    predictions: list[Path] | None = None
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
        parser.add_argument(
            "--threads",
            type=Optional[int],
            default=None,
            help="Intra-op threads per process (torch.set_num_threads). Default: $OMP_NUM_THREADS if set, else "
            "the CPUs available to this process (shared among the processes of a run on several devices).",
        )
        parser.add_argument(
            "--progress_interval",
            type=float,
            default=30.0,
            help="When the output is not a terminal (nohup, tee, SLURM): seconds between progress lines (step, "
            "loss, rate, ETA); 0: every step. On a terminal a progress bar is shown instead.",
        )
        parser.add_argument(
            "--compile",
            type=bool,
            default=False,
            help="torch.compile the task's network (nn.Module.compile: in place, so checkpoints keep their keys); "
            "the first steps then take the compile time, and a new input shape may compile once more.",
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

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":  # what to predict: flags of `ssmzoo predict` only
            parser.add_class_arguments(PredictOptions, "predictions", as_group=True)
        return parser

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        super()._add_subcommands(parser, **kwargs)
        # `ssmzoo data ...` and `ssmzoo generate ...` are dispatched by main() before this parser runs; registered
        # here so that this parser's help lists them beside fit/validate/test/predict.
        subcommands = parser._subcommands_action
        if subcommands is not None:
            data = build_data_parser()
            subcommands.add_subcommand("data", ArgumentParser(description=data.description), help=data.description)
            subcommands.add_subcommand("generate", ArgumentParser(description=SUBCOMMANDS["generate"]),
                                       help=SUBCOMMANDS["generate"])

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
        self.version: int | None = None
        ckpt_path = cfg.get("ckpt_path")
        if ckpt_path is not None and ckpt_path not in ("best", "hpc") and not str(ckpt_path).startswith("registry"):
            try:
                if ckpt_path == "last":
                    path = find_last_checkpoint(root, self.run_name)
                else:
                    path = Path(ckpt_path).expanduser().resolve()
                    if path.is_dir() and not self.config.get("subcommand") == "fit":  # a run folder: its best checkpoint
                        path = run_checkpoint(path)
                check_checkpoint(path)
            except (FileNotFoundError, ValueError) as error:
                error.ssmzoo_usage_error = True  # main() prints the message alone
                raise
            cfg.ckpt_path = str(path)
            self.resumed_from = path
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        cfg = self._section()
        subcommand = self.config.get("subcommand")
        quiet.install(subcommand)
        if self.resumed_from is None:  # with a checkpoint, LightningCLI has put its model arguments in the config
            for _, argument, _ in DATA_LINKS:
                value = cfg.get(f"{MODEL_ARGS}.{argument}")
                if value is not None:
                    raise UsageError(
                        f"{MODEL_ARGS}.{argument}={value!r} is set in the config, but ssmzoo takes {argument} "
                        "from the datamodule; remove it from the config and the command line"
                    )
        if subcommand == "predict" and self.resumed_from is None:
            raise UsageError("ssmzoo predict needs a trained model: pass --ckpt_path (a .ckpt file, a run folder, "
                             "or `last` for the config's newest run)")
        patience = cfg.get("early_stopping_patience")
        if patience is not None:
            if patience < 1:
                raise UsageError(f"--early_stopping_patience must be an int >= 1 or null, got {patience!r}")
            if task_monitor(cfg.get("model")) is None:
                raise UsageError(
                    f"--early_stopping_patience: the model class {cfg.model.class_path} declares no monitored "
                    "metric (class attributes `monitor` and `monitor_mode`, see ssmzoo.tasks.Task)"
                )
        interval = cfg.get("progress_interval")
        if interval is None or not interval >= 0:
            raise UsageError(f"--progress_interval must be a number of seconds >= 0, got {interval!r}")
        try:
            check_threads(cfg.get("threads"))
        except ValueError as error:
            raise UsageError(str(error)) from None
        threads, why = choose_threads(cfg.get("threads"), processes=self._local_processes())
        apply_threads(threads)
        if os.environ.get("LOCAL_RANK", "0") == "0":
            per = " per process" if self._local_processes() > 1 else ""
            print(f"ssmzoo: {threads} thread{'s' if threads > 1 else ''}{per} ({why}; --threads N to choose)")
        # A resumed fit continues in the run folder its checkpoint came from.
        self.run_dir = run_dir_of(self.resumed_from) if self.subcommand == "fit" and self.resumed_from else None

    def _local_processes(self) -> int:
        """Processes this run starts on this node: Lightning's DDP starts one per device."""
        trainer = self._section().trainer
        devices, strategy = trainer.get("devices"), str(trainer.get("strategy") or "auto")
        if strategy == "auto" and trainer.get("accelerator") in ("cpu", None, "auto") and devices in (None, "auto"):
            return 1
        if isinstance(devices, int) and devices > 0:
            return devices
        if isinstance(devices, (list, tuple)):
            return max(1, len(devices))
        if isinstance(devices, str) and devices.isdigit():
            return max(1, int(devices))
        return 1

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as error:
            ours = _ours(error)
            if ours is None:
                raise
            # jsonargparse wraps a constructor's error in its whole list of type alternatives (80 lines ending
            # in "Expected a <class 'NoneType'>"): the constructor's own message says what was wrong.
            raise UsageError(str(ours)) from None

    # -- the trainer -----------------------------------------------------------------------------------
    def _loggers(self, root: Path) -> list[Logger]:
        if self.run_dir is not None:
            save_dir, name, version = self.run_dir.parent.parent, self.run_dir.parent.name, int(self.run_dir.name[8:])
        else:
            save_dir, name = root, self.run_name
            # rank 0 takes the folder; other ranks write no logs and get their paths from rank 0
            version = allocate_version(root / name) if rank_zero_only.rank == 0 else None
            self.version = version
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
        trainer = self._instantiate_trainer(trainer_config, callbacks)
        self._own_progress_and_summary(trainer)
        return trainer

    def _own_progress_and_summary(self, trainer: Trainer) -> None:
        """Put ssmzoo's progress output and model summary in place of Lightning's defaults (a user's own
        callbacks of either kind are kept)."""
        from lightning.pytorch.callbacks import RichModelSummary, RichProgressBar, TQDMProgressBar

        terminal = sys.stdout.isatty()
        interval = float(self._section().get("progress_interval", 30.0))
        for i, callback in enumerate(trainer.callbacks):
            if type(callback) in (RichProgressBar, TQDMProgressBar):
                trainer.callbacks[i] = RunProgressBar() if terminal and type(callback) is RichProgressBar else (
                    callback if terminal else ProgressLines(interval))
            elif type(callback) in (ModelSummary, RichModelSummary):
                trainer.callbacks[i] = RunSummary(max_depth=callback._max_depth)

    # -- running -----------------------------------------------------------------------------------------
    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            self._remove_if_empty()
            raise

    def _remove_if_empty(self) -> None:
        """A run that failed before writing a checkpoint or results leaves no folder behind (only the files it
        wrote itself are removed; see runs.remove_failed_run)."""
        if self.run_dir is not None or self.version is None or rank_zero_only.rank != 0:
            return
        root = Path(self._section().trainer.default_root_dir)
        remove_failed_run(root / self.run_name / f"version_{self.version}")

    def _choose_workers(self) -> None:
        """DataLoader workers from the CPUs available: none when training on the CPU (the compute threads take
        every core; the batches are in memory), else up to 4 per device unless the config sets them."""
        datamodule = self.datamodule
        if datamodule is None or getattr(datamodule, "num_workers", None) != 0 or self._explicit("num_workers"):
            return
        if self.trainer.accelerator.__class__.__name__ == "CPUAccelerator":
            return
        workers = min(4, suggested_max_num_workers(self.trainer.num_devices))
        if workers > 0:
            datamodule.num_workers = workers
            if self.trainer.is_global_zero:
                print(f"ssmzoo: {workers} DataLoader workers per device (--data.init_args.num_workers to choose)")

    def _explicit(self, key: str) -> bool:
        """Whether ``key`` was given on the command line or in a config file (not left at its default)."""
        texts = list(sys.argv) + [Path(p).read_text() for p in self._config_paths() if Path(p).is_file()]
        return any(key in text for text in texts)

    # -- fit, then test the best checkpoint -------------------------------------------------------------
    def _compile_network(self) -> None:
        """``--compile true``: compile the task's network (``model``) in place, once per run."""
        network = getattr(self.model, "model", None)
        if self._section().get("compile") and isinstance(network, torch.nn.Module) and not getattr(
                network, "_ssmzoo_compiled", False):
            network.compile()
            network._ssmzoo_compiled = True

    def before_fit(self) -> None:
        self._started = time.perf_counter()
        self._choose_workers()
        self._compile_network()
        if self.resumed_from is not None:
            print(f"ssmzoo: resuming from {self.resumed_from} in {self.trainer.log_dir}")

    def before_validate(self) -> None:
        self._choose_workers()
        self._compile_network()

    def before_test(self) -> None:
        self._started = time.perf_counter()
        self._choose_workers()
        self._compile_network()
        if self._section().get("ckpt_path") is None:
            if self.trainer.is_global_zero:
                print(f"ssmzoo: {UNTRAINED}", file=sys.stderr, flush=True)

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
        # trainer.log_dir is a collective under DDP (rank 0's path broadcast to every rank): every rank asks
        # for it once, here, before rank 0 alone goes on to write.
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        if isinstance(metrics, list):
            metrics = metrics[0] if metrics else {}
        metrics = {k: float(v) for k, v in metrics.items() if k.startswith("test/")}
        task = type(self.model)
        headline = {key: metrics.get(name) for key, name in getattr(task, "headline", {}).items()}
        callback = trainer.checkpoint_callback
        best_score = getattr(callback, "best_model_score", None)
        last = next((c for c in trainer.checkpoint_callbacks if isinstance(c, LastCheckpoint)), None)
        untrained = self.subcommand == "test" and checkpoint is None
        self.results = {
            "subcommand": self.subcommand,
            "config": self._config_paths(),
            "run_dir": str(log_dir),
            "task": task.__name__,
            "model": type(getattr(self.model, "model", self.model)).__name__,
            "data": type(self.datamodule).__name__,
            **({"untrained": True, "warning": UNTRAINED} if untrained else {}),
            **headline,
            "test_metrics": metrics,
            "monitor": getattr(callback, "monitor", None),
            "best_score": float(best_score) if best_score is not None else None,
            "checkpoint": checkpoint,
            "last_checkpoint": last.path if last is not None and last.dirpath and os.path.isfile(last.path) else None,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "seed": self._section().get("seed_everything"),
            "threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None,
            "wall_time_s": round(time.perf_counter() - self._started, 1),
            "epochs": trainer.current_epoch,
            "steps": trainer.global_step,
        }
        if not trainer.is_global_zero:
            return
        log_dir.mkdir(parents=True, exist_ok=True)
        self.results_path = log_dir / RESULTS_FILE
        write_json(self.results_path, self.results)
        summary = task.summary(headline) if hasattr(task, "summary") and headline else ", ".join(
            f"{k} {v:.4g}" for k, v in metrics.items()
        )
        if untrained:
            summary = f"UNTRAINED weights (no --ckpt_path): {summary}"
        print(f"ssmzoo: {summary}   ({self.results['wall_time_s']:.0f} s; results in {self.results_path})")

    # -- predict ---------------------------------------------------------------------------------------
    def before_predict(self) -> None:
        self._choose_workers()
        if self.trainer.world_size > 1:
            raise UsageError("ssmzoo predict runs on one device (--trainer.devices 1): the predictions of several "
                             "processes are not gathered into one file")
        options = self._get(self.config_init, "predictions")
        task, datamodule = self.model, self.datamodule
        if not callable(getattr(task, "prediction_loader", None)):
            raise UsageError(f"{type(task).__name__} does not say what to predict (ssmzoo's tasks define "
                             "prediction_loader, predict_step and write_predictions)")
        task.predict_options = options
        if datamodule is not None and not is_overridden("predict_dataloader", datamodule, LightningDataModule):
            # Lightning asks the datamodule for predict_dataloader; ssmzoo's datamodules leave the choice of what
            # to predict to the task (a split's windows, or prompts for a language model).
            def predict_dataloader(dm: LightningDataModule) -> Any:
                return task.prediction_loader(dm, options)

            datamodule.predict_dataloader = types.MethodType(predict_dataloader, datamodule)

    def after_predict(self) -> None:
        outputs = self.trainer.predict_loop.predictions
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        if not self.trainer.is_global_zero:
            return
        folder.mkdir(parents=True, exist_ok=True)
        self.predictions = self.model.write_predictions(outputs, folder, self.datamodule, self.model.predict_options)
        names = ", ".join(str(p) for p in self.predictions)
        print(f"ssmzoo: predictions written to {names}")


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as JSON atomically: a temporary file in the same folder, fsync, rename."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    with open(partial, "w") as f:
        f.write(json.dumps(value, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)  # never a half-written file


@contextlib.contextmanager
def _argv(args: list[str] | None) -> Iterator[None]:
    """``sys.argv`` as if ``ssmzoo ARGS`` had been typed, while the CLI runs on explicit ``args``: LightningCLI
    warns when both are given (in tests, sys.argv is pytest's), and Lightning's DDP launcher starts the other
    ranks by running sys.argv again, which must then be this command."""
    if args is None:
        yield
        return
    saved = sys.argv
    sys.argv = [saved[0] if saved else "ssmzoo", *args]
    try:
        yield
    finally:
        sys.argv = saved


@contextlib.contextmanager
def _threads_restored() -> Iterator[None]:
    import torch

    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env


def run(args: list[str] | None = None) -> SsmzooCLI:
    """Run the ``ssmzoo`` LightningCLI on ``args`` (default: the command line) and return it. The thread count it
    chooses (``--threads``) holds while it runs; the caller's is restored after."""
    with _argv(None if args is None else list(args)), _threads_restored():
        return SsmzooCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=None,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={
                "prog": "ssmzoo",
                "allow_abbrev": False,  # a misspelled flag (--trainer.max_step) is an error, not a prefix of one
                "description": "Train and evaluate ssmzoo's tasks with Lightning, from YAML configs "
                "(ssmzoo fit --config configs/lra/listops/s4d_small.yaml); `ssmzoo data` writes or locates data "
                "sets, `ssmzoo generate` continues a prompt with a trained language model.",
            },
        )

