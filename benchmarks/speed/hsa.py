"""The HSA layer, forward + backward: time and peak memory vs full causal attention (SDPA) and NSA.

Shapes (the HSA issue): batch 1, d_model 512 = 8 heads × 64, L in 4K, 16K, 64K, random inputs.

- ours: ``ssmzoo.layers.HSA`` with 8 query, KV and retrieval heads × 64, chunks of S = 64, top-K = 8,
  stick-breaking, a one-layer chunk encoder: the whole layer (encoder, projections, the op);
- ours_ckpt: the same with ``encoder_checkpoint=True`` (the encoder recomputed in backward, 4K tokens at
  a time: the setting for training at long lengths);
- ours_noenc: the same without the chunk encoder (``encoder_layers=0``: an RMSNorm and mean-pooled
  landmarks, the authors' encoder-free ablation), to show what the encoder costs;
- sdpa: full causal attention with the same projections (q, k, v, out: 512 -> 512) and
  ``torch.nn.functional.scaled_dot_product_attention(is_causal=True)``;
- nsa: native-sparse-attention-pytorch's ``SparseAttention`` (lucidrains), dim 512, 8 heads × 64, causal,
  blocks of 64 (compression, selection), 8 selected blocks, a sliding window of 64: the same budget.

A run is the layer on its input, then ``backward`` of a fixed random cotangent; the time is the minimum
over ``--repeats`` runs after one warm-up run (``--no-warmup`` skips it for the slow cases). Every
(impl, L) runs in its own fresh subprocess under an address-space limit (``--mem-limit-gb``), so a peer
that runs out of memory fails alone, cleanly, without taking the machine's memory from anyone else; its
cell then says why. Peak memory is the growth of the process's peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) from after building the inputs to after the runs.

    python benchmarks/speed/hsa.py                      # writes benchmarks/speed/results/hsa.{md,json}
    python benchmarks/speed/hsa.py --lengths 4096 --impls ours sdpa

For ``benchmarks/speed/all.py``: ``run(quick)`` returns the table's rows (dicts), and ``build_hsa(quick,
impl)`` a zero-argument callable running one repetition of "ours", "peer" (SDPA) or "floor" (the dense
projections' matmuls alone, forward and backward).
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
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).parent / "results"
D_MODEL, HEADS, HEAD_DIM, S, K = 512, 8, 64, 64, 8
LENGTHS, QUICK_LENGTHS = (4096, 16384, 65536), (1024,)
IMPLS = ("ours", "ours_ckpt", "ours_noenc", "sdpa", "nsa")
OURS = ("ours", "ours_ckpt", "ours_noenc")
NAMES = {"ours": "HSA layer (ssmzoo)", "ours_ckpt": "HSA layer, encoder checkpointed",
         "ours_noenc": "HSA layer, no encoder", "sdpa": "causal SDPA",
         "nsa": "NSA (native-sparse-attention-pytorch)"}


def build(impl: str, length: int, d_model: int = D_MODEL, heads: int = HEADS) -> Callable[[], None]:
    """A zero-argument callable: one forward + backward of ``impl`` on a (1, length, d_model) input."""
    sys.path.insert(0, str(ROOT))  # this checkout's ssmzoo, not an installed one
    import torch
    import torch.nn.functional as F
    from einops import rearrange
    from torch import nn

    torch.manual_seed(0)
    head_dim = d_model // heads
    if impl in OURS:
        from ssmzoo.layers import HSA

        layer = HSA(d_model, heads=heads, kv_heads=heads, chunk_size=S, top_k=K,
                    encoder_layers=0 if impl == "ours_noenc" else 1, encoder_checkpoint=impl == "ours_ckpt")
    elif impl == "sdpa":
        class CausalAttention(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.qkv, self.out = nn.Linear(d_model, 3 * d_model, bias=False), nn.Linear(d_model, d_model, bias=False)

            def forward(self, x):
                q, k, v = rearrange(self.qkv(x), "b l (three h e) -> three b h l e", three=3, h=heads)
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                return self.out(rearrange(y, "b h l e -> b l (h e)"))

        layer = CausalAttention()
    elif impl == "nsa":
        from native_sparse_attention_pytorch import SparseAttention

        layer = SparseAttention(dim=d_model, dim_head=head_dim, heads=heads, sliding_window_size=S,
                                compress_block_size=S, compress_block_sliding_stride=S, selection_block_size=S,
                                num_selected_blocks=K, causal=True)
    elif impl == "floor":
        # The matmuls of the dense projections ours must do (q, k, v, selection, out: 512 -> 512), forward
        # and backward (dX, dW), with nothing else.
        shapes = [((length, d_model), (d_model, d_model))] * 2 + [((d_model, length), (length, d_model))]
        mats = [(torch.randn(*a), torch.randn(*b)) for _ in range(5) for a, b in shapes]

        def floor() -> None:
            for a, b in mats:
                torch.mm(a, b)

        return floor
    else:
        raise ValueError(f"benchmarks/speed/hsa.py: impl must be one of {IMPLS + ('floor',)}, got {impl!r}")
    x = torch.randn(1, length, d_model)
    grad = torch.randn(1, length, d_model)

    def run() -> None:
        layer.zero_grad(set_to_none=True)
        layer(x.clone().requires_grad_()).backward(grad)

    return run


def build_hsa(quick: bool, impl: str) -> Callable[[], None]:
    """The hook of benchmarks/speed/all.py: impl "ours", "peer" (causal SDPA) or "floor"."""
    return build({"peer": "sdpa"}.get(impl, impl), QUICK_LENGTHS[0] if quick else LENGTHS[1])


def worker(impl: str, length: int, repeats: int, warmup: bool, threads: int, mem_limit_gb: float) -> dict:
    limit = int(mem_limit_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import torch

    torch.set_num_threads(threads)
    fn = build(impl, length)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, cpu = [], []
    for i in range(repeats + int(warmup)):
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        if i >= int(warmup):
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - cpu_start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"wall_s": min(times), "cpu_s": min(cpu), "peak_mb": (peak - rss0) / 1024}


def measure(impl: str, length: int, repeats: int, warmup: bool, threads: int, mem_limit_gb: float,
            timeout: float) -> dict:
    """One (impl, L) in a fresh subprocess: its figures, or {"error": why}."""
    cmd = [sys.executable, __file__, "--worker", impl, str(length), str(repeats), str(int(warmup)), str(threads),
           str(mem_limit_gb)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    if "can't allocate memory" in proc.stderr or "MemoryError" in proc.stderr or proc.returncode in (-9, 137):
        return {"error": f"out of memory (limit {mem_limit_gb:g} GB)"}
    if "No module named" in proc.stderr:
        return {"error": "not installed (pip install native-sparse-attention-pytorch)"}
    return {"error": f"failed: {tail[:120]}"}


def run(quick: bool, lengths: tuple[int, ...] | None = None, impls: tuple[str, ...] = IMPLS, repeats: int = 1,
        warmup: bool = True, threads: int = 2, mem_limit_gb: float = 8.0, sdpa_max: int = 65536,
        timeout: float = 3600.0) -> list[dict]:
    """Rows of the table, one per L: {"workload", "L", and per impl "<impl>_s" (wall), "<impl>_cpu_s",
    "<impl>_peak_mb" or "<impl>_error"; "<peer>_over_<ours>" and "<peer>_over_<ours>_cpu" (time ratios,
    > 1: ours faster) for peer in sdpa, nsa and ours in ours, ours_ckpt, ours_noenc}."""
    lengths = lengths or (QUICK_LENGTHS if quick else LENGTHS)
    rows = []
    for length in lengths:
        row: dict = {"workload": f"HSA layer fwd+bwd, 8 heads × 64, L={length}", "L": length}
        for impl in impls:
            if impl == "sdpa" and length > sdpa_max:
                row[f"{impl}_error"] = f"skipped (L > --sdpa-max {sdpa_max})"
                continue
            result = measure(impl, length, repeats, warmup, threads, mem_limit_gb, timeout)
            if "error" in result:
                row[f"{impl}_error"] = result["error"]
            else:
                row.update({f"{impl}_s": result["wall_s"], f"{impl}_cpu_s": result["cpu_s"],
                            f"{impl}_peak_mb": result["peak_mb"]})
            print(f"L={length} {impl}: {result}", flush=True)
        for peer in ("sdpa", "nsa"):
            for ours in OURS:
                if f"{ours}_s" in row and f"{peer}_s" in row:
                    row[f"{peer}_over_{ours}"] = row[f"{peer}_s"] / row[f"{ours}_s"]
                    row[f"{peer}_over_{ours}_cpu"] = row[f"{peer}_cpu_s"] / row[f"{ours}_cpu_s"]
        rows.append(row)
    return rows


def _cell(row: dict, impl: str) -> list[str]:
    if f"{impl}_error" in row:
        return [row[f"{impl}_error"], "", ""]
    if f"{impl}_s" not in row:
        return ["not run", "", ""]
    return [f"{row[f'{impl}_s']:.2f}", f"{row[f'{impl}_cpu_s']:.2f}", f"{row[f'{impl}_peak_mb']:.0f}"]


def table(rows: list[dict], impls: tuple[str, ...]) -> str:
    head = ["L"] + [f"{NAMES[i]} {what}" for i in impls for what in ("wall s", "CPU s", "peak MB")]
    ratios = [(p, o) for p in ("sdpa", "nsa") for o in OURS if p in impls and o in impls]
    head += [f"{p} / {o} (wall, CPU)" for p, o in ratios]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [str(row["L"])] + [c for i in impls for c in _cell(row, i)]
        cells += [f"{row[f'{p}_over_{o}']:.1f}×, {row[f'{p}_over_{o}_cpu']:.1f}×" if f"{p}_over_{o}" in row else "–"
                  for p, o in ratios]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        impl, length, repeats, warmup, threads, mem = sys.argv[2:8]
        print(json.dumps(worker(impl, int(length), int(repeats), bool(int(warmup)), int(threads), float(mem))))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--no-warmup", action="store_true", help="time the first run (the slow cases take minutes)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mem-limit-gb", type=float, default=8.0, help="address-space limit of each case's process")
    p.add_argument("--sdpa-max", type=int, default=65536, help="skip SDPA above this length")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per case")
    p.add_argument("--quick", action="store_true", help=f"L = {QUICK_LENGTHS} only")
    p.add_argument("--out", type=Path, default=RESULTS / "hsa.md")
    args = p.parse_args()
    load0 = os.getloadavg()
    rows = run(args.quick, tuple(args.lengths) if not args.quick else None, tuple(args.impls), args.repeats,
               not args.no_warmup, args.threads, args.mem_limit_gb, args.sdpa_max, args.timeout)
    load1 = os.getloadavg()
    import torch

    text = "\n".join([
        "# HSA layer: forward + backward vs causal SDPA and NSA",
        "",
        f"batch 1, d_model {D_MODEL} = {HEADS} heads × {HEAD_DIM}, S = {S}, K = {K}; {args.threads} threads, "
        f"min of {args.repeats}{' after a warm-up' if not args.no_warmup else ' (no warm-up)'}; "
        f"torch {torch.__version__}, {platform.machine()}; each case in its own process under a "
        f"{args.mem_limit_gb:g} GB address-space limit.",
        f"Load average (1/5/15 min) before: {' '.join(f'{v:.2f}' for v in load0)}, after: "
        f"{' '.join(f'{v:.2f}' for v in load1)}.",
        "",
        f"`python benchmarks/speed/hsa.py {' '.join(sys.argv[1:])}`".replace("  ", " "),
        "",
        "Wall seconds depend on the machine's load; CPU seconds (this process, all threads) much less so.",
        "",
        table(rows, tuple(args.impls)),
        "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
