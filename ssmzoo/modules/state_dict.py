"""Renamed submodules in checkpoints: a module that renames a child loads state dicts saved under the old name."""

from __future__ import annotations

from typing import Any


def rename_prefix(state_dict: dict[str, Any], prefix: str, old: str, new: str) -> None:
    """Move every key ``prefix + old + "." + rest`` of ``state_dict`` to ``prefix + new + "." + rest``, in place
    (call it from ``_load_from_state_dict``, before the module loads its own keys)."""
    moved = [k for k in state_dict if k.startswith(f"{prefix}{old}.")]
    for key in moved:
        state_dict[f"{prefix}{new}.{key[len(prefix) + len(old) + 1:]}"] = state_dict.pop(key)
