"""Informer-format CSVs (ETTh1/2, ETTm1/2, ECL, Weather, ...): a `date` column, then numeric channels.

Splits follow Informer (Zhou et al., AAAI 2021; see shared/data/ETT-small/README.md):
- ``etth``: train = first 12 months of hours (8,640 rows), val = next 4 months, test = next 4;
- ``ettm``: the same months at 15-minute steps (4× the rows);
- ``ratio``: 70% / 10% / 20% (Informer's "custom" datasets);
each split after the first starts ``lookback`` rows early so its first window has a full history.
Values are z-scored with the mean and std of the train split only; metrics use scaled values.

Feature modes: ``M`` all channels in, all out; ``S`` the target in and out; ``MS`` all in, the
target out. The target is always the last input channel (as in Informer's loader).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from ..loader import ResumableDataLoader, check_loader_args, eval_loader
from ..paths import data_root
from .windows import ForecastWindows

Split = Literal["auto", "etth", "ettm", "ratio"]
HOW_TO_GET = (
    "The ETT files come from github.com/zhouhaoyi/ETDataset (folder ETT-small): put ETT-small/ under "
    "$SSMZOO_DATA, or pass --data.init_args.path /path/to/<name>.csv"
)


def default_csv(name: str) -> Path:
    """Where the CSV ``name`` is looked for when no path is given: ``$SSMZOO_DATA/ETT-small/<name>.csv``."""
    return data_root() / "ETT-small" / f"{name}.csv"


@dataclass
class InformerTable:
    """The parsed CSV: ``columns`` (channel names, target last) and ``values`` (time, channels) float64."""

    columns: list[str]
    values: np.ndarray
    dates: list[str]


def read_informer_csv(path: str, target: str) -> InformerTable:
    """Read an Informer-format CSV; the channels come back with ``target`` moved last.

    Raises FileNotFoundError naming the path, and ValueError for a missing date or target column,
    a ragged row or a non-numeric value (naming the row and column)."""
    _require_file(path)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{path}: the file is empty; expected a header `date,<channels...>`")
    header = [h.strip() for h in rows[0]]
    if "date" not in header:
        raise ValueError(f"{path}: missing column 'date'; the header is {header}")
    if target not in header:
        raise ValueError(f"{path}: missing target column {target!r}; the header is {header}")
    date_col = header.index("date")
    channels = [h for i, h in enumerate(header) if i != date_col and h != target] + [target]
    order = [header.index(h) for h in channels]
    values = np.empty((len(rows) - 1, len(channels)), dtype=np.float64)
    dates = []
    for r, row in enumerate(rows[1:]):
        line = r + 2  # 1-based, after the header
        if len(row) != len(header):
            raise ValueError(f"{path}: line {line} has {len(row)} fields, the header has {len(header)}")
        dates.append(row[date_col])
        for j, col in enumerate(order):
            try:
                values[r, j] = float(row[col])
            except ValueError:
                raise ValueError(
                    f"{path}: line {line}, column {header[col]!r}: {row[col]!r} is not a number"
                ) from None
    if not np.isfinite(values).all():
        bad = np.argwhere(~np.isfinite(values))[0]
        raise ValueError(f"{path}: line {bad[0] + 2}, column {channels[bad[1]]!r} is NaN or infinite")
    return InformerTable(columns=channels, values=values, dates=dates)


def _require_file(path: str | os.PathLike) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Informer CSV not found at {os.path.abspath(path)}. {HOW_TO_GET}")


def read_informer_header(path: str | os.PathLike) -> list[str]:
    """The column names of an Informer-format CSV (its first line only)."""
    _require_file(path)
    with open(path, newline="") as f:
        header = next(csv.reader(f), None)
    if not header:
        raise ValueError(f"{path}: the file is empty; expected a header `date,<channels...>`")
    return [h.strip() for h in header]


def split_borders(n_rows: int, lookback: int, split: Literal["etth", "ettm", "ratio"]) -> list[tuple[int, int]]:
    """[(start, stop)] row ranges of train, val and test, each later one starting lookback rows early."""
    if split in ("etth", "ettm"):
        per_month = 30 * 24 * (4 if split == "ettm" else 1)
        train, val, test = 12 * per_month, 4 * per_month, 4 * per_month
        if n_rows < train + val + test:
            raise ValueError(
                f"split={split!r} needs {train + val + test} rows (12 + 4 + 4 months), the file has {n_rows}; "
                "use split='ratio' for other lengths"
            )
        stops = [train, train + val, train + val + test]
    elif split == "ratio":
        train, test = int(n_rows * 0.7), int(n_rows * 0.2)
        stops = [train, n_rows - test, n_rows]
    else:
        raise ValueError(f"split must be 'auto', 'etth', 'ettm' or 'ratio', got {split!r}")
    starts = [0, stops[0] - lookback, stops[1] - lookback]
    return list(zip(starts, stops))


class InformerDataModule(L.LightningDataModule):
    """Lookback/horizon windows from an Informer-format CSV; batches are (x, y) with
    x (batch, lookback, n_inputs) and y (batch, horizon, n_outputs), z-scored with train statistics.

    The arguments are checked here, the CSV is read in ``setup``; ``n_inputs`` and ``n_outputs`` (which
    the ``ssmzoo`` command links into the model) read only the header.

    Args:
        path: the CSV; default ``$SSMZOO_DATA/ETT-small/<name>.csv``.
        name: the data set whose CSV is used when ``path`` is not given (ETTh1, ETTh2, ETTm1, ETTm2, ...).
        features: "M", "S" or "MS" (see the module docstring).
        target: the target column (ETT: "OT").
        lookback, horizon: window lengths.
        split: "etth", "ettm", "ratio", or "auto" (from the file name: ETTh*, ETTm*, else ratio).
        batch_size: training batch size (evaluation uses the same).
        train_stride: keep every train_stride-th training window (1: all of them), to fit a CPU budget.
        val_stride: the same for validation; the test split always uses every window.
        train_drop_last: drop the last incomplete training batch (the published codes do).
        num_workers: DataLoader workers.

    After ``setup``: ``columns`` (channel names, target last), ``mean`` and ``std`` (per channel, from the
    train rows), ``dates`` (the CSV's date column, one string per row), ``borders`` ({split: (start, stop)}
    rows of the CSV), ``datasets`` ({split: ForecastWindows}). :meth:`window_dates` gives the timestamps of
    one window's history and forecast, :meth:`inverse_transform` maps scaled values back to the CSV's units.
    """

    def __init__(
        self,
        path: str | None = None,
        name: str = "ETTh1",
        features: Literal["M", "S", "MS"] = "S",
        target: str = "OT",
        lookback: int = 336,
        horizon: int = 96,
        split: Split = "auto",
        batch_size: int = 32,
        train_stride: int = 1,
        val_stride: int = 1,
        train_drop_last: bool = False,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if features not in ("M", "S", "MS"):
            raise ValueError(f"InformerDataModule: features must be 'M', 'S' or 'MS', got {features!r}")
        if split not in ("auto", "etth", "ettm", "ratio"):
            raise ValueError(f"InformerDataModule: split must be 'auto', 'etth', 'ettm' or 'ratio', got {split!r}")
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise ValueError(f"InformerDataModule: path must be a file path or None, got {path!r}")
        if not isinstance(name, str) or not name or os.sep in name:
            raise ValueError(f"InformerDataModule: name must be a file name without .csv (e.g. 'ETTh1'), got {name!r}")
        for arg, v in (("lookback", lookback), ("horizon", horizon), ("train_stride", train_stride),
                       ("val_stride", val_stride)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"InformerDataModule: {arg} must be a positive int, got {v!r}")
        if not isinstance(train_drop_last, bool):
            raise ValueError(f"InformerDataModule: train_drop_last must be a bool, got {train_drop_last!r}")
        check_loader_args("InformerDataModule", batch_size, num_workers)
        self.path = str(path) if path is not None else str(default_csv(name))
        if split == "auto":
            base = os.path.basename(self.path)
            split = "etth" if base.startswith("ETTh") else "ettm" if base.startswith("ETTm") else "ratio"
        self.features, self.target = features, target
        self.lookback, self.horizon, self.split = lookback, horizon, split
        self.batch_size, self.train_stride, self.val_stride = batch_size, train_stride, val_stride
        self.num_workers, self.train_drop_last = num_workers, train_drop_last
        self.datasets: dict[str, ForecastWindows] = {}

    def _channels(self) -> int:
        header = read_informer_header(self.path)
        if "date" not in header:
            raise ValueError(f"{self.path}: missing column 'date'; the header is {header}")
        if self.target not in header:
            raise ValueError(
                f"{self.path}: missing target column {self.target!r} (set by --data.init_args.target); "
                f"the header is {header}"
            )
        return len(header) - 1

    @property
    def n_inputs(self) -> int:
        """Input channels: every channel for M and MS, the target alone for S."""
        return self._channels() if self.features in ("M", "MS") else 1

    @property
    def n_outputs(self) -> int:
        """Output channels: every channel for M, the target alone for S and MS."""
        return self._channels() if self.features == "M" else 1

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        table = read_informer_csv(self.path, self.target)
        borders = split_borders(len(table.values), self.lookback, self.split)
        for name, (start, stop) in zip(("train", "val", "test"), borders):
            if stop - start < self.lookback + self.horizon:
                raise ValueError(
                    f"{self.path}: the {name} split has {stop - start} rows (rows {start}..{stop}), fewer than "
                    f"lookback + horizon = {self.lookback + self.horizon}"
                )
        train_start, train_stop = borders[0]
        self.mean = table.values[train_start:train_stop].mean(0)
        self.std = table.values[train_start:train_stop].std(0)
        self.std[self.std == 0] = 1.0  # a constant channel stays zero after centring
        scaled = (table.values - self.mean) / self.std
        self.dates, self.borders = table.dates, dict(zip(("train", "val", "test"), borders))
        n = len(table.columns)
        self.columns, self.dates = table.columns, table.dates
        self.borders = dict(zip(("train", "val", "test"), borders))
        self.input_columns = list(range(n)) if self.features in ("M", "MS") else [n - 1]
        self.output_columns = list(range(n)) if self.features == "M" else [n - 1]
        strides = {"train": self.train_stride, "val": self.val_stride, "test": 1}
        for name, (start, stop) in zip(("train", "val", "test"), borders):
            self.datasets[name] = ForecastWindows(scaled[start:stop], self.lookback, self.horizon,
                                                  self.input_columns, self.output_columns, strides[name])

    def window_dates(self, split: str, index: int) -> tuple[list[str], list[str]]:
        """(history, future): the CSV dates of window ``index`` of ``split``'s lookback rows and of the
        horizon rows its forecast covers (for writing forecasts with their timestamps)."""
        self.setup()
        if split not in self.datasets:
            raise ValueError(f"InformerDataModule.window_dates: split must be 'train', 'val' or 'test', got {split!r}")
        windows = self.datasets[split]
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(windows):
            raise ValueError(f"InformerDataModule.window_dates: index must be an int in [0, {len(windows)}), got {index!r}")
        first = self.borders[split][0] + index * windows.stride
        mid = first + self.lookback
        return self.dates[first:mid], self.dates[mid : mid + self.horizon]

    def inverse_transform(self, values: np.ndarray | torch.Tensor, which: Literal["inputs", "outputs"] = "outputs"):
        """Scaled values (..., channels) back to the CSV's units; ``which`` says whether the channels are the
        model's inputs or its outputs (they differ for S and MS)."""
        self.setup()
        columns = self.output_columns if which == "outputs" else self.input_columns
        if values.shape[-1] != len(columns):
            raise ValueError(f"InformerDataModule.inverse_transform: the last axis must have the {len(columns)} "
                             f"{which} channels, got shape {tuple(values.shape)}")
        mean, std = self.mean[columns], self.std[columns]
        if isinstance(values, torch.Tensor):
            return values * torch.as_tensor(std, dtype=values.dtype) + torch.as_tensor(mean, dtype=values.dtype)
        return values * std + mean
    def row_times(self, split: str) -> list[str]:
        """The `date` of each row of ``split``'s series (row r of its windows' rows), for forecasts' timestamps."""
        self.setup()
        start, stop = self.borders[split]
        return self.dates[start:stop]

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return ResumableDataLoader(self.datasets["train"], self.batch_size, shuffle=True,
                                   num_workers=self.num_workers, drop_last=self.train_drop_last)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return eval_loader(self.datasets["val"], self.batch_size, self.num_workers)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return eval_loader(self.datasets["test"], self.batch_size, self.num_workers)
