"""LightningDataModules and data generators (imported on first use, see ``lra/__init__.py``)."""

from importlib import import_module
from typing import Any

from .paths import data_root

_EXPORTS = {"ListOpsDataModule": "lra", "lra": None}

__all__ = ["ListOpsDataModule", "data_root", "lra"]


def __getattr__(name: str) -> Any:
    if name == "lra":
        return import_module(".lra", __name__)
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
