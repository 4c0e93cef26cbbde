"""LightningModules: what to optimise and what to log for each kind of task."""

from .classification import ClassificationTask
from .forecasting import ForecastingTask

__all__ = ["ClassificationTask", "ForecastingTask"]
