"""Mamba-3 layer on CPU, forward + backward, against our Mamba-2 layer at the same width.

Both layers: batch 4, d_model 128, expand 2 (d_inner 256), 8 heads × headdim 32, d_state 64, one group, float32,
L 4,096 (the shape of benchmarks/speed/mamba2.py). Mamba-2 as there (d_conv 4, chunk 256, its C++ SSD kernels);
Mamba-3 SISO with mamba-ssm's defaults otherwise (half of N rotating, chunk 64: its recommendation for SISO) and,
in a second row, MIMO of rank 4 (chunk 16 = 64 / rank, as mamba-ssm recommends), both on our C++ backend.
The Mamba-3 paper reports speed comparable to Mamba-2 with fused GPU kernels; this measures our CPU kernels.

Time: one subprocess times every layer *interleaved* (the order alternating each repetition; median of --reps
after a warm-up, spread max/min kept), as process CPU time and wall time, at --threads torch threads (default
1). Memory: one fresh subprocess per layer reads ``ru_maxrss`` after setup (layer, input, a tiny warm-up call
that loads the kernels) and after one forward + backward, and reports the growth.

    python benchmarks/speed/mamba3.py                     # -> results/mamba3.md
    python benchmarks/speed/mamba3.py --reps 3 --lengths 1024 4096
    python benchmarks/speed/mamba3.py --quick             # tiny shapes: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from _timing import interleaved, run_worker  # beside this file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # this checkout's ssmzoo, not an installed copy
RESULTS = Path(__file__).parent / "results" / "mamba3.md"

SHAPE = dict(batch=4, d_model=128, headdim=32, d_state=64)
QUICK_SHAPE = dict(batch=1, d_model=16, headdim=8, d_state=8)
LENGTHS, QUICK_LENGTHS = [4096], [128]
# name -> (layer, its arguments besides d_model, headdim, d_state): Mamba-2 first, the baseline of the ratios.
LAYERS = {
    "mamba2": ("Mamba2", dict(d_conv=4, expand=2, ngroups=1, chunk_size=256)),
    "mamba3": ("Mamba3", dict(expand=2, ngroups=1, chunk_size=64)),
    "mamba3_mimo4": ("Mamba3", dict(expand=2, ngroups=1, is_mimo=True, mimo_rank=4, chunk_size=16)),
}


def build(quick: bool, name: str, length: int) -> Callable[[], None]:
    """One forward + backward of layer ``name`` at ``length``, as a zero-argument callable."""
    import torch

    import ssmzoo

    s = QUICK_SHAPE if quick else SHAPE
    cls, args = LAYERS[name]
    torch.manual_seed(0)
    layer = getattr(ssmzoo, cls)(s["d_model"], d_state=s["d_state"], headdim=s["headdim"], **args).train()
    x = torch.randn(s["batch"], length, s["d_model"], generator=torch.Generator().manual_seed(1))

    def run() -> None:
        u = x.detach().requires_grad_()
        layer(u).sum().backward()

    return run


def worker_time(quick: bool, length: int, reps: int) -> dict:
    samples = interleaved({name: build(quick, name, length) for name in LAYERS}, reps)
    return {name: {k: {"median": statistics.median(v), "spread": max(v) / min(v) - 1} for k, v in s.items()}
            for name, s in samples.items()}


def worker_memory(quick: bool, length: int, name: str) -> dict:
    build(quick, name, 8)()  # loads the kernels (and probes the backends) before the baseline is read
    run = build(quick, name, length)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run()
    return {"peak_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}


def _subprocess(args: list[str], threads: int, timeout: float) -> dict:
    return run_worker(__file__, args, timeout, threads)


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def run(quick: bool, lengths: list[int], reps: int, threads: int, timeout: float) -> list[str]:
    """The table's lines: per length and layer, CPU and wall seconds, the time relative to Mamba-2, peak memory."""
    flag = ["--quick"] if quick else []
    lines = ["| L | layer | CPU s | wall s | CPU time / Mamba-2's | peak MiB (per 1K tokens) |",
             "|---|---|---|---|---|---|"]
    for length in lengths:
        timing = _subprocess(["--worker", "time", str(length), "--reps", str(reps), *flag], threads, timeout)
        for name in LAYERS:
            memory = _subprocess(["--worker", "memory", str(length), name, *flag], threads, timeout)
            t = timing.get(name)
            if t is None:
                lines.append(f"| {length} | {name} | error: {timing.get('error')} | | | |")
                continue

            def cell(clock: str, t=t) -> str:
                return f"{t[clock]['median']:.3f}" + (" ⚠" if t[clock]["spread"] > 0.2 else "")

            ratio = t["cpu"]["median"] / timing["mamba2"]["cpu"]["median"]
            peak = (f"{memory['peak_mib']:.0f} ({memory['peak_mib'] * 1024 / length:.0f})" if "peak_mib" in memory
                    else memory.get("error", "—"))
            lines.append(f"| {length} | {name} | {cell('cpu')} | {cell('wall')} | {ratio:.2f}× | {peak} |")
            print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes: a smoke test, not a result")
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="default 4096")
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions per layer (5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every subprocess")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per subprocess")
    parser.add_argument("--out", type=Path, default=None, help="default results/mamba3.md (not written with --quick)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:  # a subprocess: the timing of one length, or the memory of one layer
        import torch

        warnings.filterwarnings("ignore")
        torch.set_num_threads(args.threads)
        kind, length, *rest = args.worker
        out = worker_time(args.quick, int(length), args.reps) if kind == "time" else \
            worker_memory(args.quick, int(length), rest[0])
        print(json.dumps(out))
        return

    import torch

    load_before, started = _load(), time.time()
    lines = run(args.quick, args.lengths or (QUICK_LENGTHS if args.quick else LENGTHS), args.reps, args.threads,
                args.timeout)
    s = QUICK_SHAPE if args.quick else SHAPE
    text = "\n".join([
        "# Mamba-3 layer vs Mamba-2 layer, CPU, same width" + (" — QUICK smoke run, not a result" if args.quick else ""),
        "",
        f"batch {s['batch']}, d_model {s['d_model']}, expand 2, {2 * s['d_model'] // s['headdim']} heads × headdim "
        f"{s['headdim']}, d_state {s['d_state']}, 1 group, float32, forward + backward; Mamba-2: d_conv 4, chunk 256; "
        "Mamba-3 SISO: chunk 64; Mamba-3 MIMO rank 4: chunk 16. torch "
        f"{torch.__version__}; {args.threads} torch thread(s) of {os.cpu_count()} cores.",
        f"Median of {args.reps} interleaved repetitions after a warm-up (⚠: spread max/min above 20%). Peak: "
        "ru_maxrss growth over one forward + backward, one fresh process per cell.",
        "",
        *lines,
        "",
        f"Load average (1/5/15 min) before: {load_before}; after: {_load()}; the run took "
        f"{(time.time() - started) / 60:.1f} min.",
        "",
        "Command: `python benchmarks/speed/mamba3.py " + " ".join(sys.argv[1:]) + "`",
    ]) + "\n"
    print(text)
    if not args.quick:
        out = args.out or RESULTS
        tmp = out.with_name(out.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)


if __name__ == "__main__":
    main()
