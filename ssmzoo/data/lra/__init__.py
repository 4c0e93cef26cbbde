"""Long Range Arena tasks (Tay et al., ICLR 2021).

Names are imported on first use (PEP 562) so that ``python -m ssmzoo.data.lra.listops`` runs the module
once, as ``__main__``, without a second copy imported by this package."""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ListOpsDataModule": "listops",
    "generate_listops": "listops",
    "read_listops_tsv": "listops",
    "LRAImageDataModule": "image",
    "PathfinderDataModule": "pathfinder",
    "LRATextDataModule": "text",
    "LRARetrievalDataModule": "text",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
