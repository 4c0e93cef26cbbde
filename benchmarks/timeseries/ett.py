"""ETTh1 / ETTh2, univariate (S) and multivariate (M), lookback 336, horizons 96-720:
SpaceTime vs NLinear vs S4D, test MSE/MAE on z-scored values, in one command:

    python benchmarks/timeseries/ett.py --data /path/to/ETT-small     # default $SSMZOO_DATA/ETT-small

Sized for 2 shared CPU cores (small models, every 16th training window, few epochs with early
stopping); the published numbers come from full-size models trained far longer.
Every forecaster is trained and tested through the ``ssmzoo`` command (benchmarks/timeseries/common.py);
runs go under --root. Writes results/ett.md and results/ett.json, and one forecast plot per (dataset, mode)
at h=96.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# the checkout's ssmzoo, not an installed copy
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from common import model_spec, single_thread, train_and_test

from ssmzoo.data import data_root

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(data_root() / "ETT-small"), help="folder holding ETTh1.csv, ...")
    p.add_argument("--datasets", nargs="+", default=["ETTh1", "ETTh2"])
    p.add_argument("--features", nargs="+", default=["S", "M"])
    p.add_argument("--horizons", nargs="+", type=int, default=[96, 192, 336, 720])
    p.add_argument("--models", nargs="+", default=["spacetime", "nlinear", "s4d"])
    p.add_argument("--lookback", type=int, default=336)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-stride", type=int, default=16)
    p.add_argument("--val-stride", type=int, default=8)
    p.add_argument("--d-model", type=int, default=16)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--no-plots", action="store_true", help="skip the forecast plots")
    p.add_argument("--out", default=os.path.join(RESULTS, "ett"))
    p.add_argument("--root", default="runs/benchmarks/timeseries", help="trainer.default_root_dir of the runs")
    args = p.parse_args()
    if not os.path.isdir(args.data):
        p.error(f"--data {args.data}: no such folder; pass the ETT-small folder (github.com/zhouhaoyi/ETDataset)")
    single_thread()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    lr = {"spacetime": 3e-3, "s4d": 3e-3, "nlinear": 3e-3, "dlinear": 3e-3}
    rows, start = [], time.perf_counter()
    for dataset in args.datasets:
        for features in args.features:
            for horizon in args.horizons:
                data = {"class_path": "ssmzoo.data.timeseries.InformerDataModule",
                        "init_args": {"path": os.path.join(args.data, f"{dataset}.csv"), "features": features,
                                      "lookback": args.lookback, "horizon": horizon, "batch_size": 32,
                                      "train_stride": args.train_stride, "val_stride": args.val_stride}}
                for name in args.models:
                    plot_dir = (os.path.join(RESULTS, "plots", f"{dataset}_{features}_{name}")
                                if horizon == min(args.horizons) and not args.no_plots else None)
                    r = train_and_test(model_spec(name, args.d_model, args.d_state), data, args.epochs, lr[name],
                                       run_name=f"{dataset}_{features}_{horizon}_{name}", root=args.root,
                                       plot_dir=plot_dir)
                    row = {"dataset": dataset, "features": features, "horizon": horizon, "model": name, **r}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    total = time.perf_counter() - start
    with open(args.out + ".json", "w") as f:
        json.dump({"args": vars(args), "total_seconds": total, "rows": rows}, f, indent=2)
    with open(args.out + ".md", "w") as f:
        f.write(f"# ETT forecasting, lookback {args.lookback} (test MSE / MAE, z-scored)\n\n")
        f.write(f"Command: `python benchmarks/timeseries/ett.py {' '.join(sys.argv[1:])}`  \n")
        f.write(f"{args.epochs} epochs max (early stopping, patience 1), every {args.train_stride}th training window, "
                f"d_model={args.d_model}, d_state={args.d_state}, 1 thread; total {total / 60:.1f} min.\n\n")
        f.write("| dataset | mode | horizon | " + " | ".join(f"{m} MSE | {m} MAE" for m in args.models) + " |\n")
        f.write("|---|---|---|" + "---|---|" * len(args.models) + "\n")
        for dataset in args.datasets:
            for features in args.features:
                for horizon in args.horizons:
                    cells = []
                    for m in args.models:
                        r = next(r for r in rows if (r["dataset"], r["features"], r["horizon"], r["model"]) ==
                                 (dataset, features, horizon, m))
                        cells.append(f"{r['mse']:.3f} | {r['mae']:.3f}")
                    f.write(f"| {dataset} | {features} | {horizon} | " + " | ".join(cells) + " |\n")
        f.write("\n| model | seconds (sum over runs) |\n|---|---|\n")
        for m in args.models:
            f.write(f"| {m} | {sum(r['seconds'] for r in rows if r['model'] == m):.0f} |\n")
    print(f"wrote {args.out}.md and .json in {total / 60:.1f} min")


if __name__ == "__main__":
    main()
