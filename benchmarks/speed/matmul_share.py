"""How much of a workload's time its own matmuls take: a bound on what any kernel work can still win.

    python benchmarks/speed/matmul_share.py                    # Titans, ours and the peer (1 thread)
    python benchmarks/speed/matmul_share.py --cases titans generation_b16 --reps 7
    python benchmarks/speed/matmul_share.py --quick                            # tiny shapes: a smoke test

For each side of an ``all.py`` case, one fwd+bwd (or generate) call runs under a dispatch mode that records
every matmul it issues (mm, bmm, addmm, baddbmm: shapes and count); those matmuls are then replayed alone on
fresh random inputs of the same shapes, and timed interleaved (all.py's `time_interleaved`) with the whole call and all.py's floor. The
replay is the time the call spends in BLAS at the least, whatever its other code costs; against the peer's
time it says which ratio a side can reach at all (peer time / replay) without issuing fewer matmul FLOPs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).parent))
import all as speed  # noqa: E402  (the workloads and their floors)

ATEN = torch.ops.aten
# for each op, the positions of its two matrix operands
MATMULS = {ATEN.mm.default: (0, 1), ATEN.bmm.default: (0, 1), ATEN.addmm.default: (1, 2), ATEN.baddbmm.default: (1, 2)}


class RecordMatmuls(TorchDispatchMode):
    """Records (op, operand shapes) of every matmul dispatched inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[object, tuple[torch.Size, torch.Size]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in MATMULS:
            i, j = MATMULS[func]
            self.calls.append((func, (args[i].shape, args[j].shape)))
        return func(*args, **(kwargs or {}))


def flops(calls: list[tuple[object, tuple[torch.Size, torch.Size]]]) -> float:
    return sum(2 * a.numel() * b[-1] for _, (a, b) in calls)


def replay(calls: list[tuple[object, tuple[torch.Size, torch.Size]]]) -> Callable[[], None]:
    """The recorded matmuls alone, as plain mm / bmm on fresh operands (addmm's bias add left out)."""
    ops = [(torch.bmm if len(a) == 3 else torch.mm, torch.randn(a), torch.randn(b)) for _, (a, b) in calls]

    def run() -> None:
        for op, a, b in ops:
            op(a, b)

    return run


def measure(name: str, reps: int, quick: bool = False) -> str:
    case = next(c for c in speed.CASES if c.key == name)
    torch.set_num_threads(case.threads)
    timed: dict[str, Callable[[], None]] = {}
    gflop: dict[str, float] = {}
    for impl in ("ours", "peer"):
        try:
            run = case.build(quick, impl)
        except speed.PeerMissing:
            continue
        run()  # warm-up (and any lazy build)
        recorder = RecordMatmuls()
        with recorder:
            run()
        timed[impl], timed[f"{impl} matmuls"] = run, replay(recorder.calls)
        gflop[impl] = flops(recorder.calls) / 1e9
    timed["floor"] = case.build(quick, "floor")
    stats = speed.time_interleaved(timed, reps)
    med = {k: v["median"] for k, v in stats.items()}
    spread = {k: v["max"] / v["min"] - 1 for k, v in stats.items()}
    flag = lambda k: " ⚠" if spread[k] > speed.SPREAD_LIMIT else ""  # noqa: E731
    lines = [f"{case.quick_workload if quick else case.workload} ({case.threads} thread{'s' if case.threads > 1 else ''}, median of {reps})"]
    for impl in gflop:
        m = f"{impl} matmuls"
        lines.append(f"  {impl}: {med[impl]:.3f} s{flag(impl)}; its {gflop[impl]:.1f} GFLOP of matmuls alone "
                     f"{med[m]:.3f} s{flag(m)} ({100 * med[m] / med[impl]:.0f}% of it)")
    lines.append(f"  floor (all.py): {med['floor']:.3f} s{flag('floor')}")
    if "peer" in gflop:
        lines.append(f"  peer / ours {med['peer'] / med['ours']:.2f}x; peer / our matmuls alone "
                     f"{med['peer'] / med['ours matmuls']:.2f}x: the most ours can reach without fewer matmul FLOPs")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["titans"], choices=[c.key for c in speed.CASES])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny shapes: checks that it runs")
    args = parser.parse_args()
    for name in args.cases:
        print(measure(name, args.reps, args.quick), flush=True)


if __name__ == "__main__":
    main()
