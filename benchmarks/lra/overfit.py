"""Can a mini-LRA model fit a few training batches? The diagnostic for a cell that stays at chance.

    python benchmarks/lra/overfit.py --threads 1 --config configs/lra/mini/pathfinder_mamba.yaml \
        configs/lra/mini/pathfinder_s4d.yaml

Each config is trained through the CLI on the same ``--batches`` training batches (Lightning's ``overfit_batches``:
no shuffling, the rest of the data unused) for ``--steps`` optimizer steps, everything else as the config says (the
schedule is rescaled to the shorter run). A model whose training accuracy on those batches rises far above chance
can carry the task's signal through its layers and be optimised in its recipe; one that stays at chance cannot, in
that recipe, even memorise 512 images. Validation and the final test are off: this measures fitting only.

Appends to ``benchmarks/lra/recipes/overfit.md`` (or ``--out``; earlier sections are kept) a section with the command, the machine's load and per config the
training accuracy over the first and the last epoch of those batches and the mean loss of the last epoch.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def epochs_of(metrics: Path) -> tuple[list[dict[str, float]], int]:
    """Per epoch of the CSV logger's ``metrics.csv``: training accuracy and the mean of the step losses; and the
    number of optimizer steps logged (a run that stopped early shows here)."""
    by_epoch: dict[int, dict[str, list[float]]] = {}
    steps = 0
    with metrics.open() as f:
        for row in csv.DictReader(f):
            steps = max(steps, int(row["step"]) + 1)
            epoch = by_epoch.setdefault(int(row["epoch"]), {"acc": [], "loss": []})
            if row.get("train/acc"):
                epoch["acc"].append(float(row["train/acc"]))
            if row.get("train/loss"):
                epoch["loss"].append(float(row["train/loss"]))
    return [
        {"epoch": e, "acc": v["acc"][-1], "loss": sum(v["loss"]) / len(v["loss"]) if v["loss"] else math.nan}
        for e, v in sorted(by_epoch.items())
        if v["acc"]
    ], steps


def fit(config: Path, batches: int, steps: int, threads: int, root: Path) -> tuple[list[dict[str, float]], int, float]:
    command = [sys.executable, "-m", "ssmzoo.cli", "fit", "--config", str(config),
               "--trainer.default_root_dir", str(root), "--trainer.overfit_batches", str(batches),
               "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0",
               "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
               "--test_after_fit", "false"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{config}: ssmzoo fit failed:\n{done.stdout[-4000:]}")
    metrics = sorted(root.rglob("metrics.csv"))
    if not metrics:
        raise SystemExit(f"{config}: the run wrote no metrics.csv under {root}")
    epochs, done_steps = epochs_of(metrics[-1])
    return epochs, done_steps, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", nargs="+", required=True, type=Path)
    parser.add_argument("--batches", type=int, default=32, help="training batches to fit (default 32)")
    parser.add_argument("--steps", type=int, default=320, help="optimizer steps (default 320: 10 passes of 32)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--note", default="", help="a remark on the machine (e.g. shared)")
    parser.add_argument("--out", type=Path, default=HERE / "recipes" / "overfit.md")
    args = parser.parse_args()
    for name, value in (("--batches", args.batches), ("--steps", args.steps), ("--threads", args.threads)):
        if value < 1:
            raise SystemExit(f"{name} must be >= 1, got {value}")
    rows = []
    for config in args.config:
        with tempfile.TemporaryDirectory() as root:
            epochs, done_steps, wall = fit(config, args.batches, args.steps, args.threads, Path(root))
        first, last = epochs[0], epochs[-1]
        row = (f"| `{config}` | {args.batches} × {done_steps} steps | {100 * first['acc']:.1f}% | "
               f"{100 * last['acc']:.1f}% (epoch {last['epoch']}) | {last['loss']:.3f} | {wall / 60:.1f} min |")
        print(row, flush=True)
        rows.append(row)
    load = os.getloadavg()[0]
    command = "python benchmarks/lra/overfit.py " + " ".join(
        ["--threads", str(args.threads), "--batches", str(args.batches), "--steps", str(args.steps), "--config"]
        + [shlex.quote(str(c)) for c in args.config])
    header = "# Fitting a few training batches (mini-LRA diagnostic)\n\nEach run appends a section; see the script's docstring.\n"
    before = args.out.read_text() if args.out.exists() else header
    text = before + "\n".join([
        "", f"`{command}`", "",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, 1-min load at the end {load:.1f}. {args.note}".rstrip(), "",
        "| config | batches × steps | train acc, first epoch | train acc, last epoch | train loss, last epoch | wall |",
        "|---|---|---|---|---|---|", *rows, ""])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
