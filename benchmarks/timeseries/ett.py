"""ETTh1 / ETTh2 at the standard protocol: our forecasters and neuralforecast's side by side, with the published numbers.

    python benchmarks/timeseries/ett.py --full        # every model x data set x horizon x seed below
    python benchmarks/timeseries/ett.py               # a quick check: ETTh1 M, horizon 96, the linear models, seed 0
    python benchmarks/timeseries/ett.py --report      # only rewrite the table and plots from the runs so far

Protocol (ssmzoo.data.timeseries.InformerDataModule): 12 / 4 / 4-month splits, each later split starting
`lookback` (336) rows early; z-score fitted on the train rows; MSE / MAE on the scaled values over every test
window, and also without the last incomplete test batch of 32 (what codes that test with drop_last report);
the best checkpoint by validation MSE.

Ours: each cell is `ssmzoo fit --config configs/timeseries/<data>/<model>_<features>_<horizon>.yaml` (the configs
benchmarks/timeseries/ett_configs.py writes) with a seed; `--max-epochs N` caps a config's epochs (recorded
beside the result). Peers (`nf_patchtst`, `nf_nlinear`, `nf_dlinear`): neuralforecast, in its own virtual
environment (`pip install ssmzoo[bench]`, or `--nf-python` naming a python that has it), run by
benchmarks/timeseries/nf_ett.py on the same z-scored series, with the same splits: its `cross_validation`
with step 1 forecasts exactly our test windows.

Every finished run is appended to results/ett_runs.jsonl at once (a rerun skips what is there), and the table
(results/ett.md: mean ± sd over seeds, the winner of each multivariate cell, the published numbers, wall time
per model) and the forecast plots (results/plots/ett_*.png, seed 0) are rewritten after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)  # the checkout's ssmzoo, not an installed copy
from ett_configs import DATASETS, HORIZONS, LOOKBACK, MODELS, config_name  # noqa: E402

from ssmzoo.allocator import keep_freed_memory  # noqa: E402
from ssmzoo.cli import run  # noqa: E402
from ssmzoo.data import data_root  # noqa: E402
from ssmzoo.data.timeseries import InformerDataModule  # noqa: E402

RESULTS = os.path.join(HERE, "results")
RUNS = os.path.join(RESULTS, "ett_runs.jsonl")
FORECASTS = os.path.join(RESULTS, "ett_forecasts")
PLOTS = os.path.join(RESULTS, "plots")
PEERS = ("nf_patchtst", "nf_nlinear", "nf_dlinear")
TEST_BATCH = 32  # the batch whose incomplete last one drop_last codes leave out
N_PLOT_WINDOWS = 3

# Published test MSE (z-scored), lookback 336 unless said, and which of our rows run the same model:
# LTSF-Linear (Zeng et al., AAAI 2023) Table 2 (M) and Table 1 (S); PatchTST (Nie et al., ICLR 2023) Table 3
# (PatchTST/42: lookback 336; PatchTST/64: lookback 512, the numbers issue #27 quotes).
PUBLISHED = [
    ("ETTh1", "M", "NLinear (LTSF-Linear)", (0.374, 0.408, 0.429, 0.440), ("nlinear", "nf_nlinear")),
    ("ETTh1", "M", "DLinear (LTSF-Linear)", (0.375, 0.405, 0.439, 0.472), ("dlinear", "nf_dlinear")),
    ("ETTh1", "M", "PatchTST/42 (PatchTST)", (0.375, 0.414, 0.431, 0.449), ("nf_patchtst",)),
    ("ETTh1", "M", "PatchTST/64, lookback 512 (PatchTST)", (0.370, 0.413, 0.422, 0.447), ()),
    ("ETTh2", "M", "NLinear (LTSF-Linear)", (0.277, 0.344, 0.357, 0.394), ("nlinear", "nf_nlinear")),
    ("ETTh2", "M", "DLinear (LTSF-Linear)", (0.289, 0.383, 0.448, 0.605), ("dlinear", "nf_dlinear")),
    ("ETTh2", "M", "PatchTST/42 (PatchTST)", (0.274, 0.339, 0.331, 0.379), ("nf_patchtst",)),
    ("ETTh2", "M", "PatchTST/64, lookback 512 (PatchTST)", (0.274, 0.341, 0.329, 0.379), ()),
    ("ETTh1", "S", "NLinear (LTSF-Linear)", (0.053, 0.069, 0.081, 0.080), ()),
    ("ETTh2", "S", "NLinear (LTSF-Linear)", (0.129, 0.169, 0.194, 0.225), ()),
]


def features_of(model: str) -> str:
    return "M" if model in PEERS else MODELS[model][0]


def load_runs() -> list[dict]:
    if not os.path.isfile(RUNS):
        return []
    with open(RUNS) as f:
        return [json.loads(line) for line in f if line.strip()]


def append_run(row: dict) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    with open(RUNS, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def plot_windows(n_test: int) -> list[int]:
    """The test windows plotted: spread over the test split."""
    return [int(round(i)) for i in np.linspace(0, n_test - 1, N_PLOT_WINDOWS + 2)[1:-1]]


def _rounded(values) -> list[float]:
    # 4 decimals of a z-scored series are far below what a plot shows; keeps the committed files small
    return [round(float(v), 4) for v in np.asarray(values).reshape(-1)]


def save_forecasts(key: str, model: str, dm: InformerDataModule, preds: dict[int, np.ndarray]) -> None:
    """Keep the target channel (OT, last) of the plotted windows' forecasts, scaled, in ett_forecasts/<key>.json."""
    os.makedirs(FORECASTS, exist_ok=True)
    path = os.path.join(FORECASTS, f"{key}.json")
    cell = json.load(open(path)) if os.path.isfile(path) else {"windows": {}}
    ds = dm.datasets["test"]
    for i, pred in preds.items():
        x, y = ds[i]
        history, future = dm.window_dates("test", i)
        w = cell["windows"].setdefault(str(i), {"history": _rounded(x[:, -1]), "truth": _rounded(y[:, -1]),
                                                "history_dates": [history[0], history[-1]],
                                                "future_dates": [future[0], future[-1]], "models": {}})
        w["models"][model] = _rounded(pred)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(cell, f)
    os.replace(tmp, path)


