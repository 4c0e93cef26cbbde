"""The ``ssmzoo`` command (``entry.py``: the entry point; ``app.py``: the LightningCLI), its run folders and
checkpoint paths (``runs.py``), the callbacks that keep a run's work (``callbacks.py``), progress output
(``progress.py``), thread use (``threads.py``) and ``ssmzoo generate`` (``generate.py``).

Only ``main`` is imported eagerly: the rest loads torch and Lightning, which ``ssmzoo --help`` does not need.
"""

from __future__ import annotations

import importlib
from typing import Any

from .entry import main

_LAZY = {"RESULTS_FILE": ".app", "SsmzooCLI": ".app", "run": ".app", "load_tokenizer": ".generate",
         "LastCheckpoint": ".callbacks", "LoaderPosition": ".callbacks", "RNGStates": ".callbacks"}

__all__ = ["RESULTS_FILE", "LastCheckpoint", "LoaderPosition", "RNGStates", "SsmzooCLI", "load_tokenizer", "main",
           "run"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'ssmzoo.cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value
