"""Time-series forecasting data: Informer-format CSVs (ETT and friends) and synthetic AR(p)."""

from .ar import ARDataModule, generate_ar, random_stable_ar
from .informer import InformerDataModule, InformerTable, read_informer_csv, split_borders
from .windows import ForecastWindows

__all__ = [
    "ARDataModule",
    "ForecastWindows",
    "InformerDataModule",
    "InformerTable",
    "generate_ar",
    "random_stable_ar",
    "read_informer_csv",
    "split_borders",
]
