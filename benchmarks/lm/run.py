"""Every causal layer as a byte-level language model on the Shakespeare corpus, each trained for the same wall
time on this CPU through the ``ssmzoo`` command, compared by validation bits per byte.

    ssmzoo data shakespeare                     # once
    python benchmarks/lm/run.py --minutes 10    # every configs/lm/*.yaml but mamba_130m.yaml, one after another

For each config: ``ssmzoo fit`` stopped by ``--trainer.max_time`` (warmup then a constant learning rate, since
the step count a layer reaches in that time is not known in advance; a validation on the first
``--curve-batches`` validation batches every ``--val-every`` steps for the learning curve), then ``ssmzoo
validate`` and ``ssmzoo test`` of the final weights (``last.ckpt``) on the whole validation and test splits
(2 works each). Runs go one at a time with ``--threads`` threads, so each has the machine to itself; run it on
an otherwise idle machine. Writes ``benchmarks/lm/results/lm_cpu.{md,json,png}`` (table; learning curves of
validation bits per byte against bytes trained on and against wall time).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CONFIGS = sorted(p.stem for p in (REPO / "configs" / "lm").glob("*.yaml") if p.stem != "mamba_130m")


def ssmzoo(args: list[str], threads: int, log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with open(log, "a") as out:
        out.write(f"\n$ ssmzoo {' '.join(args)}\n")
        out.flush()
        done = subprocess.run([sys.executable, "-m", "ssmzoo.cli", *args], cwd=REPO, env=env, stdout=out,
                              stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"ssmzoo {args[0]} --config {args[2]} failed; see {log}")


def newest_run(folder: Path) -> Path:
    return sorted(folder.glob("version_*"), key=lambda p: int(p.name[8:]))[-1]


def run_config(name: str, args: argparse.Namespace) -> dict:
    config = REPO / "configs" / "lm" / f"{name}.yaml"
    root = Path(args.root).resolve()
    run_name = f"lm_{name}"
    log = root / f"{run_name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    seconds = round(args.minutes * 60)
    common = ["--config", str(config), "--trainer.default_root_dir", str(root), "--run_name", run_name,
              "--trainer.enable_progress_bar=false"]
    evaluation = [f"--trainer.limit_val_batches={args.eval_batches}", f"--trainer.limit_test_batches={args.eval_batches}"] \
        if args.eval_batches else []
    started = time.perf_counter()
    ssmzoo(["fit", *common, f"--trainer.max_time=00:00:{seconds // 60:02d}:{seconds % 60:02d}", "--trainer.max_steps=-1",
            "--trainer.max_epochs=1000", f"--trainer.val_check_interval={args.val_every}",
            f"--trainer.limit_val_batches={args.curve_batches}", "--model.init_args.lr_schedule=constant",
            f"--model.init_args.warmup={args.warmup}", "--test_after_fit=false"], args.threads, log)
    fit_seconds = time.perf_counter() - started
    run_dir = newest_run(root / run_name)
    last = run_dir / "checkpoints" / "last.ckpt"
    ssmzoo(["validate", *common, "--ckpt_path", str(last), *evaluation], args.threads, log)
    final = _val_metrics(newest_run(root / run_name))  # validate writes no results.json: its metrics.csv
    ssmzoo(["test", *common, "--ckpt_path", str(last), *evaluation], args.threads, log)
    final.update(json.loads((newest_run(root / run_name) / "results.json").read_text())["test_metrics"])
    curve, train = [], []  # (steps done, bpb); Lightning logs at the index of the last step done, hence + 1
    with open(run_dir / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("val/bpb"):
                curve.append((int(row["step"]) + 1, float(row["val/bpb"])))
            if row.get("train/bpb"):
                train.append((int(row["step"]) + 1, float(row["train/bpb"])))
    import torch
    import yaml

    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    steps = int(checkpoint["global_step"])
    # Lightning's Timer (max_time): seconds in the training loop (its validations included) and in those validations
    elapsed = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("Timer"))["time_elapsed"]
    unique = {v.data_ptr(): v.numel() for v in checkpoint["state_dict"].values()}  # a tied head counted once
    params = sum(unique.values())
    data_args = yaml.safe_load(config.read_text())["data"]["init_args"]
    batch, seq_len = data_args["batch_size"], data_args["seq_len"]
    row = {"config": f"configs/lm/{name}.yaml", "params": params, "steps": steps,
           "train_bytes": steps * batch * seq_len, "fit_seconds": round(fit_seconds, 1),
           "train_loop_seconds": round(elapsed["train"], 1), "curve_validation_seconds": round(elapsed["validate"], 1),
           "seconds_per_step": (elapsed["train"] - elapsed["validate"]) / max(steps, 1),
           "val_bpb": final.get("val/bpb"),
           "test_bpb": final.get("test/bpb"), "test_ppl": final.get("test/ppl"),
           "curve": curve, "train_curve": train, "run_dir": str(run_dir),
           "sample": _last_sample(run_dir)}
    print(json.dumps({k: v for k, v in row.items() if k not in ("curve", "train_curve", "sample")}), flush=True)
    return row


def _val_metrics(run_dir: Path) -> dict:
    """The last validation's metrics in a run's metrics.csv."""
    with open(run_dir / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/bpb")]
    return {k: float(v) for k, v in rows[-1].items() if k.startswith("val/") and v}


def _last_sample(run_dir: Path) -> str:
    path = run_dir / "samples.txt"
    if not path.is_file():
        return ""
    return path.read_text().rsplit("--- step", 1)[-1].split("\n", 1)[-1].strip()


def plot(rows: list[dict], path: Path, minutes: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_bytes, by_time) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for r in rows:
        if not r["curve"]:
            continue
        name = Path(r["config"]).stem
        steps, bpb = zip(*r["curve"])
        batch_bytes = r["train_bytes"] / max(r["steps"], 1)
        by_bytes.plot([s * batch_bytes / 1e6 for s in steps], bpb, marker=".", label=name)
        loop = r["train_loop_seconds"] / max(r["steps"], 1)  # per step, its share of the curve validations included
        by_time.plot([s * loop / 60 for s in steps], bpb, marker=".", label=name)
    by_bytes.set_xlabel("bytes trained on (millions)")
    by_time.set_xlabel("training wall time (minutes; steps × mean time per step)")
    for ax in (by_bytes, by_time):
        ax.set_ylabel("validation bits per byte (first batches)")
        ax.grid(alpha=0.3)
    by_time.axvline(minutes, color="0.6", lw=0.8)
    by_bytes.legend(fontsize=8)
    fig.suptitle("Byte-level LMs on Shakespeare, same wall time on CPU", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="training wall time per layer")
    parser.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--val-every", type=int, default=25, help="steps between learning-curve validations")
    parser.add_argument("--curve-batches", type=int, default=8, help="validation batches per learning-curve point")
    parser.add_argument("--warmup", type=int, default=50, help="warmup steps")
    parser.add_argument("--eval-batches", type=int, default=0, help="limit the final validation and test (0: all; smoke tests)")
    parser.add_argument("--root", default="runs/benchmarks/lm")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "lm_cpu")
    args = parser.parse_args(argv)
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    rows = [run_config(name, args) for name in args.configs]
    rows.sort(key=lambda r: r["val_bpb"] if r["val_bpb"] is not None else float("inf"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, args.out.with_suffix(".png"), args.minutes)
    lines = [
        "# Byte-level language models on Shakespeare, same wall time (CPU)",
        "",
        f"Each layer's `configs/lm/<name>.yaml` trained for {args.minutes:g} minutes of wall time with `ssmzoo fit` "
        f"(warmup {args.warmup} steps, then constant lr), {args.threads} threads, one run at a time; bits per byte of "
        "the final weights on the whole validation and test splits (2 works each, the same text for every model). "
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}.",
        "",
        "| layer | parameters | steps | bytes trained on | s / training step | val bpb | test bpb | test ppl (per byte) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
        lines.append(f"| {Path(r['config']).stem} | {r['params'] / 1e6:.2f}M | {r['steps']} | "
                     f"{r['train_bytes'] / 1e6:.1f}M | {r['seconds_per_step']:.2f} | {fmt(r['val_bpb'], '.3f')} | "
                     f"{fmt(r['test_bpb'], '.3f')} | {fmt(r['test_ppl'], '.2f')} |")
    lines += ["", f"Learning curves: `{args.out.with_suffix('.png').name}`. Total time {((time.perf_counter() - started) / 60):.0f} min.",
              "", "Last sample of each (temperature 0.8, after the last validation):", ""]
    for r in rows:
        lines += [f"- **{Path(r['config']).stem}**: `{r['sample'][:160].replace(chr(10), ' / ')}`"]
    load = " → ".join(f"{a:.1f}" for a in (load_start, os.getloadavg()[0]))
    lines += ["", f"1-minute load average at the start and the end: {load} (runs share the machine; steps depend on it).",
              "", f"Reproduce: `python benchmarks/lm/run.py {' '.join(sys.argv[1:] if argv is None else argv)}`", ""]
    args.out.with_suffix(".md").write_text("\n".join(lines))
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
