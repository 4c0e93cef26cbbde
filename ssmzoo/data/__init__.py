"""LightningDataModules, one subpackage per data family (lra/, timeseries/, synthetic/, lm/).

Every datamodule checks its arguments in ``__init__`` (a ValueError naming the argument), writes generated
files in ``prepare_data`` and reads in ``setup``; training batches come in an order set by the run seed and
the epoch, and resume mid-epoch (:mod:`ssmzoo.data.loader`)."""

from .lra import (
    ClassificationDataModule,
    ListOpsDataModule,
    LRAImageDataModule,
    LRARetrievalDataModule,
    LRATextDataModule,
    PathfinderDataModule,
)
from .lm import TextDataModule
from .paths import data_root
from .synthetic import (
    InductionHeadsDataModule,
    MQARDataModule,
    NeedleDataModule,
    PasskeyDataModule,
    SelectiveCopyingDataModule,
)
from .timeseries import ARDataModule, InformerDataModule

__all__ = [
    "ARDataModule",
    "ClassificationDataModule",
    "InductionHeadsDataModule",
    "InformerDataModule",
    "LRAImageDataModule",
    "LRARetrievalDataModule",
    "LRATextDataModule",
    "ListOpsDataModule",
    "MQARDataModule",
    "NeedleDataModule",
    "PasskeyDataModule",
    "PathfinderDataModule",
    "SelectiveCopyingDataModule",
    "TextDataModule",
    "data_root",
]
