"""Selective scan speed on CPU: our backends against mambapy's pscan-based selective scan.

Same shapes for all (batch 4, D = 256, N = 16: Mamba with d_model 128), forward and forward+backward.
Repetitions are interleaved across implementations and the median is reported (the machine is
shared); ratios are mambapy's time over ours, from this one run.

    python benchmarks/speed/selective_scan.py [--lengths 1024 4096] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's ssmzoo, not an installed one

import torch
import torch.nn.functional as F
from einops import rearrange

from ssmzoo.ops.dispatch import Request
from ssmzoo.ops.selective_scan import dispatch, selective_scan

RESULTS = Path(__file__).parent / "results" / "selective_scan.md"


def make_inputs(batch: int, d_inner: int, d_state: int, length: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "u": torch.randn(batch, d_inner, length, generator=g),
        "delta": torch.randn(batch, d_inner, length, generator=g) * 0.5 - 1.0,
        "A": -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1),  # S4D-real init
        "B": torch.randn(batch, d_state, length, generator=g),
        "C": torch.randn(batch, d_state, length, generator=g),
        "D": torch.ones(d_inner),
    }


def ours(backend: str):
    def run(x: dict) -> torch.Tensor:
        return selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], delta_softplus=True,
                              backend=backend)

    return run


def mambapy_layout(x: dict) -> dict:
    """mambapy's own layouts (batch, L, D) / (batch, L, N), prepared outside the timed region."""
    return {"u": rearrange(x["u"], "b d l -> b l d").contiguous(),
                "delta": rearrange(x["delta"], "b d l -> b l d").contiguous(), "A": x["A"],
                "B": rearrange(x["B"], "b n l -> b l n").contiguous(),
                "C": rearrange(x["C"], "b n l -> b l n").contiguous(), "D": x["D"]}


def mambapy_scan(x: dict) -> torch.Tensor:
    from mambapy.mamba import MambaBlock

    # MambaBlock.selective_scan does not use self; softplus is applied before it, as in MambaBlock.ssm.
    return MambaBlock.selective_scan(None, x["u"], F.softplus(x["delta"]), x["A"], x["B"], x["C"], x["D"])


def time_once(fn, x: dict, backward: bool) -> float:
    leaves = {k: v.detach().clone().requires_grad_(backward) for k, v in x.items()}
    start = time.perf_counter()
    y = fn(leaves)
    if backward:
        y.sum().backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--d-inner", type=int, default=256)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared machine, OpenMP barriers of many small "
                             "ops stall under oversubscription, which would distort the ratios)")
    parser.add_argument("--reference-max-length", type=int, default=1024,
                        help="skip the (slow, sequential Python) reference above this length")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    candidates = {name: ours(name) for name in ("cpu", "chunked", "reference") if name in dispatch.names("cpu")}
    try:
        import mambapy.pscan  # noqa: F401

        candidates["mambapy"] = mambapy_scan
    except ImportError:
        print("mambapy is not installed (pip install mambapy): timing ours only")
    lines = [
        "# Selective scan, CPU",
        "",
        f"batch {args.batch}, D {args.d_inner}, N {args.d_state}, float32, delta_softplus, D skip; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.repeats} interleaved "
        "repetitions; `auto` picks " + f"`{dispatch.choose('auto', Request(torch.device('cpu'), torch.float32, grad=True)).name}`.",
        "",
        "| L | pass | " + " | ".join(f"{n} (ms)" for n in candidates) + " | "
        + " | ".join(f"mambapy / {n}" for n in candidates if n != "mambapy") + " |",
        "|---|---|" + "---|" * (2 * len(candidates) - ("mambapy" in candidates)),
    ]
    for length in args.lengths:
        x = make_inputs(args.batch, args.d_inner, args.d_state, length)
        layouts = {name: (mambapy_layout(x) if name == "mambapy" else x) for name in candidates}
        names = [n for n in candidates if not (n == "reference" and length > args.reference_max_length)]
        for backward in (False, True):
            times: dict[str, list[float]] = {n: [] for n in names}
            for n in names:  # warm-up (builds, allocator)
                time_once(candidates[n], layouts[n], backward)
            for _ in range(args.repeats):
                for n in names:
                    times[n].append(time_once(candidates[n], layouts[n], backward))
            med = {n: statistics.median(t) * 1e3 for n, t in times.items()}
            cells = [f"{med[n]:.1f}" if n in med else "–" for n in candidates]
            ratios = [f"{med['mambapy'] / med[n]:.1f}×" if n in med and "mambapy" in med else "–"
                      for n in candidates if n != "mambapy"]
            row = f"| {length} | {'fwd+bwd' if backward else 'fwd'} | " + " | ".join(cells + ratios) + " |"
            print(row, flush=True)
            lines.append(row)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/speed/selective_scan.py " + " ".join(sys.argv[1:])
    RESULTS.write_text("\n".join(lines) + f"\n\nReproduce: `{command.strip()}`\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
