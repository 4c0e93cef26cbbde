"""Long Range Arena tasks (Tay et al., ICLR 2021): ListOps (generated or official files), Image, Pathfinder /
Path-X, Text and Retrieval (official releases), all on :class:`ClassificationDataModule`."""

from .common import ClassificationDataModule
from .image import LRAImageDataModule
from .listops import ListOpsDataModule, generate_listops, read_listops_tsv
from .pathfinder import PathfinderDataModule
from .text import LRARetrievalDataModule, LRATextDataModule

__all__ = [
    "ClassificationDataModule",
    "LRAImageDataModule",
    "LRARetrievalDataModule",
    "LRATextDataModule",
    "ListOpsDataModule",
    "PathfinderDataModule",
    "generate_listops",
    "read_listops_tsv",
]
