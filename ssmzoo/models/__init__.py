"""Backbones built from sequence layers."""

from .lm import LanguageModel
from .titans import MAC, MAG, MAL, TitansLM

__all__ = ["LanguageModel", "MAC", "MAG", "MAL", "TitansLM"]
