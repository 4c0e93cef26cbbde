"""Where the tests find real data sets that may be on this machine (never downloaded)."""

from __future__ import annotations

from pathlib import Path

from ssmzoo.data import data_root

ROOT = Path(__file__).resolve().parents[1]


def ett_dir() -> Path | None:
    """The ETT-small folder: under $SSMZOO_DATA, or shared/data beside the checkout (or beside its parent, for a
    worktree one level deeper), if any holds ETTh1.csv."""
    candidates = [data_root() / "ETT-small"] + [p / "shared" / "data" / "ETT-small" for p in ROOT.parents[:2]]
    return next((p for p in candidates if (p / "ETTh1.csv").is_file()), None)
