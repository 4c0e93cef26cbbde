"""SSD op speed and memory on CPU: our backends against transformers' torch path for Mamba-2's SSD
(``mamba2_chunk_scan``, the chunked part of ``Mamba2Mixer.torch_forward``, mamba_chunk_scan_combined's
signature), forward and forward+backward.

Same inputs for all (batch 4, 8 heads × headdim 32, d_state 64, one group, chunk 256, dt_softplus,
D skip): the SSD shapes of a Mamba-2 layer with d_model 128. Outputs are compared first, so a speed-up
never comes from computing something else. Repetitions are interleaved across implementations and
the median is reported (the machine may be shared); ``--cpu-time`` reports process CPU time instead
of wall time, which a busy machine disturbs less. ``--memory`` runs each (implementation, length)
once in a fresh process and reports the peak resident memory it adds to its inputs (forward+backward,
sampled every 0.5 ms).

    python benchmarks/speed/ssd_op.py [--lengths 1024 4096 16384] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's ssmzoo, not an installed one

import torch

from _timing import peak_memory, time_once
from ssmzoo.ops.ssd import dispatch, ssd

RESULTS = Path(__file__).parent / "results" / "ssd_op.md"
SHAPE = {"batch": 4, "heads": 8, "headdim": 32, "d_state": 64, "groups": 1, "chunk": 256}


def make_inputs(length: int, seed: int = 0) -> dict:
    b, h, p, n, g = (SHAPE[k] for k in ("batch", "heads", "headdim", "d_state", "groups"))
    gen = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(b, length, h, p, generator=gen),
        "dt": torch.randn(b, length, h, generator=gen) * 0.5 - 2.0,  # softplus: Δ around 0.1
        "A": -torch.linspace(1.0, 8.0, h),
        "B": torch.randn(b, length, g, n, generator=gen),
        "C": torch.randn(b, length, g, n, generator=gen),
        "D": torch.ones(h),
        "dt_bias": torch.zeros(h),
    }


def ours(backend: str):
    def run(a: dict) -> torch.Tensor:
        return ssd(a["x"], a["dt"], a["A"], a["B"], a["C"], chunk_size=SHAPE["chunk"], D=a["D"], dt_bias=a["dt_bias"],
                   dt_softplus=True, backend=backend)

    return run


def transformers_torch(a: dict) -> torch.Tensor:
    from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan

    torch_path = getattr(mamba2_chunk_scan, "__wrapped__", mamba2_chunk_scan)  # not a hub/mamba-ssm kernel
    return torch_path(a["x"], a["dt"], a["A"], a["B"], a["C"], SHAPE["chunk"], D=a["D"], dt_bias=a["dt_bias"],
                      dt_softplus=True)


def candidates() -> dict:
    found = {name: ours(name) for name in ("cpu", "chunked") if name in dispatch.names("cpu")}
    try:
        import transformers.models.mamba2.modeling_mamba2  # noqa: F401

        found["transformers"] = transformers_torch
    except ImportError:
        print("transformers is not installed: timing ours only")
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cpu-time", action="store_true", help="process CPU time instead of wall time")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory (one process per run)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    impls = candidates()
    clock = "CPU time" if args.cpu_time else "wall time"
    peer = "transformers" if "transformers" in impls else None
    lines = [
        "# SSD op, CPU",
        "",
        f"batch {SHAPE['batch']}, {SHAPE['heads']} heads × headdim {SHAPE['headdim']}, d_state {SHAPE['d_state']}, "
        f"{SHAPE['groups']} group, chunk {SHAPE['chunk']}, float32; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; median {clock} of {args.repeats} interleaved repetitions (ms).",
        "",
        "| L | pass | " + " | ".join(impls) + " | " + " | ".join(f"{peer} / {n}" for n in impls if n != peer) + " |",
        "|---|---|" + "---|" * (2 * len(impls) - (peer is not None)),
    ]
    print("\n".join(lines), flush=True)
    for length in args.lengths:
        x = make_inputs(length)
        with torch.no_grad():
            outs = {n: f(x) for n, f in impls.items()}
        for n, y in outs.items():  # all compute the same function
            ref = outs[next(iter(outs))]
            err = ((y - ref).abs().max() / ref.abs().max()).item()
            assert err < 1e-4, f"{n} disagrees with {next(iter(outs))} at L={length}: relative error {err:.2e}"
        for backward in (False, True):
            times: dict[str, list[float]] = {n: [] for n in impls}
            for f in impls.values():  # warm-up (builds, allocator)
                time_once(f, x, backward, args.cpu_time)
            for _ in range(args.repeats):
                for n, f in impls.items():
                    times[n].append(time_once(f, x, backward, args.cpu_time))
            med = {n: statistics.median(t) * 1e3 for n, t in times.items()}
            ratios = [f"{med[peer] / med[n]:.1f}×" for n in impls if n != peer] if peer else []
            row = (f"| {length} | {'fwd+bwd' if backward else 'fwd'} | " + " | ".join(f"{med[n]:.0f}" for n in impls)
                   + " | " + " | ".join(ratios) + " |")
            print(row, flush=True)
            lines.append(row)
    if args.memory:
        lines += ["", "Peak resident memory added by one forward+backward (MiB; per 1K tokens in brackets):", "",
                  "| L | " + " | ".join(impls) + " |", "|---|" + "---|" * len(impls)]
        for length in args.lengths:
            mib = {n: peak_memory(__file__, n, length, args.threads) for n in impls}
            row = f"| {length} | " + " | ".join(f"{m:.0f} ({m * 1024 / length:.0f})" for m in mib.values()) + " |"
            print(row, flush=True)
            lines.append(row)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/speed/ssd_op.py " + " ".join(sys.argv[1:])
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"] * 3
    RESULTS.write_text("\n".join(lines) + f"\n\nLoad average at the end: {' '.join(load)} "
                       f"(on {torch.get_num_threads()} of {__import__('os').cpu_count()} cores).\n\n"
                       f"Reproduce: `{command.strip()}`\n")
    print(json.dumps({"results": str(RESULTS)}))


if __name__ == "__main__":
    main()