def run_ours(model: str, dataset: str, horizon: int, seed: int, data_dir: str, root: str,
             max_epochs: int | None) -> dict:
    config = os.path.join(ROOT, config_name(model, dataset, horizon))
    args = ["fit", "--config", config, f"--seed_everything={seed}",
            f"--data.init_args.path={os.path.join(data_dir, dataset + '.csv')}",
            "--model.init_args.n_plots=0", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={root}",
            f"--run_name={dataset}_{model}_{horizon}_seed{seed}"]
    if max_epochs is not None:
        args.append(f"--trainer.max_epochs={max_epochs}")
    cli = run(args)
    r = cli.results
    metrics = r["test_metrics"]
    row = {"mse": metrics["test/mse"], "mae": metrics["test/mae"], "mse_drop_last": metrics["test/mse_drop_last"],
           "mae_drop_last": metrics["test/mae_drop_last"], "epochs": r["epochs"], "seconds": r["wall_time_s"],
           "params": sum(p.numel() for p in cli.model.model.parameters()), "run_dir": r["run_dir"],
           "config": config_name(model, dataset, horizon), "best_val_mse": r["best_score"]}
    if seed == 0:  # the best checkpoint's weights are in the model after the test
        dm, net = cli.datamodule, cli.model.model.eval()
        windows = plot_windows(len(dm.datasets["test"]))
        with torch.no_grad():
            x = torch.stack([dm.datasets["test"][i][0] for i in windows])
            preds = net(x)[..., -1].numpy()
        save_forecasts(f"{dataset}_{features_of(model)}_{horizon}", model, dm, dict(zip(windows, preds)))
    return row


