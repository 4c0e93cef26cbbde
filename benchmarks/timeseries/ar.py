"""AR(p) fitting, p in {4, 8, 16}: SpaceTime vs S4D (and NLinear), test MSE in one command:

    python benchmarks/timeseries/ar.py

SpaceTime's claim (arXiv 2303.09489): a companion SSM represents any AR(p) exactly, a diagonal SSM
cannot. Each series is a stable AR(p) with unit-variance noise; the table also gives the oracle:
the MSE of the true AR recursion's forecast from the same windows (the best any model can do).
A second table isolates the claim: one companion vs one diagonal SSM convolution of state size p,
fitted as one-step-ahead predictors (the forecasters above all end in a linear lookback -> horizon
map, which can hold the AR predictor whatever the SSM in front of it).
Every forecaster is trained and tested through the ``ssmzoo`` command (benchmarks/timeseries/common.py);
runs go under --root. Writes results/ar.md and results/ar.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# the checkout's ssmzoo, not an installed copy
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from common import model_spec, single_thread, train_and_test

from ssmzoo import layers
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


def one_step_kernel_fit(layer_name: str, p: int, dm: ARDataModule, steps: int, seed: int = 0) -> float:
    """The paper's claim at its smallest: one SSM convolution (d_model 1, state size p, no output
    map) trained to predict u_{t+1} from u_{≤t} on the whole train series; test one-step MSE.
    The AR(p) predictor is the FIR kernel φ: a companion SSM with d >= p holds it exactly, a sum
    of p decaying (complex) exponentials, i.e. a diagonal SSM, in general does not."""
    torch.manual_seed(seed)
    state = {"companion": {"d_state": p}, "s4d": {"d_state": 2 * p}}[layer_name]  # S4D stores N/2 pairs
    layer = layers.build(layer_name, d_model=1, activation="identity", output="none", **state).double()
    train = dm.datasets["train"].values[:, :1].double()[None]  # (1, T, 1)
    test = dm.datasets["test"].values[:, :1].double()[None]
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(layer(train[:, :-1]), train[:, 1:])
        loss.backward()
        opt.step()
    with torch.no_grad():  # skip the first lookback predictions, which see zeros before the start
        err = layer(test[:, :-1])[:, dm.lookback :] - test[:, 1 + dm.lookback :]
    return float(err.pow(2).mean())


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
    ap.add_argument("--kernel-steps", type=int, default=1000)
    ap.add_argument("--out", default=os.path.join(RESULTS, "ar"))
    ap.add_argument("--root", default="runs/benchmarks/timeseries", help="trainer.default_root_dir of the runs")
    args = ap.parse_args()
    single_thread()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    rows, start = [], time.perf_counter()
    for p in args.orders:
        data_args = {"p": p, "length": args.length, "lookback": args.lookback, "horizon": args.horizon, "seed": p,
                     "batch_size": 64, "train_stride": 2}
        dm = ARDataModule(**data_args)  # the same seeded series the CLI runs build, for the oracle
        dm.setup()
        row = {"p": p, "oracle": oracle_mse(dm), "one_step_oracle": (dm.noise_std / dm.std) ** 2}
        for name in ("companion", "s4d"):
            t = time.perf_counter()
            row[f"one_step_{name}"] = one_step_kernel_fit(name, p, dm, args.kernel_steps)
            row[f"one_step_{name}_seconds"] = time.perf_counter() - t
        for name in args.models:
            r = train_and_test(model_spec(name, args.d_model, args.d_state),
                               {"class_path": "ssmzoo.data.timeseries.ARDataModule", "init_args": data_args},
                               args.epochs, 3e-3, run_name=f"ar{p}_{name}", root=args.root, patience=2)
            row[name] = r["mse"]
            row[f"{name}_seconds"] = r["seconds"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    total = time.perf_counter() - start
    with open(args.out + ".json", "w") as f:
        json.dump({"args": vars(args), "total_seconds": total, "rows": rows}, f, indent=2)
    write_markdown(args, rows, total)
    print(f"wrote {args.out}.md and .json in {total / 60:.1f} min")


def write_markdown(args: argparse.Namespace, rows: list[dict], total: float) -> None:
    with open(args.out + ".md", "w") as f:
        f.write(f"# AR(p) forecasting (lookback {args.lookback}, horizon {args.horizon}): test MSE, z-scored\n\n")
        f.write(f"Command: `python benchmarks/timeseries/ar.py {' '.join(sys.argv[1:])}`  \n")
        f.write(f"{args.epochs} epochs max (early stopping), d_model={args.d_model}, d_state={args.d_state}, "
                f"series length {args.length}; total {total / 60:.1f} min. "
                "Oracle: the true AR recursion from the same windows.\n\n")
        f.write("| p | oracle | " + " | ".join(args.models) + " |\n|---|---|" + "---|" * len(args.models) + "\n")
        for row in rows:
            f.write(f"| {row['p']} | {row['oracle']:.3f} | " + " | ".join(f"{row[m]:.3f}" for m in args.models) + " |\n")
        f.write(f"\n## One SSM convolution, one-step-ahead (state size p, {args.kernel_steps} full-batch Adam steps)\n\n")
        f.write("| p | oracle (noise variance) | companion SSM | diagonal SSM (S4D) |\n|---|---|---|---|\n")
        for row in rows:
            f.write(f"| {row['p']} | {row['one_step_oracle']:.4f} | {row['one_step_companion']:.4f} "
                    f"| {row['one_step_s4d']:.4f} |\n")


if __name__ == "__main__":
    main()
