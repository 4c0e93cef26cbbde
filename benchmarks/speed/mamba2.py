"""Mamba-2 layer on CPU, forward + backward: ssmzoo's ``Mamba2`` against transformers' ``Mamba2Mixer`` (its pure
PyTorch path, the one it takes without mamba-ssm's CUDA kernels), and against a floor.

Same weights (ours copied into theirs: the parameter names coincide), same input, same shapes: batch 4, d_model
128, 8 heads × headdim 32 (expand 2), d_state 64, one group, d_conv 4, chunk 256, float32, at L 1K, 4K and 16K.
The outputs are compared before timing, so a speed-up never comes from computing something else. The floor is
the part no Mamba-2 layer avoids: in_proj and out_proj of the same shapes, forward and backward, alone.

Time: one subprocess per length times ours, the peer and the floor *interleaved* (median of --reps after a
warm-up; the spread max/min is kept), both as process CPU time (what a busy shared machine disturbs least) and
wall time, at --threads torch threads (default 1). Memory: one fresh subprocess per (length, implementation)
reads ``ru_maxrss`` after setup (layer, input, a tiny warm-up call that loads the kernels) and after one
forward + backward, and reports the growth: the run's high-water mark above setup, and per 1K tokens of L.

    python benchmarks/speed/mamba2.py                          # L 1K, 4K, 16K -> results/mamba2.md
    python benchmarks/speed/mamba2.py --lengths 4096 --reps 3
    python benchmarks/speed/mamba2.py --quick                  # tiny shapes: checks that it runs

``run(quick)`` returns the table's rows as dicts, and ``build_mamba2(quick, impl)`` the 4K workload as a
zero-argument callable for impl in ("ours", "peer", "floor"), for ``benchmarks/speed/all.py``.
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
RESULTS = Path(__file__).parent / "results" / "mamba2.md"

SHAPE = dict(batch=4, d_model=128, heads=8, headdim=32, d_state=64, chunk=256)
LENGTHS = [1024, 4096, 16384]
QUICK_SHAPE = dict(batch=1, d_model=16, heads=2, headdim=16, d_state=8, chunk=16)
QUICK_LENGTHS = [64, 256]
IMPLS = ("ours", "peer", "floor")


class PeerMissing(Exception):
    """transformers is not installed: the peer's cells say so."""


def _shape(quick: bool) -> dict:
    return QUICK_SHAPE if quick else SHAPE


def _layers(quick: bool):
    """(ours, the peer or None) with the same weights, in training mode."""
    import torch

    from ssmzoo import Mamba2

    s = _shape(quick)
    torch.manual_seed(0)
    ours = Mamba2(s["d_model"], d_state=s["d_state"], d_conv=4, expand=2, headdim=s["headdim"], ngroups=1,
                  chunk_size=s["chunk"])
    try:
        from transformers import Mamba2Config
        from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer
    except ImportError:
        return ours.train(), None
    config = Mamba2Config(hidden_size=s["d_model"], num_heads=s["heads"], head_dim=s["headdim"], state_size=s["d_state"],
                          n_groups=1, expand=2, conv_kernel=4, chunk_size=s["chunk"], num_hidden_layers=1)
    peer = Mamba2Mixer(config, layer_idx=0)
    peer.load_state_dict(ours.state_dict())
    return ours.train(), peer.train()


def _input(quick: bool, length: int):
    import torch

    s = _shape(quick)
    return torch.randn(s["batch"], length, s["d_model"], generator=torch.Generator().manual_seed(1))


def build(quick: bool, impl: str, length: int) -> Callable[[], None]:
    """One forward + backward of ``impl`` at ``length``, as a zero-argument callable."""
    import torch.nn.functional as F

    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    ours, peer = _layers(quick)
    x = _input(quick, length)
    if impl == "peer" and peer is None:
        raise PeerMissing("transformers not installed (pip install transformers)")
    if impl == "floor":
        w_in = ours.in_proj.weight.detach().clone().requires_grad_()
        w_out = ours.out_proj.weight.detach().clone().requires_grad_()

        def layer(u):  # the two projections' products, forward and backward, and nothing else
            return F.linear(F.linear(u, w_in)[..., : ours.d_inner], w_out)
    else:
        layer = ours if impl == "ours" else peer

    def run() -> None:
        u = x.detach().requires_grad_()
        layer(u).sum().backward()

    return run