def run_peer(model: str, dataset: str, horizon: int, seed: int, data_dir: str, nf_python: str,
             patchtst_epochs: int) -> dict:
    """neuralforecast on our scaled series (M: every channel one series), in its own python."""
    dm = InformerDataModule(os.path.join(data_dir, dataset + ".csv"), features="M", lookback=LOOKBACK,
                            horizon=horizon, batch_size=TEST_BATCH)
    dm.setup()
    stop = dm.borders["test"][1]
    values = np.concatenate([dm.datasets["train"].values.numpy(),
                             dm.datasets["val"].values.numpy()[LOOKBACK:],
                             dm.datasets["test"].values.numpy()[LOOKBACK:]])
    assert values.shape[0] == stop
    windows = plot_windows(len(dm.datasets["test"]))
    with tempfile.TemporaryDirectory() as tmp:
        series = os.path.join(tmp, "series.npz")
        np.savez(series, values=values, columns=np.array(dm.columns), val_rows=dm.borders["val"][1] - dm.borders["val"][0] - LOOKBACK,
                 test_rows=stop - dm.borders["test"][0] - LOOKBACK)
        out = os.path.join(tmp, "result.json")
        cmd = [nf_python, os.path.join(HERE, "nf_ett.py"), "--series", series, "--model", model.removeprefix("nf_"),
               "--dataset", dataset, "--horizon", str(horizon), "--lookback", str(LOOKBACK), "--seed", str(seed),
               "--test-batch", str(TEST_BATCH), "--patchtst-epochs", str(patchtst_epochs), "--plot-windows", ",".join(map(str, windows)), "--out", out]
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        result = json.load(open(out))
    if seed == 0:
        preds = {int(i): np.array(p) for i, p in result.pop("plot_forecasts").items()}
        save_forecasts(f"{dataset}_M_{horizon}", model, dm, preds)
    else:
        result.pop("plot_forecasts", None)
    return result


# -- the report ----------------------------------------------------------------------------------
def _cells(runs: list[dict]) -> dict:
    cells: dict = {}
    for r in runs:
        cells.setdefault((r["dataset"], r["features"], r["horizon"], r["model"]), []).append(r)
    return cells


def _mean_sd(rows: list[dict], key: str) -> str:
    """mean ± sd (sample) over the seeds; the seed count when it is not the standard 3."""
    v = np.array([r[key] for r in rows])
    if len(v) == 1:
        return f"{v[0]:.3f} (1 seed)"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" + ("" if len(v) == 3 else f" ({len(v)} seeds)")


