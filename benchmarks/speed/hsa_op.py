"""HSA op forward+backward: time and peak memory per backend vs full causal attention (SDPA).

Shapes (the HSA issue): batch 1, 8 heads × 64 (no grouping), chunk size S = 64, top-K = 8,
stick-breaking, random inputs; L in 4K, 16K, 64K. The peer is
``torch.nn.functional.scaled_dot_product_attention(is_causal=True)`` on the same q, k, v. A run is the
op on fresh leaves, then ``backward`` of a random-weighted sum of its output; the time is the minimum
over ``--repeats`` runs after one warm-up run.

Peak memory: every (impl, L) runs in its own fresh subprocess; after making the inputs we read the
process's peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), run, and report the
growth of that peak (a high-water mark: it includes the allocator's temporary buffers).

    python benchmarks/speed/hsa_op.py                   # writes benchmarks/speed/results/hsa_op.md
    python benchmarks/speed/hsa_op.py --lengths 4096 --impls chunked sdpa
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEADS, D, S, K = 8, 64, 64, 8


def worker(impl: str, length: int, repeats: int, threads: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch
    import torch.nn.functional as F

    from ssmzoo.ops.hsa import hsa

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, length, HEADS, D, generator=g) for _ in range(3))
    landmarks = torch.randn(1, -(-length // S), HEADS, D, generator=g)
    weights = torch.randn(1, length, HEADS, D, generator=g)

    def run() -> None:
        leaves = [t.clone().requires_grad_() for t in (q, k, v, landmarks)]
        if impl == "sdpa":
            qq, kk, vv = (t.transpose(1, 2) for t in leaves[:3])
            out = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True).transpose(1, 2)
        else:
            out = hsa(*leaves, chunk_size=S, top_k=K, combine="stick_breaking", backend=impl)
        (out * weights).sum().backward()

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, cpu_times = [], []
    for i in range(repeats + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        run()
        if i > 0:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"s": min(times), "cpu_s": min(cpu_times), "peak_mb": (rss1 - rss0) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--impls", nargs="+", default=["cpu", "chunked", "sdpa"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sdpa-max", type=int, default=16384, help="longest L to run SDPA at (it is L²)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/speed/results/hsa_op.md")
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "L"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.repeats, args.threads)))
        return

    import torch

    load_before = os.getloadavg()
    rows = []
    for length in args.lengths:
        row = {"L": length}
        for impl in args.impls:
            if impl == "sdpa" and length > args.sdpa_max:
                continue
            cmd = [sys.executable, __file__, "--worker", impl, str(length), "--repeats", str(args.repeats),
                   "--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"{impl} L={length} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            row[impl] = json.loads(done.stdout.strip().splitlines()[-1])
            r = row[impl]
            print(f"L={length:>6} {impl:>8}: {r['s']:7.2f} s  cpu {r['cpu_s']:7.2f} s  peak +{r['peak_mb']:7.0f} MB",
                  flush=True)
        rows.append(row)
    load_after = os.getloadavg()

    impls = [i for i in args.impls if any(i in r for r in rows)]
    lines = [
        "# HSA op: forward + backward vs causal SDPA",
        "",
        f"batch 1, {HEADS} heads × {D}, S = {S}, K = {K}, stick-breaking, {args.threads} threads, "
        f"min of {args.repeats} after a warm-up; torch {torch.__version__}, {platform.processor() or platform.machine()}.",
        f"Load average (1/5/15 min) before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
        f"after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}.",
        "",
        "`python benchmarks/speed/hsa_op.py " + " ".join(sys.argv[1:]) + "`",
        "",
        "Wall seconds depend on the machine's load; CPU seconds (this process, all threads) much less so.",
        "`SDPA / x` is SDPA's time over backend x's, wall and CPU.",
        "",
    ]
    hsa_impls = [i for i in impls if i != "sdpa"]
    header = ["L"] + [f"{i} {what}" for i in impls for what in ("wall s", "CPU s", "peak MB")]
    header += [f"SDPA / {i} (wall, CPU)" for i in hsa_impls if "sdpa" in impls]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [str(r["L"])]
        for i in impls:
            cells += [f"{r[i]['s']:.2f}", f"{r[i]['cpu_s']:.2f}", f"{r[i]['peak_mb']:.0f}"] if i in r else ["–"] * 3
        if "sdpa" in impls:
            cells += [f"{r['sdpa']['s'] / r[i]['s']:.1f}×, {r['sdpa']['cpu_s'] / r[i]['cpu_s']:.1f}×"
                      if "sdpa" in r and i in r else "–" for i in hsa_impls]
        lines.append("| " + " | ".join(cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
