"""Where ssmzoo keeps data: ``$SSMZOO_DATA``, default ``~/.cache/ssmzoo``."""

from __future__ import annotations

import os
from pathlib import Path


def data_root() -> Path:
    """The root folder for generated and downloaded data (``$SSMZOO_DATA`` or ``~/.cache/ssmzoo``)."""
    root = os.environ.get("SSMZOO_DATA")
    if root:
        return Path(root).expanduser()
    return Path.home() / ".cache" / "ssmzoo"