def write_report(runs: list[dict], command: str) -> None:
    cells = _cells(runs)
    models = [m for m in (*MODELS, *PEERS) if any(k[3] == m for k in cells)]
    commands = list(dict.fromkeys(r.get("command", command) for r in runs))
    lines = ["# ETTh1 / ETTh2 at the standard protocol (test MSE on z-scored values, mean ± sd over seeds)", "",
             "The runs below came from " + ", ".join(f"`{c}`" for c in commands) + " (`--full` runs them all; a "
             "rerun skips the runs already in the rows). Rows: `benchmarks/timeseries/results/ett_runs.jsonl` (one "
             "per run, with its epochs, wall time, the load average before it and the epoch cap if one was set).", "",
             "Protocol: 12/4/4-month splits, each later split starting 336 rows early; z-score fitted on the train "
             "rows; every test window (2,785 / 2,689 / 2,545 / 2,161 at horizons 96 / 192 / 336 / 720); the best "
             "checkpoint by validation MSE (neuralforecast: its own early stopping on validation loss). "
             "`nf_*`: neuralforecast on the same scaled series and windows.", ""]
    for features in ("M", "S"):
        rows_here = [k for k in cells if k[1] == features]
        if not rows_here:
            continue
        present = [m for m in models if any(k[3] == m and k[1] == features for k in cells)]
        lines += [f"## {'Multivariate (M)' if features == 'M' else 'Univariate (S, target OT)'}", "",
                  "| data | horizon | " + " | ".join(present) + (" | best ssmzoo vs nf_patchtst |" if features == "M" else " |"),
                  "|---|---|" + "---|" * len(present) + ("---|" if features == "M" else "")]
        for dataset in DATASETS:
            for horizon in HORIZONS:
                row = [dataset, str(horizon)]
                means = {}
                for m in present:
                    rs = cells.get((dataset, features, horizon, m))
                    if rs:
                        means[m] = float(np.mean([r["mse"] for r in rs]))
                        cap = {r.get("max_epochs_cap") for r in rs} - {None}
                        row.append(_mean_sd(rs, "mse") + (f" (≤{min(cap)} ep)" if cap else ""))
                    else:
                        row.append("—")
                if all(c == "—" for c in row[2:]):
                    continue
                if features == "M":
                    ours = {m: v for m, v in means.items() if m not in PEERS}
                    if ours and "nf_patchtst" in means:
                        best = min(ours, key=ours.get)
                        won = ours[best] < means["nf_patchtst"]
                        row.append(f"{best} {ours[best]:.3f} vs {means['nf_patchtst']:.3f}: "
                                   f"**{'ssmzoo' if won else 'PatchTST'}**")
                    else:
                        row.append("—")
                lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    drops = [(k, rs) for k, rs in cells.items()
             if any(abs(r["mse_drop_last"] - r["mse"]) > 5e-4 for r in rs)]
    lines += ["## With the last incomplete test batch dropped", "",
              "Codes that test with `drop_last=True` and batch 32 leave out the last 1 / 1 / 17 / 17 windows "
              "(horizons 96 / 192 / 336 / 720). Cells where that moves the mean MSE by more than 0.0005:", ""]
    if drops:
        lines += ["| data | mode | horizon | model | every window | drop_last |", "|---|---|---|---|---|---|"]
        for (d, f, h, m), rs in sorted(drops):
            lines.append(f"| {d} | {f} | {h} | {m} | {_mean_sd(rs, 'mse')} | {_mean_sd(rs, 'mse_drop_last')} |")
    else:
        lines.append("none (every difference is below 0.0005).")
    lines += ["", "## Published (test MSE) beside ours (mean over seeds, difference to the published number)", ""]
    for dataset, features, name, values, ours in PUBLISHED:
        lines.append(f"- {dataset} {features} {name}: {' / '.join(f'{v:.3f}' for v in values)}")
        for m in ours:
            rs = [cells.get((dataset, features, h, m)) for h in HORIZONS]
            if not any(rs):
                continue
            got = " / ".join(f"{np.mean([r['mse'] for r in r_]):.3f} ({100 * (np.mean([r['mse'] for r in r_]) / v - 1):+.1f}%)"
                             if r_ else "—" for r_, v in zip(rs, values))
            lines.append(f"  - {m}: {got}")
    lines += ["", "## Wall time per model (seconds per run, mean over runs; 1 thread, shared 2-core machine)", "",
              "| model | runs | seconds / run | epochs / run | load average before (mean) |", "|---|---|---|---|---|"]
    for m in models:
        rs = [r for k, v in cells.items() if k[3] == m for r in v]
        lines.append(f"| {m} | {len(rs)} | {np.mean([r['seconds'] for r in rs]):.0f} | "
                     f"{np.mean([r['epochs'] for r in rs]):.1f} | "
                     f"{np.mean([r.get('load_before', np.nan) for r in rs]):.1f} |")
    total = sum(r["seconds"] for r in runs)
    lines += ["", f"Sum of the runs' wall time: {total / 3600:.2f} h.", "",
              "Forecast plots (seed 0, target OT, scaled): `results/plots/ett_<data>_<mode>_<horizon>.png`.", ""]
    with open(os.path.join(RESULTS, "ett.md"), "w") as f:
        f.write("\n".join(lines))


