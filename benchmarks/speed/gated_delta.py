"""Gated delta rule op speed and memory on CPU: our backends against transformers' torch path for Qwen3-Next's
gated delta rule (``torch_chunk_gated_delta_rule``, what ``Qwen3NextGatedDeltaNet`` runs without fla), forward
and forward+backward.

Same inputs for all (batch 4, 8 heads with head dims 64 for keys and values, L2-normalised keys, g = log α around
−0.05, β in (0, 1), chunks of 64, float32). Outputs are compared first, so a speed-up never comes from computing
something else. Repetitions are interleaved across implementations (the order reversed every other round) and the
median is reported (the machine may be shared); ``--cpu-time`` reports process CPU time instead of wall time.
``--memory`` runs each (implementation, length) once in a fresh process and reports the peak resident memory one
forward+backward adds to its inputs (sampled every 0.5 ms), also per 1,024 tokens: flat per token means it grows
linearly with the length.

    python benchmarks/speed/gated_delta.py [--lengths 1024 4096] [--repeats 3] [--threads 2] [--memory]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's ssmzoo, not an installed one

import torch
import torch.nn.functional as F

from _timing import peak_memory, time_once
from ssmzoo.ops.gated_delta import dispatch, gated_delta_rule

RESULTS = Path(__file__).parent / "results" / "gated_delta.md"
SHAPE = {"batch": 4, "heads": 8, "head_dim": 64, "chunk": 64}


def make_inputs(length: int, seed: int = 0) -> dict:
    b, h, d = SHAPE["batch"], SHAPE["heads"], SHAPE["head_dim"]
    gen = torch.Generator().manual_seed(seed)
    return {
        "q": torch.randn(b, length, h, d, generator=gen),
        "k": F.normalize(torch.randn(b, length, h, d, generator=gen), dim=-1),
        "v": torch.randn(b, length, h, d, generator=gen),
        "g": -0.1 * torch.rand(b, length, h, generator=gen),
        "beta": torch.rand(b, length, h, generator=gen),
    }


def ours(backend: str):
    def run(a: dict) -> torch.Tensor:
        return gated_delta_rule(a["q"], a["k"], a["v"], a["g"], a["beta"], chunk_size=SHAPE["chunk"], backend=backend)

    return run


def transformers_torch(a: dict) -> torch.Tensor:
    from transformers.models.qwen3_next.modeling_qwen3_next import torch_chunk_gated_delta_rule

    torch_path = getattr(torch_chunk_gated_delta_rule, "__wrapped__", torch_chunk_gated_delta_rule)  # not fla's
    return torch_path(a["q"], a["k"], a["v"], g=a["g"], beta=a["beta"], chunk_size=SHAPE["chunk"])[0]


def candidates(backends: list[str]) -> dict:
    unknown = [name for name in backends if name not in dispatch.names("cpu")]
    if unknown:
        raise SystemExit(f"gated_delta.py: no CPU backend {unknown}; choose from {dispatch.names('cpu')}")
    found = {name: ours(name) for name in backends}
    try:
        import transformers.models.qwen3_next.modeling_qwen3_next  # noqa: F401

        found["transformers"] = transformers_torch
    except ImportError:
        print("transformers is not installed: timing ours only")
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backends", nargs="+", default=["cpu"], help="ours to time (cpu, chunked, reference)")
    parser.add_argument("--cpu-time", action="store_true", help="process CPU time instead of wall time")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory (one process per run)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    impls = candidates(args.backends)
    clock = "CPU time" if args.cpu_time else "wall time"
    peer = "transformers" if "transformers" in impls else None
    load_before = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"] * 3
    lines = [
        "# Gated delta rule op, CPU",
        "",
        f"batch {SHAPE['batch']}, {SHAPE['heads']} heads, head dims {SHAPE['head_dim']} (keys and values), chunks of "
        f"{SHAPE['chunk']}, float32; torch {torch.__version__}, {torch.get_num_threads()} threads; median {clock} of "
        f"{args.repeats} interleaved repetitions (ms); transformers = `torch_chunk_gated_delta_rule` (Qwen3-Next's "
        "torch path).",
        "",
        "| L | pass | " + " | ".join(impls) + " | " + " | ".join(f"{peer} / {n}" for n in impls if n != peer) + " |",
        "|---|---|" + "---|" * (2 * len(impls) - (peer is not None)),
    ]
    print("\n".join(lines), flush=True)
    for length in args.lengths:
        x = make_inputs(length)
        with torch.no_grad():
            outs = {n: f(x) for n, f in impls.items()}
        ref = outs[next(iter(outs))]
        for n, y in outs.items():  # all compute the same function
            err = ((y - ref).abs().max() / ref.abs().max()).item()
            assert err < 1e-4, f"{n} disagrees with {next(iter(outs))} at L={length}: relative error {err:.2e}"
        for backward in (False, True):
            times: dict[str, list[float]] = {n: [] for n in impls}
            for f in impls.values():  # warm-up (builds, allocator)
                time_once(f, x, backward, args.cpu_time)
            for r in range(args.repeats):
                order = list(impls) if r % 2 == 0 else list(reversed(list(impls)))
                for n in order:
                    times[n].append(time_once(impls[n], x, backward, args.cpu_time))
            med = {n: statistics.median(t) * 1e3 for n, t in times.items()}
            ratios = [f"{med[peer] / med[n]:.1f}×" for n in impls if n != peer] if peer else []
            row = (f"| {length} | {'fwd+bwd' if backward else 'fwd'} | " + " | ".join(f"{med[n]:.0f}" for n in impls)
                   + " | " + " | ".join(ratios) + " |")
            print(row, flush=True)
            lines.append(row)
    if args.memory:
        lines += ["", "Peak resident memory added by one forward+backward (MiB; per 1,024 tokens in brackets):", "",
                  "| L | " + " | ".join(impls) + " |", "|---|" + "---|" * len(impls)]
        for length in args.lengths:
            mib = {n: peak_memory(__file__, n, length, args.threads, (args.backends,)) for n in impls}
            row = f"| {length} | " + " | ".join(f"{m:.0f} ({m * 1024 / length:.0f})" for m in mib.values()) + " |"
            print(row, flush=True)
            lines.append(row)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/speed/gated_delta.py " + " ".join(sys.argv[1:])
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"] * 3
    text = ("\n".join(lines) + f"\n\nLoad average (1, 5, 15 min) at the start: {' '.join(load_before)}, at the end: "
            f"{' '.join(load)} (on {torch.get_num_threads()} of {os.cpu_count()} cores).\n\n"
            f"Reproduce: `{command.strip()}`\n")
    tmp = RESULTS.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, RESULTS)
    print(json.dumps({"results": str(RESULTS)}))


if __name__ == "__main__":
    main()
