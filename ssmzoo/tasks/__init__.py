"""LightningModules: what to optimise and what to log for each kind of task; each declares the metric its
checkpoints monitor (:class:`Task`)."""

from .base import Task
from .classification import ClassificationTask
from .forecasting import ForecastingTask

__all__ = ["ClassificationTask", "ForecastingTask", "Task"]