def write_plots() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not os.path.isdir(FORECASTS):
        return
    os.makedirs(PLOTS, exist_ok=True)
    for name in sorted(os.listdir(FORECASTS)):
        if not name.endswith(".json"):
            continue
        cell = json.load(open(os.path.join(FORECASTS, name)))
        windows = sorted(cell["windows"].items(), key=lambda kv: int(kv[0]))
        fig, axes = plt.subplots(1, len(windows), figsize=(5 * len(windows), 3), dpi=80, squeeze=False)
        for ax, (i, w) in zip(axes[0], windows):
            hist = np.array(w["history"])[-2 * len(w["truth"]) :]
            t0 = -len(hist)
            ax.plot(range(t0, 0), hist, color="0.6", lw=0.8, label="history")
            ax.plot(range(len(w["truth"])), w["truth"], color="k", lw=1.2, label="truth")
            for m, pred in sorted(w["models"].items()):
                ax.plot(range(len(pred)), pred, lw=0.9, label=m)
            ax.set_title(f"test window {i}: forecast from {w['future_dates'][0]}", fontsize=8)
            ax.set_xlabel("hours after the forecast start", fontsize=8)
        axes[0][0].set_ylabel("OT (z-scored)", fontsize=8)
        axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.suptitle(name.removesuffix(".json").replace("_", " "), fontsize=9)
        fig.tight_layout()
        fig.savefig(os.path.join(PLOTS, f"ett_{name.removesuffix('.json')}.png"))
        plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="every data set, horizon, model and 3 seeds")
    p.add_argument("--report", action="store_true", help="only rewrite results/ett.md and the plots")
    p.add_argument("--data", default=str(data_root() / "ETT-small"), help="the folder holding ETTh1.csv, ETTh2.csv")
    p.add_argument("--datasets", nargs="+", default=None)
    p.add_argument("--horizons", nargs="+", type=int, default=None)
    p.add_argument("--models", nargs="+", default=None, help=f"of {', '.join((*MODELS, *PEERS))}")
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--max-epochs", type=int, default=None, help="cap every config's epochs (recorded with the result)")
    p.add_argument("--nf-patchtst-epochs", type=int, default=100,
                   help="neuralforecast PatchTST's epoch budget (the paper's script: 100); recorded as its cap")
    p.add_argument("--nf-python", default=os.environ.get("SSMZOO_NF_PYTHON", "/work/venv-ts/bin/python"),
                   help="a python with neuralforecast installed (pip install 'ssmzoo[bench]')")
    p.add_argument("--root", default="runs/benchmarks/ett", help="trainer.default_root_dir of our runs")
    args = p.parse_args()
    command = "python benchmarks/timeseries/ett.py " + " ".join(sys.argv[1:])
    if args.report:
        write_report(load_runs(), command)
        write_plots()
        return
    datasets = args.datasets or (list(DATASETS) if args.full else ["ETTh1"])
    horizons = args.horizons or (list(HORIZONS) if args.full else [96])
    models = args.models or (["nlinear", "dlinear", "s4d", "mamba", "mamba2", "spacetime_S", *PEERS] if args.full
                             else ["nlinear", "dlinear", "nf_nlinear", "nf_dlinear"])
    seeds = args.seeds or ([0, 1, 2] if args.full else [0])
    unknown = [m for m in models if m not in MODELS and m not in PEERS]
    if unknown:
        p.error(f"unknown models {unknown}; choose from {', '.join((*MODELS, *PEERS))}")
    if not os.path.isdir(args.data):
        p.error(f"--data {args.data}: no such folder; pass the ETT-small folder (github.com/zhouhaoyi/ETDataset)")
    torch.set_num_threads(1)  # 2 shared cores: one intra-op thread
    keep_freed_memory()  # as `ssmzoo fit` does; nf_ett.py sets the same for neuralforecast
    done = {(r["dataset"], r["horizon"], r["model"], r["seed"], r.get("max_epochs_cap")) for r in load_runs()}
    started = time.perf_counter()
    for dataset in datasets:
        for horizon in horizons:
            for model in models:
                for seed in seeds:
                    cap = args.max_epochs if model not in PEERS else (
                        args.nf_patchtst_epochs if model == "nf_patchtst" else None)
                    if (dataset, horizon, model, seed, cap) in done:
                        continue
                    load = os.getloadavg()[0]
                    if model in PEERS:
                        row = run_peer(model, dataset, horizon, seed, args.data, args.nf_python,
                                       args.nf_patchtst_epochs)
                    else:
                        row = run_ours(model, dataset, horizon, seed, args.data, args.root, cap)
                    row = {"dataset": dataset, "features": features_of(model), "horizon": horizon, "model": model,
                           "seed": seed, "max_epochs_cap": cap, "load_before": round(load, 2), "command": command,
                           "source": "neuralforecast" if model in PEERS else "ssmzoo", **row}
                    append_run(row)
                    print(json.dumps({k: row[k] for k in ("dataset", "features", "horizon", "model", "seed", "mse",
                                                           "mse_drop_last", "epochs", "seconds")}), flush=True)
                    write_report(load_runs(), command)
                    write_plots()
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min; table: {os.path.join(RESULTS, 'ett.md')}")


if __name__ == "__main__":
    main()
