"""LightningModules: what to optimise and what to log for each kind of task; each declares the metric its
checkpoints monitor (:class:`Task`)."""

from .base import Task
from .classification import ClassificationTask
from .forecasting import ForecastingTask
from .language_modeling import LanguageModelingTask, RecallTask

__all__ = ["ClassificationTask", "ForecastingTask", "LanguageModelingTask", "RecallTask", "Task"]
