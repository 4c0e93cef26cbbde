"""Backbones built from sequence layers."""

from .lm import LanguageModel
