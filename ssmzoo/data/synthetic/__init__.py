"""Synthetic tasks: selective copying and induction heads (Mamba paper), passkey retrieval (Titans paper)."""

from .datamodule import InductionHeadsDataModule, PasskeyDataModule, SelectiveCopyingDataModule
from .induction_heads import induction_heads
from .passkey import passkey
from .selective_copying import selective_copying

__all__ = ["InductionHeadsDataModule", "PasskeyDataModule", "SelectiveCopyingDataModule", "induction_heads",
           "passkey", "selective_copying"]