def build_mamba2(quick: bool, impl: str) -> Callable[[], None]:
    """The 4K workload (quick: the tiny one) for benchmarks/speed/all.py."""
    return build(quick, impl, QUICK_LENGTHS[-1] if quick else 4096)


def _agree(quick: bool, length: int) -> float | None:
    """Relative difference of ours and the peer's outputs (None without the peer)."""
    import torch

    ours, peer = _layers(quick)
    if peer is None:
        return None
    x = _input(quick, length)
    with torch.no_grad():
        a, b = ours(x), peer(x)
    return float((a - b).abs().max() / b.abs().max())


# -- workers (one subprocess each) ----------------------------------------------------------------------
def worker_time(quick: bool, length: int, reps: int) -> dict:
    difference = _agree(quick, length)
    if difference is not None and difference > 1e-3:
        return {"error": f"ours and the peer disagree at L={length}: relative difference {difference:.1e}"}
    runs, out = {}, {"difference": difference}
    for impl in IMPLS:
        try:
            runs[impl] = build(quick, impl, length)
        except PeerMissing as e:
            out[impl] = {"missing": str(e)}
    for impl, s in interleaved(runs, reps).items():
        out[impl] = {k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in s.items()}
    return out


def worker_memory(quick: bool, length: int, impl: str) -> dict:
    try:
        build(quick, impl, 8)()  # loads the kernels (and probes the backends) before the baseline is read
        run = build(quick, impl, length)
    except PeerMissing as e:
        return {"missing": str(e)}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mib": (after - before) / 1024}


def _subprocess(args: list[str], threads: int, timeout: float) -> dict:
    return run_worker(__file__, args, timeout, threads)


# -- the table ---------------------------------------------------------------------------------------------
def run(quick: bool, lengths: list[int] | None = None, reps: int | None = None, threads: int = 1,
        timeout: float = 3600) -> list[dict]:
    """One row per length: ours, the peer and the floor (CPU and wall seconds, medians), the ratios peer / ours,
    and each implementation's peak memory growth (MiB, and MiB per 1K tokens of L)."""
    lengths = lengths or (QUICK_LENGTHS if quick else LENGTHS)
    reps = reps or (2 if quick else 5)
    flag = ["--quick"] if quick else []
    rows = []
    for length in lengths:
        timing = _subprocess(["--worker", "time", str(length), "--reps", str(reps), *flag], threads, timeout)
        memory = {impl: _subprocess(["--worker", "memory", str(length), impl, *flag], threads, timeout)
                  for impl in ("ours", "peer")}
        row: dict = {"L": length, "threads": threads, "reps": reps}
        if "error" in timing:
            row["error"] = timing["error"]
        row["difference"] = timing.get("difference")
        for impl in IMPLS:
            t = timing.get(impl, {})
            for clock in ("cpu", "wall"):
                if clock in t:
                    row[f"{impl}_{clock}_s"] = t[clock]["median"]
                    row[f"{impl}_{clock}_spread"] = t[clock]["max"] / t[clock]["min"] - 1
            if "missing" in t:
                row[f"{impl}_missing"] = t["missing"]
        for clock in ("cpu", "wall"):
            if f"ours_{clock}_s" in row and f"peer_{clock}_s" in row:
                row[f"ratio_{clock}"] = row[f"peer_{clock}_s"] / row[f"ours_{clock}_s"]
        for impl, m in memory.items():
            if "peak_mib" in m:
                row[f"{impl}_peak_mib"] = m["peak_mib"]
                row[f"{impl}_mib_per_1k"] = m["peak_mib"] * 1024 / length
            else:
                row[f"{impl}_peak_mib"] = None
                row[f"{impl}_memory_error"] = m.get("error") or m.get("missing")
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _seconds(row: dict, key: str) -> str:
    if key not in row:
        return "—"
    flag = " ⚠" if row.get(key.replace("_s", "_spread"), 0) > 0.2 else ""
    return f"{row[key]:.3f}{flag}"


