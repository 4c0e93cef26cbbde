"""Backbones built from layers."""

from .titans import MAC, MAG, MAL, TitansLM

__all__ = ["MAC", "MAG", "MAL", "TitansLM"]
