"""Synthetic tasks from the Mamba paper: selective copying and induction heads."""

from .datamodule import InductionHeadsDataModule, SelectiveCopyingDataModule
from .induction_heads import induction_heads
from .selective_copying import selective_copying

__all__ = ["InductionHeadsDataModule", "SelectiveCopyingDataModule", "induction_heads", "selective_copying"]
