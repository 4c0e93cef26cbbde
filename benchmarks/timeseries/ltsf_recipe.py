"""LTSF-Linear's own training recipe, transcribed, on our windows: a check that our `ssmzoo fit` pipeline for
DLinear is not what stands between our numbers and the published ones.

    python benchmarks/timeseries/ltsf_recipe.py --horizons 192 720 --seeds 0 1 2 3 4 5 6 7 8 9

What the published code (github.com/cure-lab/LTSF-Linear: run_longExp.py, exp/exp_main.py, utils/tools.py,
data_provider/data_factory.py, scripts/EXP-LongForecasting/Linear/etth1.sh) does, read there and written out
here as a plain loop (this file is that peer, not a way to train our models: those go through `ssmzoo fit`):
Adam at lr 0.005, batch 32, training windows shuffled with the last incomplete batch dropped; up to 10 epochs;
after epoch e (1-based) the lr becomes 0.005 · 0.5^(e − 1) (``type1``); after each epoch the validation loss is
the mean over shuffled batches of 32 (last incomplete one dropped) of each batch's MSE, and training stops once
it has not improved for 3 epochs; the weights of the best validation epoch are tested over every test window.
The windows, z-scoring and model are ours (InformerDataModule, LinearForecaster with decomposition), which the
tests hold to the published code's split borders, window counts and DLinear layer.

Each run appends one JSON line (test MSE, also without the last incomplete test batch, epochs, seconds, the
load average before it, the command) to results/ltsf_recipe_runs.jsonl.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..", "..")))  # the checkout's ssmzoo
from ssmzoo.data import data_root  # noqa: E402
from ssmzoo.data.timeseries import InformerDataModule  # noqa: E402
from ssmzoo.models import LinearForecaster  # noqa: E402

RUNS = os.path.join(HERE, "results", "ltsf_recipe_runs.jsonl")
LR, BATCH, EPOCHS, PATIENCE, LOOKBACK = 0.005, 32, 10, 3, 336


def run(dm: InformerDataModule, horizon: int, seed: int) -> dict:
    torch.manual_seed(seed)
    channels = dm.n_inputs
    model = LinearForecaster(channels, channels, LOOKBACK, horizon, decomposition=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    train = DataLoader(dm.datasets["train"], BATCH, shuffle=True, drop_last=True)
    val = DataLoader(dm.datasets["val"], BATCH, shuffle=True, drop_last=True)
    test = DataLoader(dm.datasets["test"], BATCH, shuffle=False)
    best, best_state, waited, epochs = None, None, 0, 0
    for epoch in range(1, EPOCHS + 1):
        model.train()
        for x, y in train:
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val_loss = float(np.mean([torch.nn.functional.mse_loss(model(x), y).item() for x, y in val]))
        epochs = epoch
        if best is None or val_loss < best:
            best, best_state, waited = val_loss, copy.deepcopy(model.state_dict()), 0
        else:
            waited += 1
            if waited >= PATIENCE:
                break
        for group in optimizer.param_groups:
            group["lr"] = LR * 0.5 ** (epoch - 1)
    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        errors = [((model(x) - y) ** 2).sum(dim=(1, 2)) for x, y in test]
    per_window = torch.cat(errors)
    n = len(per_window)
    kept = n - n % BATCH
    return {"mse": float(per_window.sum() / (n * horizon * channels)),
            "mse_drop_last": float(per_window[:kept].sum() / (kept * horizon * channels)),
            "best_val_loss": best, "epochs": epochs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(data_root() / "ETT-small"), help="the folder holding ETTh1.csv")
    p.add_argument("--dataset", default="ETTh1")
    p.add_argument("--horizons", nargs="+", type=int, default=[96, 192, 336, 720])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = p.parse_args()
    torch.set_num_threads(1)
    command = "python benchmarks/timeseries/ltsf_recipe.py " + " ".join(sys.argv[1:])
    for horizon in args.horizons:
        dm = InformerDataModule(os.path.join(args.data, args.dataset + ".csv"), features="M", lookback=LOOKBACK,
                                horizon=horizon, batch_size=BATCH)
        dm.setup()
        for seed in args.seeds:
            load, started = os.getloadavg()[0], time.perf_counter()
            row = {"dataset": args.dataset, "features": "M", "horizon": horizon, "model": "dlinear", "seed": seed,
                   **run(dm, horizon, seed), "seconds": round(time.perf_counter() - started, 1),
                   "load_before": round(load, 2), "command": command}
            os.makedirs(os.path.dirname(RUNS), exist_ok=True)
            with open(RUNS, "a") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
