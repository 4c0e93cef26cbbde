"""Companion kernel k_l = cᵀAˡb: time against ℓ and d for the three methods, in one command:

    python benchmarks/speed/companion.py

Same process, same shapes, one thread; `heads` kernels at once, forward only, median of repeats.
The FFT / Sherman–Morrison method should grow near-linearly in d + ℓ; Krylov squaring costs O(d² ℓ)
work; the matrix-power oracle O(ℓ d³) is only run on the small sizes. Writes results/companion.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from ssmzoo.ops.companion import companion_kernel, companion_kernel_from_c_tilde

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def timed(method: str, heads: int, d: int, length: int, repeats: int) -> float:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(heads, d, generator=g) / d
    b, c = torch.randn(heads, d, generator=g), torch.randn(heads, d, generator=g)
    if method == "fft_learned_c_tilde":  # SpaceTime's parametrisation: c̃ is the parameter
        run = lambda: companion_kernel_from_c_tilde(a, b, c, length)
    else:  # "fft" also converts c to c̃ = c − (A^ℓ)ᵀc, O(d³ log ℓ)
        run = lambda: companion_kernel(a, b, c, length, method=method)
    run()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=os.path.join(RESULTS, "companion"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    sweeps = {
        "length": [(64, n) for n in (256, 1024, 4096, 16384)],
        "d_state": [(d, 1024) for d in (16, 64, 256, 1024, 4096)],
    }
    # sizes above which the slow methods are skipped: d·ℓ for the O(ℓ d³) oracle, d for the d³ ones
    reference_limit, cubic_limit = 64 * 1024, 256
    rows = []
    for sweep, shapes in sweeps.items():
        for d, length in shapes:
            row = {"sweep": sweep, "d": d, "length": length}
            for method in ("fft_learned_c_tilde", "fft", "krylov", "reference"):
                if (method == "reference" and d * length > reference_limit) or (
                    method in ("fft", "krylov") and d > cubic_limit
                ):
                    row[method] = None
                    continue
                row[method] = timed(method, args.heads, d, length, args.repeats)
            rows.append(row)
            print(json.dumps(row), flush=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"args": vars(args), "rows": rows}, f, indent=2)
    ms = lambda v: "—" if v is None else f"{1e3 * v:.2f}"
    with open(args.out + ".md", "w") as f:
        f.write(f"# Companion kernel, {args.heads} kernels, forward, 1 thread (ms, median of {args.repeats})\n\n")
        f.write(f"Command: `python benchmarks/speed/companion.py {' '.join(sys.argv[1:])}`\n\n")
        f.write("| d | ℓ | fft, learned c̃ | fft incl. c → c̃ | krylov | reference (matrix powers) "
                "| krylov / fft c̃ |\n|---|---|---|---|---|---|---|\n")
        for r in rows:
            ratio = "—" if r["krylov"] is None else f"{r['krylov'] / r['fft_learned_c_tilde']:.1f}×"
            f.write(f"| {r['d']} | {r['length']} | {ms(r['fft_learned_c_tilde'])} | {ms(r['fft'])} | {ms(r['krylov'])} "
                    f"| {ms(r['reference'])} | {ratio} |\n")
    print(f"wrote {args.out}.md")


if __name__ == "__main__":
    main()
