"""One neuralforecast run for benchmarks/timeseries/ett.py, in the python that has neuralforecast (the
``[bench]`` extra): it reads the z-scored series ett.py wrote (our splits and scaling), trains, forecasts every
test window with ``cross_validation(step_size=1)`` and writes the metrics as JSON.

    /path/to/venv-with-neuralforecast/bin/python benchmarks/timeseries/nf_ett.py --series S.npz --model patchtst \
        --dataset ETTh1 --horizon 96 --seed 0 --out result.json

Every channel is one series (neuralforecast's models are channel-independent), so the multivariate (M) metric
is the MSE over every channel, window and step, as ours. Settings are the published ones mapped onto
neuralforecast's arguments (a window batch of B multivariate windows = B · channels one-series windows):
- nlinear, dlinear: LTSF-Linear's (batch 32, lr 0.005 on ETTh1 / 0.05 on ETTh2, 10 epochs, lr halved every
  ~epoch, validation every epoch, early stopping patience 3);
- patchtst: PatchTST's ETTh script (3 layers, 4 heads, d_model 16, d_ff 128, dropout 0.3, fc_dropout 0.3,
  patch 16 / stride 8, RevIN without affine, subtracting the mean, batch 128, lr 1e-4, its type3 decay as a
  halving every ~6.6 epochs), but at most --patchtst-epochs epochs (the paper: 100) with early stopping
  patience 10 epochs, to fit a CPU budget.
neuralforecast keeps the last weights, not the best validation checkpoint.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import logging
import sys
import time
import warnings

import numpy as np
import pandas as pd
import torch


def keep_freed_memory() -> None:
    """The allocator setting our runs get from ssmzoo.allocator (serve blocks up to 1 GiB from the heap and keep
    them when freed), so that neither side pays page faults the other does not: neuralforecast cuts every window
    of a series anew at each step, hundreds of MB that glibc would otherwise map and unmap each time."""
    if not sys.platform.startswith("linux"):
        return
    mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
    mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD


def build(name: str, dataset: str, horizon: int, lookback: int, seed: int, channels: int, train_windows: int,
          patchtst_epochs: int, max_steps: int | None = None):
    from neuralforecast.losses.pytorch import MSE
    from neuralforecast.models import DLinear, NLinear, PatchTST

    cap = (lambda steps: steps if max_steps is None else min(steps, max_steps))
    quiet = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "enable_model_summary": False,
             "logger": False, "enable_checkpointing": False}
    if name in ("nlinear", "dlinear"):
        steps = train_windows // 32  # one LTSF-Linear epoch of batch 32
        kwargs = {"h": horizon, "input_size": lookback, "loss": MSE(), "valid_loss": MSE(), "max_steps": cap(10 * steps),
                  "learning_rate": {"ETTh1": 0.005, "ETTh2": 0.05}.get(dataset, 0.005), "num_lr_decays": 9,
                  "val_check_steps": steps, "early_stop_patience_steps": 3, "batch_size": channels,
                  "windows_batch_size": 32 * channels, "scaler_type": "identity", "random_seed": seed, **quiet}
        return (NLinear if name == "nlinear" else DLinear)(**kwargs)
    if name == "patchtst":
        steps = max(1, train_windows // 128)
        return PatchTST(h=horizon, input_size=lookback, encoder_layers=3, n_heads=4, hidden_size=16,
                        linear_hidden_size=128, dropout=0.3, fc_dropout=0.3, head_dropout=0.0, patch_len=16, stride=8,
                        revin=True, revin_affine=False, revin_subtract_last=False, loss=MSE(), valid_loss=MSE(),
                        learning_rate=1e-4, max_steps=cap(patchtst_epochs * steps),
                        num_lr_decays=max(1, round(patchtst_epochs / 6.6)), val_check_steps=steps,
                        early_stop_patience_steps=10, batch_size=channels, windows_batch_size=128 * channels,
                        scaler_type="identity", random_seed=seed, **quiet)
    raise ValueError(f"unknown model {name!r}: nlinear, dlinear or patchtst")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--series", required=True, help="npz: values (time, channels) z-scored, columns, val_rows, test_rows")
    p.add_argument("--model", required=True, choices=("nlinear", "dlinear", "patchtst"))
    p.add_argument("--dataset", required=True)
    p.add_argument("--horizon", type=int, required=True)
    p.add_argument("--lookback", type=int, default=336)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-batch", type=int, default=32, help="for the metric without the last incomplete batch")
    p.add_argument("--patchtst-epochs", type=int, default=100, help="PatchTST's epoch budget (its script: 100)")
    p.add_argument("--plot-windows", default="", help="test window indices whose target forecasts to return")
    p.add_argument("--max-steps", type=int, default=None, help="cap the training steps (quick checks only)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    from neuralforecast import NeuralForecast

    data = np.load(args.series)
    values, columns = data["values"], [str(c) for c in data["columns"]]
    val_rows, test_rows = int(data["val_rows"]), int(data["test_rows"])
    n, c = values.shape
    df = pd.DataFrame({"unique_id": np.repeat(columns, n), "ds": np.tile(np.arange(n), c),
                       "y": values.T.reshape(-1).astype(np.float32)})
    train_windows = n - val_rows - test_rows - args.lookback - args.horizon + 1
    model = build(args.model, args.dataset, args.horizon, args.lookback, args.seed, c, train_windows,
                  args.patchtst_epochs, args.max_steps)
    nf = NeuralForecast(models=[model], freq=1)
    started = time.perf_counter()
    cv = nf.cross_validation(df=df, val_size=val_rows, test_size=test_rows, n_windows=None, step_size=1)
    seconds = time.perf_counter() - started
    trainer = getattr(model, "_trainer", None)
    trained = int(trainer.global_step) if trainer is not None else int(model.max_steps)
    steps_per_epoch = max(1, train_windows // (128 if args.model == "patchtst" else 32))
    name = [col for col in cv.columns if col not in ("unique_id", "ds", "cutoff", "y")][0]
    cutoffs = np.sort(cv["cutoff"].unique())
    n_windows = test_rows - args.horizon + 1
    if len(cutoffs) != n_windows:
        raise RuntimeError(f"neuralforecast made {len(cutoffs)} test windows, expected {n_windows}")
    err = (cv[name] - cv["y"]).to_numpy()
    kept = cv["cutoff"] <= cutoffs[(n_windows // args.test_batch) * args.test_batch - 1]
    result = {"mse": float(np.mean(err**2)), "mae": float(np.mean(np.abs(err))),
              "mse_drop_last": float(np.mean(err[kept.to_numpy()] ** 2)),
              "mae_drop_last": float(np.mean(np.abs(err[kept.to_numpy()]))),
              "seconds": round(seconds, 1), "steps": trained, "epochs": round(trained / steps_per_epoch, 1),
              "params": int(sum(q.numel() for q in model.parameters())), "windows": n_windows,
              "neuralforecast_args": {k: v for k, v in model.hparams.items() if isinstance(v, (int, float, str, bool))}}
    target = columns[-1]
    plot = {}
    for i in [int(s) for s in args.plot_windows.split(",") if s]:
        rows = cv[(cv["unique_id"] == target) & (cv["cutoff"] == cutoffs[i])].sort_values("ds")
        plot[str(i)] = rows[name].astype(float).tolist()
    result["plot_forecasts"] = plot
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
