"""LightningModules: what to optimise and what to log for each kind of task."""

from .classification import ClassificationTask

__all__ = ["ClassificationTask"]
