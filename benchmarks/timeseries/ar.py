"""AR(p) fitting, p in {4, 8, 16}: SpaceTime vs S4D (and NLinear), test MSE in one command:

    python benchmarks/timeseries/ar.py

SpaceTime's claim (PAPERS.md): a companion SSM represents any AR(p) exactly, a diagonal SSM
cannot. Each series is a stable AR(p) with unit-variance noise; the table also gives the oracle:
the MSE of the true AR recursion's forecast from the same windows (the best any model can do).
Writes results/ar.md and results/ar.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# the checkout's ssmzoo, not an installed copy
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from common import build_model, single_thread, train_and_test

from ssmzoo.data.timeseries import ARDataModule

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def oracle_mse(dm: ARDataModule) -> float:
    """MSE (scaled units) of forecasting each test window with the true coefficients."""
    ds = dm.datasets["test"]
    phi, p = dm.phi, dm.p
    errs = []
    for i in range(len(ds)):
        x, y = ds[i]
        hist = list(x[:, 0].double().numpy() * dm.std + dm.mean)
        for _ in range(dm.horizon):
            hist.append(float(phi @ np.array(hist[-1 : -p - 1 : -1])))
        pred = (np.array(hist[-dm.horizon :]) - dm.mean) / dm.std
        errs.append((pred - y[:, 0].double().numpy()) ** 2)
    return float(np.mean(errs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", nargs="+", type=int, default=[4, 8, 16])
    ap.add_argument("--models", nargs="+", default=["spacetime", "s4d", "nlinear"])
    ap.add_argument("--length", type=int, default=6000)
    ap.add_argument("--lookback", type=int, default=64)
    ap.add_argument("--horizon", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--d-model", type=int, default=16)
    ap.add_argument("--d-state", type=int, default=32)
    ap.add_argument("--out", default=os.path.join(RESULTS, "ar"))
    args = ap.parse_args()
    single_thread()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    rows, start = [], time.perf_counter()
    for p in args.orders:
        dm = ARDataModule(p=p, length=args.length, lookback=args.lookback, horizon=args.horizon, seed=p,
                          batch_size=64, train_stride=2)
        row = {"p": p, "oracle": oracle_mse(dm)}
        for name in args.models:
            model = build_model(name, 1, 1, args.lookback, args.horizon, args.d_model, args.d_state)
            r = train_and_test(model, dm, args.epochs, 3e-3, patience=2)
            row[name] = r["mse"]
            row[f"{name}_seconds"] = r["seconds"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    total = time.perf_counter() - start
    with open(args.out + ".json", "w") as f:
        json.dump({"args": vars(args), "total_seconds": total, "rows": rows}, f, indent=2)
    with open(args.out + ".md", "w") as f:
        f.write(f"# AR(p) forecasting (lookback {args.lookback}, horizon {args.horizon}): test MSE, z-scored\n\n")
        f.write(f"Command: `python benchmarks/timeseries/ar.py {' '.join(sys.argv[1:])}`  \n")
        f.write(f"{args.epochs} epochs max (early stopping), d_model={args.d_model}, d_state={args.d_state}, "
                f"series length {args.length}; total {total / 60:.1f} min. "
                "Oracle: the true AR recursion from the same windows.\n\n")
        f.write("| p | oracle | " + " | ".join(args.models) + " |\n|---|---|" + "---|" * len(args.models) + "\n")
        for row in rows:
            f.write(f"| {row['p']} | {row['oracle']:.3f} | " + " | ".join(f"{row[m]:.3f}" for m in args.models) + " |\n")
    print(f"wrote {args.out}.md and .json in {total / 60:.1f} min")


if __name__ == "__main__":
    main()
