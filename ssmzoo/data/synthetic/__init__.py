"""Synthetic tasks: selective copying and induction heads (Mamba paper), key-value needles (Titans paper's
passkey test), digit passkey retrieval at any length (RAMba / HSA long-context test) and multi-query
associative recall (Zoology's MQAR)."""

from .datamodule import InductionHeadsDataModule, MQARDataModule, NeedleDataModule, SelectiveCopyingDataModule
from .induction_heads import induction_heads
from .mqar import mqar
from .needle import needles
from .passkey import PasskeyDataModule, passkey_example
from .selective_copying import selective_copying

__all__ = ["InductionHeadsDataModule", "MQARDataModule", "NeedleDataModule", "PasskeyDataModule",
           "SelectiveCopyingDataModule", "induction_heads", "mqar", "needles", "passkey_example", "selective_copying"]
