"""The ``ssmzoo`` command (``app.py``), its run folders and checkpoint paths (``runs.py``) and the callbacks
that keep a run's work (``callbacks.py``)."""

from .app import RESULTS_FILE, SsmzooCLI, main, run
from .callbacks import LastCheckpoint, LoaderPosition, RNGStates

__all__ = ["RESULTS_FILE", "LastCheckpoint", "LoaderPosition", "RNGStates", "SsmzooCLI", "main", "run"]
