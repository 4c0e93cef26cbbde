"""Synthetic AR(p) series: x_t = Σ_{i=1..p} φ_i x_{t−i} + ε_t, ε_t ~ N(0, noise_std²).

Companion SSMs represent any AR(p) exactly; diagonal SSMs cannot (SpaceTime, PAPERS.md)."""

from __future__ import annotations

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from ..loader import ResumableDataLoader, check_loader_args, eval_loader
from .windows import ForecastWindows


def random_stable_ar(p: int, seed: int = 0, min_root: float = 0.5, max_root: float = 0.95) -> np.ndarray:
    """φ (p,) of a stable AR(p): the characteristic roots are drawn with moduli in [min_root, max_root]
    (complex ones in conjugate pairs), so the process is stationary."""
    if not isinstance(p, int) or p < 1:
        raise ValueError(f"random_stable_ar: p must be a positive int, got {p!r}")
    if not 0 < min_root <= max_root < 1:
        raise ValueError(f"random_stable_ar: need 0 < min_root <= max_root < 1, got {min_root}, {max_root}")
    rng = np.random.default_rng(seed)
    roots: list[complex] = []
    while len(roots) < p:
        r = rng.uniform(min_root, max_root)
        if p - len(roots) >= 2:
            angle = rng.uniform(0.05, np.pi - 0.05)
            roots += [r * np.exp(1j * angle), r * np.exp(-1j * angle)]
        else:
            roots.append(r * rng.choice([-1.0, 1.0]))
    poly = np.real(np.poly(roots))  # z^p + poly[1] z^{p−1} + ... ; x_t = −Σ poly[i] x_{t−i}
    return -poly[1:]


def generate_ar(phi: np.ndarray, length: int, noise_std: float = 1.0, seed: int = 0, burn_in: int = 500) -> np.ndarray:
    """x (length,) float64 following x_t = Σ φ_i x_{t−i} + ε_t, after a burn-in from zeros."""
    phi = np.asarray(phi, dtype=np.float64)
    if phi.ndim != 1 or phi.size < 1:
        raise ValueError(f"generate_ar: phi must be a non-empty 1-D array, got shape {phi.shape}")
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"generate_ar: length must be a positive int, got {length!r}")
    rng = np.random.default_rng(seed)
    p, total = phi.size, length + burn_in
    x = np.zeros(total + p)
    eps = rng.normal(0.0, noise_std, total)
    for t in range(total):
        x[p + t] = phi @ x[t : p + t][::-1] + eps[t]
    return x[p + burn_in :]


class ARDataModule(L.LightningDataModule):
    """Windows (x (lookback, 1), y (horizon, 1)) of one AR(p) series split 70/10/20 in time,
    z-scored with train statistics (like the Informer loader, so metrics are comparable).

    The arguments are checked here; the series is generated in ``setup`` (after which ``phi``, ``mean``,
    ``std`` and ``datasets`` are set).

    Args:
        p: the order; the coefficients are :func:`random_stable_ar` (p, seed).
        length: series length.
        lookback, horizon: window lengths.
        noise_std: innovation std.
        seed: seeds the coefficients and the noise.
        batch_size, train_stride: as in InformerDataModule.
        num_workers: DataLoader workers.
    """

    n_inputs = 1
    n_outputs = 1

    def __init__(self, p: int = 8, length: int = 6000, lookback: int = 64, horizon: int = 16,
                 noise_std: float = 1.0, seed: int = 0, batch_size: int = 64, train_stride: int = 1,
                 num_workers: int = 0) -> None:
        super().__init__()
        for arg, v in (("p", p), ("length", length), ("lookback", lookback), ("horizon", horizon),
                       ("train_stride", train_stride)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"ARDataModule: {arg} must be a positive int, got {v!r}")
        if not isinstance(noise_std, (int, float)) or isinstance(noise_std, bool) or not noise_std > 0:
            raise ValueError(f"ARDataModule: noise_std must be a positive number, got {noise_std!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"ARDataModule: seed must be an int, got {seed!r}")
        check_loader_args("ARDataModule", batch_size, num_workers)
        # later splits start lookback rows early, so each needs horizon rows of its own; train needs a window
        n_train, n_test = int(length * 0.7), int(length * 0.2)
        n_val = length - n_train - n_test
        if n_train < lookback + horizon or min(n_val, n_test) < horizon:
            raise ValueError(
                f"ARDataModule: length={length} splits into {n_train} / {n_val} / {n_test} rows (70/10/20%); "
                f"train needs lookback + horizon = {lookback + horizon} rows and val and test need "
                f"horizon = {horizon} each; increase length"
            )
        self.p, self.length, self.lookback, self.horizon = p, length, lookback, horizon
        self.noise_std, self.seed, self.batch_size = noise_std, seed, batch_size
        self.train_stride, self.num_workers = train_stride, num_workers
        self.datasets: dict[str, ForecastWindows] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.phi = random_stable_ar(self.p, self.seed)
        series = generate_ar(self.phi, self.length, self.noise_std, self.seed + 1)
        n_train, n_test = int(self.length * 0.7), int(self.length * 0.2)
        stops = [n_train, self.length - n_test, self.length]
        starts = [0, stops[0] - self.lookback, stops[1] - self.lookback]
        self.mean, self.std = series[:n_train].mean(), series[:n_train].std()
        scaled = ((series - self.mean) / self.std)[:, None]
        strides = {"train": self.train_stride, "val": 1, "test": 1}
        self.split_starts = dict(zip(("train", "val", "test"), starts))
        self.datasets = {
            name: ForecastWindows(scaled[a:b], self.lookback, self.horizon, [0], [0], strides[name])
            for name, a, b in zip(("train", "val", "test"), starts, stops)
        }

    def row_times(self, split: str) -> list[int]:
        """The time step (index in the generated series) of each row of ``split``'s series."""
        self.setup()
        start = self.split_starts[split]
        return list(range(start, start + len(self.datasets[split].values)))

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return ResumableDataLoader(self.datasets["train"], self.batch_size, shuffle=True,
                                   num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return eval_loader(self.datasets["val"], self.batch_size, self.num_workers)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return eval_loader(self.datasets["test"], self.batch_size, self.num_workers)
