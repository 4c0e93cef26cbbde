"""S4 kernel generation: time and peak memory per Cauchy backend (H=256, N=64, L in 1K, 4K, 16K).

Times ``S4.kernel(L)`` (the Cauchy kernel + Woodbury + irfft; the layer built with l_max = L), forward
only and forward + backward (a random-weighted sum of the kernel), and prints each backend's time as
a ratio to the chunked PyTorch backend measured in the same way.

Peak memory: every (backend, L, mode) runs in its own fresh subprocess; after building the layer
and fixing C̃ we read the process's peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``),
run the measured calls, and report the growth of that peak: the extra memory the calls needed at
their worst moment (a high-water mark, so it includes the allocator's temporary buffers).

    python benchmarks/speed/s4_kernel.py            # writes benchmarks/speed/results/s4_kernel.md
    python benchmarks/speed/s4_kernel.py --lengths 1024 --backends cpu chunked
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
H, N = 256, 64
# The reference materialises (rows, N/2, L/2+1) complex numbers several times over; beyond this many
# entries per intermediate (2^27 complex64 = 1 GiB) it is not run on a shared 24 GiB machine.
REFERENCE_LIMIT = 2**27


def worker(backend: str, length: int, mode: str, repeats: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch

    from ssmzoo import S4

    torch.manual_seed(0)
    layer = S4(d_model=H, d_state=N, cauchy_backend=backend, l_max=length)
    weights = torch.randn(1, H, length)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    # One untimed call for every backend: keops compiles its formulas, the C++ extension loads (ninja checks its
    # build), the dispatcher probes the backend and the thread pool starts (about 0.3 s that were in cpu's time).
    warmup = 1
    for i in range(repeats + warmup):
        start = time.perf_counter()
        k, _ = layer.kernel(length)
        if mode == "fwd+bwd":
            (k * weights).sum().backward()
        if i >= warmup:
            times.append(time.perf_counter() - start)
        del k
        layer.zero_grad(set_to_none=True)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"ms": 1e3 * min(times), "peak_mb": (rss1 - rss0) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--backends", nargs="+", default=["reference", "chunked", "cpu", "keops"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/speed/results/s4_kernel.md")
    parser.add_argument("--worker", nargs=3, metavar=("BACKEND", "L", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.worker[2], args.repeats)))
        return

    sys.path.insert(0, str(ROOT))
    import os

    import torch

    from ssmzoo.ops import cauchy
    from ssmzoo.ops.dispatch import Request

    load_before = os.getloadavg()[0]
    usable = cauchy.dispatch.names("cpu")
    results: dict[tuple, dict | str] = {}
    for length in args.lengths:
        rows = 4 * H  # (1 + rank) x (channels + rank) Cauchy rows per channel for LegS (rank 1)
        numel = rows * (N // 2) * (length // 2 + 1)
        for backend in args.backends:
            for mode in ("fwd", "fwd+bwd"):
                if backend not in usable:
                    results[(backend, length, mode)] = "unavailable"
                    continue
                if backend == "reference" and numel > REFERENCE_LIMIT:
                    results[(backend, length, mode)] = "skipped (>1 GiB per intermediate)"
                    continue
                cmd = [sys.executable, __file__, "--worker", backend, str(length), mode, "--repeats", str(args.repeats)]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                results[(backend, length, mode)] = json.loads(lines[-1]) if proc.returncode == 0 and lines else (
                    f"failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
                print(backend, length, mode, results[(backend, length, mode)], flush=True)

    def cell(r, key, fmt):
        return fmt.format(r[key]) if isinstance(r, dict) else "—"

    header = (
        f"`python benchmarks/speed/s4_kernel.py` — {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, CPU. Time: best of "
        f"{args.repeats} call(s) after one warm-up call (keops compiles its formulas in it). Peak: growth "
        "of the process's peak RSS over the measured calls, one fresh subprocess per cell. "
        "Ratio: time / chunked's time (same L, same mode)."
    )
    auto = (
        f"`auto` on this machine: reference while rows·N/2·(L/2+1) <= {cauchy.MATERIALISE_LIMIT}, "
        f"else {cauchy.dispatch.choose('auto', Request(torch.device('cpu'), torch.complex64, grad=True, size=10**12)).name}; usable here: {', '.join(usable)}."
    )
    load = (
        f"Load average (1 min) before / after the run: {load_before:.1f} / {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores; on a shared machine the times are noisy, the peaks much less so."
    )
    lines = [
        "# S4 kernel generation (H=256, N=64, LegS, one channel)",
        "",
        header,
        "",
        auto,
        "",
        load,
        "",
        "| backend | L | fwd ms | fwd peak MB | fwd ratio | fwd+bwd ms | fwd+bwd peak MB | fwd+bwd ratio | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for length in args.lengths:
        for backend in args.backends:
            f, fb = results[(backend, length, "fwd")], results[(backend, length, "fwd+bwd")]
            ratios = []
            for mode, r in (("fwd", f), ("fwd+bwd", fb)):
                base = results.get(("chunked", length, mode))
                ratios.append(f"{r['ms'] / base['ms']:.2f}" if isinstance(r, dict) and isinstance(base, dict) else "—")
            note = f if isinstance(f, str) else (fb if isinstance(fb, str) else "")
            lines.append(
                f"| {backend} | {length} | {cell(f, 'ms', '{:.0f}')} | {cell(f, 'peak_mb', '{:.0f}')} | {ratios[0]} "
                f"| {cell(fb, 'ms', '{:.0f}')} | {cell(fb, 'peak_mb', '{:.0f}')} | {ratios[1]} | {note} |"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
