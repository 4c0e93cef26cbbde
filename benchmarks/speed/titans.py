"""NeuralMemory forward+backward: ssmzoo vs lucidrains' titans-pytorch, same process, same shapes.

    python benchmarks/speed/titans.py [--reps 7] [--threads 2]

Configuration is titans-pytorch's README example (dim 384, chunk 64, batch 2, length 1024) with its
default memory (1 head, a 2-layer MLP of hidden width 4·384, momentum on). Repetitions of the two
are interleaved and the median of each is reported; results go to benchmarks/speed/results/titans.md.
Needs the bench extra: pip install titans-pytorch torch==2.13.0
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's ssmzoo, not an installed one
from ssmzoo import NeuralMemory

DIM, CHUNK, BATCH, LENGTH, HEADS, DEPTH, EXPANSION = 384, 64, 2, 1024, 1, 2, 4.0


def time_fwd_bwd(module: torch.nn.Module, x: torch.Tensor, run) -> float:
    module.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    t0 = time.perf_counter()
    y = run(module, x)
    y.float().square().mean().backward()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "titans.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from titans_pytorch import NeuralMemory as PeerMemory  # the bench extra; imported only here

    torch.manual_seed(0)
    ours = NeuralMemory(DIM, heads=HEADS, memory_depth=DEPTH, memory_expansion=EXPANSION, chunk_size=CHUNK,
                        conv_kernel=0)
    # Same memory MLP (2 layers, hidden 4·dim, no biases); its default LayerNorm+residual wrapper
    # around the memory is turned off so both memories are the plain MLP of the paper.
    peer = PeerMemory(DIM, chunk_size=CHUNK, heads=HEADS, momentum=True,
                      default_model_kwargs={"depth": DEPTH, "expansion_factor": EXPANSION},
                      mem_model_norm_add_residual=False)
    x = torch.randn(BATCH, LENGTH, DIM)
    runs = {
        "ssmzoo": (ours, lambda m, x: m(x)),
        "titans-pytorch": (peer, lambda m, x: m(x)[0]),
    }
    for m, run in runs.values():  # warm-up (and a check that both run)
        time_fwd_bwd(m, x, run)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.reps):
        for name, (m, run) in runs.items():
            times[name].append(time_fwd_bwd(m, x, run))
    med = {name: statistics.median(t) for name, t in times.items()}
    ratio = med["titans-pytorch"] / med["ssmzoo"]
    n_params = {name: sum(p.numel() for p in m.parameters()) for name, (m, _) in runs.items()}
    lines = [
        "# NeuralMemory forward+backward, CPU",
        "",
        (f"batch {BATCH}, length {LENGTH}, dim {DIM}, heads {HEADS}, chunk {CHUNK}, memory MLP depth {DEPTH} "
        f"width {int(EXPANSION * DIM)}, momentum on, float32, {args.threads} threads, "
        f"median of {args.reps} interleaved repetitions (torch {torch.__version__})."),
        "",
        "| implementation | median s | min s | parameters |",
        "|---|---|---|---|",
        *(f"| {n} | {med[n]:.3f} | {min(times[n]):.3f} | {n_params[n]:,} |" for n in runs),
        "",
        f"**ssmzoo is {ratio:.2f}x the speed of titans-pytorch** (peer median / ours).",
        "",
        "Differences that remain (they are in the algorithms, not the settings): titans-pytorch takes every",
        "chunk's gradient at the weights from the start of the call (all chunks in parallel, then one scan);",
        "ssmzoo takes each chunk's gradients at that chunk's starting weights, as the paper does (sequential",
        "across chunks). titans-pytorch shares θ, η, α per chunk (averaged), ssmzoo has them per token.",
        "ssmzoo l2-normalises q and k and gates its output; titans-pytorch RMS-normalises its input and",
        "uses GELU in the memory MLP (ssmzoo SiLU). titans-pytorch's parameter count includes its memory",
        "MLP twice (a template module and the per-head learned initial weights it is copied into).",
        "",
        "Reproduce: `python benchmarks/speed/titans.py`",
    ]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
