"""Training steps per second with and without ``--compile true``, through the ``ssmzoo fit`` command.

For each config, ``ssmzoo fit`` runs N optimizer steps eagerly and N compiled (no validation, no test), alternating
(eager, compiled, eager, compiled, ... ``--repeats`` times), so a change of the machine's load affects both. A
callback (:class:`StepTimes`, added with ``--trainer.callbacks+=``) records when each training step ends, so:

- steady steps/s: 1 / the median time between step ends after the first ``--warmup`` steps;
- compile time: the compiled run's time beyond N steady steps, less the eager run's (compiling happens in the
  first step, and again wherever a new shape reaches the graph: Dynamo then makes that size dynamic, and a
  data-dependent length can cost a few more; the callback also records how many graphs Dynamo compiled);
- steps/s with the compile included: N over the time from the first step's start to the last step's end;
- break-even: the steps after which the compiled run has caught up, compile time / (eager step - compiled step).

Start-up (imports, data) is outside all of these. Each figure is the median over the repeats; the raw step times
go to ``--raw`` (JSON).

    python benchmarks/speed/compile.py                       # the three configs below
    python benchmarks/speed/compile.py --configs configs/lm/mamba.yaml --steps 40
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback

CONFIGS = ["configs/lra/listops/s4d_small.yaml", "configs/lm/mamba.yaml", "configs/lm/mamba2.yaml"]
ROOT = Path(__file__).resolve().parents[2]


class StepTimes(Callback):
    """Writes to ``path`` (JSON) when the first training step started and when each one ended (perf_counter), and
    how many graphs Dynamo compiled (0 eagerly)."""

    def __init__(self, path: str) -> None:
        self.path, self.start, self.ends = path, None, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        import torch._dynamo.utils

        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        Path(self.path).write_text(json.dumps({"start": self.start, "ends": self.ends, "graphs": graphs}))


def run(config: str, steps: int, compiled: bool, threads: int, root: str) -> tuple[list[float], int]:
    """One ``ssmzoo fit``: the times between step ends (the first from the first step's start), and the number of
    graphs Dynamo compiled."""
    times = os.path.join(root, f"times_{compiled}.json")
    callback = {"class_path": "benchmarks.speed.compile.StepTimes", "init_args": {"path": times}}
    command = [sys.executable, "-m", "ssmzoo.cli", "fit", "--config", config, "--trainer.max_steps", str(steps),
               "--trainer.max_epochs", "-1", "--trainer.limit_val_batches", "0", "--test_after_fit", "false",
               "--trainer.default_root_dir", root, "--threads", str(threads), "--compile", str(compiled).lower(),
               "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
               f"--trainer.callbacks+={json.dumps(callback)}"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    record = json.loads(Path(times).read_text())
    points = [record["start"], *record["ends"]]
    return [b - a for a, b in zip(points, points[1:])], record["graphs"]


def summarise(intervals: list[float], graphs: int, warmup: int) -> dict[str, float]:
    steady = statistics.median(intervals[warmup:])
    return {"steady": steady, "beyond_steady": sum(intervals) - len(intervals) * steady,
            "with_compile": len(intervals) / sum(intervals), "graphs": graphs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3, help="steps that may compile (excluded from the steady rate)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--raw", default="benchmarks/speed/results/compile_raw.json",
                        help="where the step times of every run go (JSON)")
    args = parser.parse_args()
    if args.steps < args.warmup + 5:
        raise ValueError(f"--steps must be at least --warmup + 5 = {args.warmup + 5}, got {args.steps}")
    print(f"load before: {os.getloadavg()}; threads {args.threads}; {args.steps} steps, {args.warmup} warm-up, "
          f"{args.repeats} repeats")
    print("| config | eager steps/s | compiled steps/s | ratio | compile time (s) | steps/s over N with compile "
          "(eager / compiled) | break-even (steps) | graphs compiled |")
    print("|---|---|---|---|---|---|---|---|")
    raw = {"steps": args.steps, "threads": args.threads, "runs": []}
    with tempfile.TemporaryDirectory() as root:
        for config in args.configs:
            runs = {False: [], True: []}
            for _ in range(args.repeats):
                for compiled in (False, True):
                    intervals, graphs = run(config, args.steps, compiled, args.threads, root)
                    raw["runs"].append({"config": config, "compiled": compiled, "intervals": intervals, "graphs": graphs})
                    runs[compiled].append(summarise(intervals, graphs, args.warmup))
            med = {c: {k: statistics.median(r[k] for r in runs[c]) for k in runs[c][0]} for c in runs}
            eager, comp = med[False], med[True]
            compile_time = comp["beyond_steady"] - eager["beyond_steady"]  # eager's slow first steps are not compiling
            gain = eager["steady"] - comp["steady"]
            even = f"{compile_time / gain:.0f}" if gain > 0 else "never"
            print(f"| {config} | {1 / eager['steady']:.2f} | {1 / comp['steady']:.2f} | "
                  f"{eager['steady'] / comp['steady']:.2f} | {compile_time:.0f} | {eager['with_compile']:.2f} / "
                  f"{comp['with_compile']:.2f} | {even} | {comp['graphs']:.0f} |", flush=True)
            spread = {c: [round(1 / r["steady"], 2) for r in runs[c]] for c in runs}
            print(f"  (steady steps/s of each repeat: eager {spread[False]}, compiled {spread[True]})", flush=True)
    out = Path(args.raw)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")  # written whole, then renamed: a killed run leaves the old file
    tmp.write_text(json.dumps(raw))
    os.replace(tmp, out)
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
