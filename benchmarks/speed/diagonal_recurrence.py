"""Diagonal recurrence speed on CPU: our backends (the C++ kernel ``cpu``, the PyTorch parallel scan ``scan``)
on the shapes of an S5 / LRU layer in the mini-LRA (batch 16, 32 complex states per direction, complex64),
forward+backward, at several lengths. Outputs and gradients are compared first, so a speed-up never comes from
computing something else; repetitions are interleaved across backends and the median process CPU time is
reported (the machine may be shared; CPU time is what a busy machine disturbs least). No peer: the S5 and LRU
authors' code is JAX.

    python benchmarks/speed/diagonal_recurrence.py [--lengths 1024 4096] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's ssmzoo, not an installed one

import torch

from ssmzoo.ops.diagonal_recurrence import diagonal_recurrence

RESULTS = Path(__file__).parent / "results" / "diagonal_recurrence.md"
BACKENDS = ("cpu", "scan")


def inputs(length: int, batch: int = 16, dim: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.complex(torch.randn(batch, length, dim, generator=g), torch.randn(batch, length, dim, generator=g))
    decay = torch.polar(torch.rand(dim, generator=g) * 0.1 + 0.9, torch.randn(dim, generator=g))
    return x, decay


def fwd_bwd(backend: str, x: torch.Tensor, decay: torch.Tensor) -> list[torch.Tensor]:
    x, decay = x.detach().requires_grad_(), decay.detach().requires_grad_()
    h = diagonal_recurrence(x, decay, backend=backend)
    torch.view_as_real(h).sum().backward()
    return [h.detach(), x.grad, decay.grad]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = ["| length | " + " | ".join(f"{b} (ms CPU)" for b in BACKENDS) + " | scan / cpu |", "|---|---|---|---|"]
    for length in args.lengths:
        x, decay = inputs(length)
        want = fwd_bwd("reference" if length <= 1024 else "scan", x, decay)
        for b in BACKENDS:
            for got, ref in zip(fwd_bwd(b, x, decay), want):
                torch.testing.assert_close(got, ref, rtol=2e-3, atol=2e-3)
        times: dict[str, list[float]] = {b: [] for b in BACKENDS}
        for r in range(args.repeats):
            for b in BACKENDS if r % 2 == 0 else reversed(BACKENDS):
                start = time.process_time()
                fwd_bwd(b, x, decay)
                times[b].append(time.process_time() - start)
        med = {b: statistics.median(t) * 1e3 for b, t in times.items()}
        lines.append(f"| {length} | " + " | ".join(f"{med[b]:.1f}" for b in BACKENDS) + f" | {med['scan'] / med['cpu']:.1f}x |")
    load = os.getloadavg()[0]
    text = (f"Forward+backward, batch 16, 32 complex64 channels, constant decay; {args.threads} thread(s), median of "
            f"{args.repeats}; 1-minute load {load:.1f} on {os.cpu_count()} cores when it finished.\n\n" + "\n".join(lines) + "\n")
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text("`python benchmarks/speed/diagonal_recurrence.py`\n\n" + text)
    tmp.replace(RESULTS)


if __name__ == "__main__":
    main()
