"""Backbones built from sequence layers."""

from .forecaster import Forecaster
from .linear_forecaster import LinearForecaster
from .lm import LanguageModel
from .norm import MaskedBatchNorm
from .ramba import RAMba
from .sequence import SequenceModel
from .spacetime import SpaceTime
from .ssm_forecaster import SSMForecaster
from .titans import MAC, MAG, MAL, TitansLM

from . import pretrained  # noqa: F401  (plugs checkpoint reading and writing into LanguageModel: see lm.py)

__all__ = [
    "Forecaster",
    "LinearForecaster",
    "LanguageModel",
    "MAC",
    "MAG",
    "MAL",
    "MaskedBatchNorm",
    "RAMba",
    "SSMForecaster",
    "SequenceModel",
    "SpaceTime",
    "TitansLM",
]
