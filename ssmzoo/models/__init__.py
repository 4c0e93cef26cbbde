"""Backbones built from sequence layers."""

from .norm import MaskedBatchNorm, RMSNorm
from .sequence import SequenceModel

__all__ = ["MaskedBatchNorm", "RMSNorm", "SequenceModel"]
