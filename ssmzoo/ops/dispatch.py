"""One dispatch for every op: a readable reference plus fast backends, chosen per device.

``backend="auto"`` picks the first backend, in the op's preference order, that supports the input's
device, is available (importable / compiled) and has passed a tiny probe run on that device type;
an importable but broken backend is never chosen. ``SSMZOO_BACKEND`` sets the default choice for
every op that has a backend of that name.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

BACKEND_NAMES = ("auto", "reference", "chunked", "cpp", "triton", "cuda", "keops", "mamba_ssm")


@dataclass
class Backend:
    name: str
    fn: Callable
    devices: tuple[str, ...]  # device types: "cpu", "cuda"
    available: Callable[[], bool] = lambda: True
    # A tiny run on the given device that raises if the backend is broken there.
    probe: Callable[[torch.device], None] | None = None


@dataclass
class Dispatcher:
    op: str
    backends: dict[str, Backend] = field(default_factory=dict)
    _probed: dict[tuple[str, str], bool] = field(default_factory=dict)

    def add(self, backend: Backend) -> Backend:
        if backend.name not in BACKEND_NAMES:
            raise ValueError(f"{self.op}: backend name {backend.name!r} is not one of {BACKEND_NAMES}")
        self.backends[backend.name] = backend
        return backend

    def usable(self, name: str, device: torch.device) -> bool:
        """True when backend ``name`` exists, supports ``device``, is available and passed its probe."""
        b = self.backends.get(name)
        if b is None or device.type not in b.devices:
            return False
        key = (name, device.type)
        if key not in self._probed:
            ok = False
            try:
                ok = bool(b.available())
                if ok and b.probe is not None:
                    b.probe(device)
            except Exception as e:  # a broken optional backend must only cost a warning
                warnings.warn(f"ssmzoo: {self.op} backend {name!r} failed its probe on {device.type}: {e}", stacklevel=3)
                ok = False
            self._probed[key] = ok
        return self._probed[key]

    def select(self, backend: str | None, device: torch.device) -> Backend:
        if backend is None:
            env = os.environ.get("SSMZOO_BACKEND", "auto")
            backend = env if env in self.backends else "auto"
        if backend == "auto":
            for name in self.backends:  # insertion order is the preference order
                if self.usable(name, device):
                    return self.backends[name]
            raise RuntimeError(f"{self.op}: no backend works on {device.type}")
        if backend not in self.backends:
            raise ValueError(
                f"{self.op}: unknown backend {backend!r}; this op has: auto, {', '.join(self.backends)}"
            )
        if not self.usable(backend, device):
            b = self.backends[backend]
            why = (
                f"it runs on {', '.join(b.devices)} only" if device.type not in b.devices
                else "it is not available or failed its probe on this machine"
            )
            raise ValueError(f"{self.op}: backend {backend!r} cannot run on {device.type}: {why}")
        return self.backends[backend]

    def names(self, device: torch.device | str = "cpu") -> list[str]:
        """The backends usable on ``device`` (probing them if needed), in preference order."""
        device = torch.device(device)
        return [n for n in self.backends if self.usable(n, device)]