def table(rows: list[dict]) -> list[str]:
    lines = ["| L | ours CPU s | peer CPU s | floor CPU s | peer / ours (CPU) | ours wall s | peer wall s | "
             "peer / ours (wall) | ours peak MiB (per 1K tokens) | peer peak MiB (per 1K tokens) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mem = [f"{r[f'{i}_peak_mib']:.0f} ({r[f'{i}_mib_per_1k']:.0f})" if r.get(f"{i}_peak_mib") is not None
               else r.get(f"{i}_memory_error") or "—" for i in ("ours", "peer")]
        ratio = [f"{r[f'ratio_{c}']:.1f}×" if f"ratio_{c}" in r else "—" for c in ("cpu", "wall")]
        lines.append(f"| {r['L']} | {_seconds(r, 'ours_cpu_s')} | {_seconds(r, 'peer_cpu_s')} | "
                     f"{_seconds(r, 'floor_cpu_s')} | {ratio[0]} | {_seconds(r, 'ours_wall_s')} | "
                     f"{_seconds(r, 'peer_wall_s')} | {ratio[1]} | {mem[0]} | {mem[1]} |"
                     + (f" error: {r['error']}" if "error" in r else ""))
    return lines


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes: a smoke test, not a result")
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="default 1024 4096 16384")
    parser.add_argument("--reps", type=int, default=None, help="interleaved repetitions per implementation (5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every subprocess")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per subprocess")
    parser.add_argument("--out", type=Path, default=None, help="default results/mamba2.md (not written with --quick)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:  # a subprocess: the timing of one length, or the memory of one implementation
        import torch

        warnings.filterwarnings("ignore")
        torch.set_num_threads(args.threads)
        kind, length, *rest = args.worker
        if kind == "time":
            out = worker_time(args.quick, int(length), args.reps or 5)
        else:
            out = worker_memory(args.quick, int(length), rest[0])
        print(json.dumps(out))
        return

    import torch

    load_before, started = _load(), time.time()
    rows = run(args.quick, args.lengths, args.reps, args.threads, args.timeout)
    minutes = (time.time() - started) / 60
    try:
        import transformers

        peer_version = transformers.__version__
    except ImportError:
        peer_version = "not installed"
    s = _shape(args.quick)
    command = "python benchmarks/speed/mamba2.py " + " ".join(sys.argv[1:])
    lines = [
        "# Mamba-2 layer, CPU: ssmzoo vs transformers' Mamba2Mixer (torch path)"
        + (" — QUICK smoke run, not a result" if args.quick else ""),
        "",
        f"batch {s['batch']}, d_model {s['d_model']}, {s['heads']} heads × headdim {s['headdim']}, d_state "
        f"{s['d_state']}, 1 group, d_conv 4, chunk {s['chunk']}, float32, forward + backward; torch {torch.__version__}, "
        f"transformers {peer_version}; {args.threads} torch thread(s) of {os.cpu_count()} cores.",
        f"Median of {rows[0]['reps'] if rows else '?'} interleaved repetitions after a warm-up (⚠: spread max/min "
        "above 20%, not yet a result). Floor: in_proj and out_proj alone. Peak: ru_maxrss growth over one "
        "forward + backward, one fresh process per cell.",
        "",
        *table(rows),
        "",
        f"Load average (1/5/15 min) before: {load_before}; after: {_load()}; the run took {minutes:.1f} min.",
        "",
        f"Command: `{command.strip()}`",
    ]
    print("\n".join(lines))
    out = args.out or (None if args.quick else RESULTS)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
        print(f"written to {out}")


if __name__ == "__main__":
    main()
