"""LightningModules: one task per file."""

from .forecasting import ForecastingTask

__all__ = ["ForecastingTask"]
