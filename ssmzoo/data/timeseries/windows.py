"""Lookback/horizon windows over a (time, channels) array, the batches of every forecasting task."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset


class ForecastWindows(Dataset):
    """Item i is (x, y): x = values[s : s+lookback, input_columns] (lookback, n_inputs) and
    y = values[s+lookback : s+lookback+horizon, output_columns] (horizon, n_outputs), s = i·stride,
    float32 tensors. ``values`` (time, channels) is already scaled."""

    def __init__(self, values: np.ndarray, lookback: int, horizon: int, input_columns: list[int],
                 output_columns: list[int], stride: int = 1) -> None:
        if values.shape[0] < lookback + horizon:
            raise ValueError(
                f"ForecastWindows: need at least lookback + horizon = {lookback + horizon} rows, got {values.shape[0]}"
            )
        self.values = torch.as_tensor(np.ascontiguousarray(values), dtype=torch.float32)
        self.lookback, self.horizon, self.stride = lookback, horizon, stride
        self.input_columns, self.output_columns = list(input_columns), list(output_columns)
        self.n_windows = (values.shape[0] - lookback - horizon) // stride + 1

    def __len__(self) -> int:
        return self.n_windows

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        if not 0 <= i < self.n_windows:
            raise IndexError(f"window {i} out of range [0, {self.n_windows})")
        s = i * self.stride
        x = self.values[s : s + self.lookback, self.input_columns]
        y = self.values[s + self.lookback : s + self.lookback + self.horizon, self.output_columns]
        return x, y
