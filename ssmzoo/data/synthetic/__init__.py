"""Synthetic tasks: selective copying and induction heads (Mamba paper), key-value needles (Titans paper's
passkey test) and digit passkey retrieval at any length (RAMba / HSA long-context test)."""

from .datamodule import InductionHeadsDataModule, NeedleDataModule, SelectiveCopyingDataModule
from .induction_heads import induction_heads
from .needle import needles
from .passkey import PasskeyDataModule, passkey_example
from .selective_copying import selective_copying

__all__ = ["InductionHeadsDataModule", "NeedleDataModule", "PasskeyDataModule", "SelectiveCopyingDataModule",
           "induction_heads", "needles", "passkey_example", "selective_copying"]
