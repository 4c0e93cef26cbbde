"""Backbones built from layers."""

from .forecaster import Forecaster
from .linear_forecaster import LinearForecaster
from .spacetime import SpaceTime
from .ssm_forecaster import SSMForecaster

__all__ = ["Forecaster", "LinearForecaster", "SSMForecaster", "SpaceTime"]
