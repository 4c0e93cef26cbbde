"""Needle-in-a-haystack passkey retrieval on CPU: Titans MAC, MAG, MAL and a Mamba baseline, each trained and
tested through the ``ssmzoo`` command from ``configs/synthetic/passkey/<model>.yaml``.

    python benchmarks/titans/niah.py [--steps 3000] [--jobs 2] [--only MAC MAG] [-- extra ssmzoo fit arguments]

Each model is one ``ssmzoo fit`` (trained at length 64, fresh samples every step: ``--steps`` x 16), then one
``ssmzoo test`` of its best checkpoint per test length (``--data.init_args.test_seq_len``), where most needles
lie beyond the attention span (16) and only a memory can carry them. Models run in parallel processes, one
thread each. Each model's result goes to ``<--results>/niah_<model>.json`` and ``niah.md`` there is rebuilt from
every such JSON (so models run separately land in one table; each row says its settings). Runs go under ``--root``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODELS = {"MAC": "mac", "MAG": "mag", "MAL": "mal", "Mamba": "mamba"}
BATCH = 16


def ssmzoo(args: list[str], threads: int, log: Path) -> None:
    """Run ``python -m ssmzoo.cli ARGS`` with this checkout first on the path; its output goes to ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": os.pathsep.join(
        [str(REPO), str(HERE), os.environ.get("PYTHONPATH", "")])}
    with open(log, "a") as out:
        done = subprocess.run([sys.executable, "-m", "ssmzoo.cli", *args], cwd=REPO, env=env, stdout=out,
                              stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"ssmzoo {' '.join(args[:3])} ... failed; see {log}")


def run_model(name: str, args: argparse.Namespace) -> dict:
    config = REPO / "configs" / "synthetic" / "passkey" / f"{MODELS[name]}.yaml"
    run_name = f"niah_{MODELS[name]}{args.tag}"
    log = Path(args.root).resolve() / f"{run_name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    common = ["--config", str(config), "--trainer.default_root_dir", str(Path(args.root).resolve()),
              "--run_name", run_name, "--trainer.enable_progress_bar=false"]
    ssmzoo(["fit", *common, f"--data.init_args.num_train={args.steps * BATCH}", "--test_after_fit=true",
            f"--trainer.val_check_interval={min(500, args.steps)}", *args.cli_args], args.threads, log)
    run_dir = sorted((Path(args.root).resolve() / run_name).glob("version_*"), key=lambda p: int(p.name[8:]))[-1]
    fitted = json.loads((run_dir / "results.json").read_text())
    accuracy = {}
    for length in args.test_lengths:
        ssmzoo(["test", *common, "--ckpt_path", fitted["checkpoint"], f"--data.init_args.test_seq_len={length}",
                f"--data.init_args.num_test={args.samples}", *args.cli_args], args.threads, log)
        tested = sorted((Path(args.root).resolve() / run_name).glob("version_*"), key=lambda p: int(p.name[8:]))[-1]
        accuracy[str(length)] = json.loads((tested / "results.json").read_text())["test_acc"]
    with open(run_dir / "metrics.csv") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    row = {"model": name, "config": str(config.relative_to(REPO)), "run_dir": str(run_dir),
           "final_train_loss": losses[-1] if losses else None, "accuracy": accuracy,
           "best_val_acc": fitted["best_score"], "seconds": round(time.perf_counter() - started)}
    print(json.dumps(row), flush=True)
    return row


def write_table(results: Path) -> str:
    """``niah.md`` from every ``niah_*.json`` in ``results``."""
    rows = [json.loads(p.read_text()) for p in sorted(results.glob("niah_*.json"))]
    order = list(MODELS)
    rows.sort(key=lambda r: order.index(r["model"]) if r["model"] in order else len(order))
    lengths = sorted({int(n) for r in rows for n in r["accuracy"]})
    table = ["| model | config | steps | final train loss | best val acc | "
             + " | ".join(f"acc @ {n}" for n in lengths) + " | seconds |",
             "|---|---|---|---|---|" + "---|" * len(lengths) + "---|"]
    for r in rows:
        loss = "–" if r["final_train_loss"] is None else f"{r['final_train_loss']:.3f}"
        accs = " | ".join(f"{100 * r['accuracy'][str(n)]:.1f}%" if str(n) in r["accuracy"] else "–" for n in lengths)
        extra = f" `{' '.join(r['extra_args'])}`" if r.get("extra_args") else ""
        table.append(f"| {r['model']} | `{r['config']}`{extra} | {r['steps']} | {loss} | {100 * r['best_val_acc']:.1f}% "
                     f"| {accs} | {r['seconds']} |")
    text = "\n".join([
        "# Needle-in-a-haystack passkey retrieval (CPU)",
        "",
        "One key→value needle hidden among 16 filler tokens, the key asked again at the end; accuracy of the recalled "
        "value (chance 6.25%). Each model trained through `ssmzoo fit` at length 64 (fresh samples every step, batches "
        "of 16; configs in `configs/synthetic/passkey/`), its best checkpoint (by val/acc) tested with `ssmzoo test` on "
        "fresh sequences of each length (256 per length). Attention span (MAC segment, MAG/MAL window) 16: at 128 and "
        "beyond, most needles are out of the attention's reach and only a memory carries them. One thread per model "
        "on a shared 2-core machine (seconds: fit and tests, wall-clock).",
        "",
        *table,
        "",
        "Reproduce: `python benchmarks/titans/niah.py --steps 3000` (one row: `--only MAC`).",
    ]) + "\n"
    (results / "niah.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000, help="training steps of 16 samples")
    parser.add_argument("--test-lengths", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--samples", type=int, default=256, help="test samples per length")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2, help="models trained at once, one process each")
    parser.add_argument("--only", nargs="*", default=None, choices=list(MODELS))
    parser.add_argument("--root", default="runs/benchmarks/niah")
    parser.add_argument("--tag", default="", help="suffix of the run names (ablations)")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="where niah_<model>.json and niah.md go")
    parser.add_argument("cli_args", nargs="*", help="extra ssmzoo fit/test arguments (after --)")
    args = parser.parse_args(argv)
    names = args.only or list(MODELS)
    with ThreadPoolExecutor(min(args.jobs, len(names))) as pool:
        rows = list(pool.map(lambda n: run_model(n, args), names))
    args.results.mkdir(parents=True, exist_ok=True)
    for row in rows:
        row.update(steps=args.steps, extra_args=args.cli_args)
        (args.results / f"niah_{row['model']}{args.tag}.json").write_text(json.dumps(row, indent=2) + "\n")
    print(write_table(args.results))


if __name__ == "__main__":
    main()
