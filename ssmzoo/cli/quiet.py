"""Messages of the libraries under the ``ssmzoo`` command that tell its user nothing, filtered by their text.

Each entry says why it is noise here; anything not listed is shown as the library prints it.
"""

from __future__ import annotations

import logging
import os
import warnings

# (logger, start of the message): Lightning's informational records that are advertisements or that report
# ssmzoo's own deliberate choices.
RECORDS = (
    # an advertisement for a cloud service, printed at every Trainer
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip:"),
    # ssmzoo puts its own model summary in place of Lightning's (RunSummary: no empty FLOPs count)
    ("lightning.pytorch.utilities.rank_zero", "Trainer already configured with model summary callbacks"),
)

# (warning category, regular expression matched at the start of the message)
WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    # Lightning 2.6 calling a torch pytree API that torch deprecated; nothing a user can do
    (Warning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    # ssmzoo chooses DataLoader workers itself (SsmzooCLI._choose_workers: none on CPU, where the compute threads
    # take every core; on a GPU, from the CPUs available); the datamodules' batches are in memory
    (Warning, r"The '\w+' does not have many workers"),
    # a new run's folder is taken fresh (runs.allocate_version), so this fires only when --ckpt_path resumes a run
    # in its own folder, which is what resuming means here
    (Warning, r"Checkpoint directory .* exists and is not empty"),
)

# Only for validate, test and predict: a checkpoint's ModelCheckpoint state names its own run folder, and an
# evaluation runs in a new one, so this says nothing about the evaluation.
EVALUATION_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (Warning, r"The dirpath has changed from"),
)


class _DropRecords(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith(self.prefixes)


def prepare_environment() -> None:
    """Before jsonargparse is imported: Lightning 2.6 calls jsonargparse APIs that 4.49 deprecated; the
    deprecation notices are for Lightning's authors (a user's own choice of the variable is kept)."""
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")


def install(subcommand: str | None = None) -> None:
    """Install the filters (idempotent); ``subcommand`` adds those that hold for evaluations only."""
    by_logger: dict[str, list[str]] = {}
    for name, prefix in RECORDS:
        by_logger.setdefault(name, []).append(prefix)
    for name, prefixes in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropRecords) for f in logger.filters):
            logger.addFilter(_DropRecords(tuple(prefixes)))
    chosen = WARNINGS + (EVALUATION_WARNINGS if subcommand in ("validate", "test", "predict") else ())
    for category, message in chosen:
        warnings.filterwarnings("ignore", message=message, category=category)
