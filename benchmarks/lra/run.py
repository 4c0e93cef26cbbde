"""Train an LRA config through the ssmzoo CLI and report it beside the published number.

    python benchmarks/lra/run.py                                   # configs/lra/listops/s4d_small.yaml
    python benchmarks/lra/run.py --config configs/lra/listops/s4d.yaml [-- extra CLI args]

Runs exactly ``ssmzoo fit --config CONFIG`` (which ends by testing the best checkpoint), then writes
``benchmarks/lra/results/<task>_<config name>.json`` (test accuracy, majority-class baseline, the
published S4/S4D accuracy for the task from PAPERS.md, wall time) and rebuilds
``benchmarks/lra/results.md`` from every JSON in that folder.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))  # run this checkout's ssmzoo, not another installed copy

from ssmzoo.cli import run  # noqa: E402

# Published test accuracy (%) on the full LRA tasks (PAPERS.md): S4D-LegS (S4D paper, table of LRA
# results) and S4 v2 (the updated S4 paper).
PUBLISHED = {
    "listops": {"S4D-LegS": 60.47, "S4 (v2)": 59.60},
    "text": {"S4D-LegS": 86.18, "S4 (v2)": 86.82},
    "retrieval": {"S4D-LegS": 89.46, "S4 (v2)": 90.90},
    "image": {"S4D-LegS": 88.19, "S4 (v2)": 88.65},
    "pathfinder": {"S4D-LegS": 93.06, "S4 (v2)": 94.20},
    "pathx": {"S4D-LegS": 91.95, "S4 (v2)": 96.35},
}


def write_table(results_dir: Path, table: Path) -> None:
    rows, notes = [], []
    for path in sorted(results_dir.glob("*.json")):
        r = json.loads(path.read_text())
        published = ", ".join(f"{k} {v:.2f}" for k, v in r["published"].items()) or "–"
        rows.append(
            f"| {r['task']} | `{r['config']}` | {100 * r['test_acc']:.2f} | {100 * r['majority_baseline']:.2f} "
            f"| {published} | {r['wall_time_s'] / 60:.1f} min | {r['epochs']} / {r['steps']} | {r['data_note']} |"
        )
        notes.append(
            f"- {r['task']} `{r['config']}`: {r['machine']}, {r['date']}"
            + (f"; {r['note']}" if r.get("note") else "")
        )
    table.write_text(
        "# LRA results\n\n"
        "Test accuracy (%) of the best checkpoint (by val/acc), the majority-class baseline on the same test\n"
        "split, and the published accuracy on the full LRA task. Reproduce a row with the command in its JSON\n"
        "(`benchmarks/lra/results/<task>_<config>.json`, key `command`).\n\n"
        "| task | config | test acc | majority baseline | published (full LRA) | wall time | epochs / steps | data |\n"
        "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\nMachines:\n" + "\n".join(notes) + "\n"
    )


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/lra/listops/s4d_small.yaml")
    parser.add_argument("--root", default="runs/benchmarks", help="trainer.default_root_dir of the run")
    parser.add_argument(
        "--note", default="", help="a remark stored with the result (e.g. the machine was shared)"
    )
    parser.add_argument(
        "--results-dir", default=str(HERE / "results"),
        help="where the result JSON goes; results.md beside it is rebuilt from every JSON there",
    )
    parser.add_argument("cli_args", nargs="*", help="extra ssmzoo fit arguments (after --)")
    args = parser.parse_args(argv)
    config = Path(args.config)
    task, name = config.parent.name, config.stem

    start = time.perf_counter()
    cli = run(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.default_root_dir",
            args.root,
            "--trainer.enable_progress_bar",
            "false",
            *args.cli_args,
        ]
    )
    wall = time.perf_counter() - start
    if cli.results is None or cli.results.get("test_acc") is None:
        raise SystemExit("the run produced no test accuracy (is test_after_fit off?)")

    data_init = cli.config["fit"]["data"]["init_args"]
    if task == "listops" and data_init.get("data_dir") is None:
        data_note = (
            f"generated ListOps: {data_init['n_train']} train / {data_init['n_test']} test, "
            f"{data_init['min_length']} < tokens < {data_init['max_length']}, depth ≤ {data_init['max_depth']}, "
            f"≤ {data_init['max_args']} args"
        )
    else:
        data_note = f"{cli.results['data']}"
    result = {
        "task": task,
        "config": str(config),
        "command": "python benchmarks/lra/run.py --config "
        + shlex.quote(str(config))
        + "".join(" " + shlex.quote(a) for a in (["--"] + args.cli_args if args.cli_args else [])),
        "test_acc": cli.results["test_acc"],
        "majority_baseline": cli.results["majority_baseline"],
        "published": PUBLISHED.get(task, {}),
        "data_note": data_note,
        "wall_time_s": round(wall, 1),
        "epochs": cli.results["epochs"],
        "steps": cli.results["steps"],
        "run_dir": str(cli.results_path.parent) if cli.results_path else None,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, accelerator {cli.trainer.accelerator.__class__.__name__}",
        "note": args.note,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / f"{task}_{name}.json"
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    write_table(results_dir, results_dir.parent / "results.md")
    print(
        f"{task} / {name}: test accuracy {100 * result['test_acc']:.2f}%  "
        f"majority baseline {100 * result['majority_baseline']:.2f}%  "
        f"published {result['published']}  wall {wall / 60:.1f} min -> {out}"
    )
    return out


if __name__ == "__main__":
    main()
