"""The ETT configs under configs/timeseries/<data set>/<model>_<features>_<horizon>.yaml, written from one table
so that every horizon and data set gets the same recipe:

    python benchmarks/timeseries/ett_configs.py          # rewrites the configs (tests check they are current)

Settings (the published ones where there are any; PAPERS.md, and the published code read for this):
- nlinear, dlinear: LTSF-Linear's scripts (cure-lab/LTSF-Linear, scripts/EXP-LongForecasting/Linear): features M,
  lookback 336, batch 32, Adam at lr 0.005 (ETTh1) / 0.05 (ETTh2) halved after every epoch from the second
  (``lradj type1``), 10 epochs, early stopping patience 3, one linear map shared by the channels.
- spacetime_S: SpaceTime's README commands for ETT (HazyResearch/spacetime): univariate (its default
  ``features S``), lag 336, d_model 128, kernel_dim 64, 1 encoder block, batch 50, dropout 0.25, AdamW lr 1e-3
  weight decay 1e-4, timm cosine schedule (10 warmup epochs, 300-epoch cycle, lr_min 1e-5), up to 500 epochs,
  early stopping patience 20, ``data_transform mean``, ``loss informer_rmse``, criterion weights 1 1 1.
- spacetime_M: the same network, channel-independent over the 7 channels (no published M setting).
- s4d, mamba, mamba2: ours (no published forecasting setting): PatchTST's recipe (RevIN, channel independence,
  patches of 16 every 8 steps, flattening head, its ETTh width 16 and dropout 0.3) around two layers of the SSM,
  plus a linear lookback -> horizon map of the normalised series (RLinear) that the SSM path corrects; trained like
  the linear models but at lr 1e-3. On ETTh1 M h96 (seed 0) that linear path took the validation MSE from 0.705
  (d_model 32, dropout 0.2, no linear path) to 0.682; NLinear's is 0.671.
"""

from __future__ import annotations

import argparse
import os

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DATASETS = ("ETTh1", "ETTh2")
HORIZONS = (96, 192, 336, 720)
LOOKBACK = 336
TASK = "ssmzoo.tasks.ForecastingTask"
DATA = "ssmzoo.data.timeseries.InformerDataModule"

# LTSF-Linear's learning rates (its scripts: etth1.sh 0.005, etth2.sh 0.05)
LINEAR_LR = {"ETTh1": 0.005, "ETTh2": 0.05}


def _ssm_forecaster(layer: str, layer_args: dict) -> dict:
    return {"class_path": "ssmzoo.models.SSMForecaster",
            "init_args": {"layer": layer, "layer_args": layer_args, "d_model": 16, "n_layers": 2, "dropout": 0.3,
                          "instance_norm": "revin", "channel_independent": True, "patch_len": 16, "stride": 8,
                          "head": "flatten", "linear_skip": True}}


SPACETIME = {"d_model": 128, "d_state": 64, "n_blocks": 1, "encoder_kernels": 16, "embedding": "repeat",
             "diff_orders": [0, 1, 2, 3], "ma_per_group": 4, "ma_window_range": [4, 720], "dropout": 0.25,
             "instance_norm": "mean", "lag_weight": 1.0, "input_weight": 1.0, "loss": "rmse"}
SPACETIME_TRAINING = {"task": {"lr": 0.001, "weight_decay": 0.0001, "lr_schedule": "cosine", "warmup_epochs": 10,
                               "cosine_epochs": 300, "min_lr": 1e-05},
                      "max_epochs": 500, "patience": 20, "batch_size": 50}
LINEAR_TRAINING = {"task": {"lr_schedule": "halve"}, "max_epochs": 10, "patience": 3, "batch_size": 32}
SSM_TRAINING = {"task": {"lr": 0.001, "lr_schedule": "halve"}, "max_epochs": 10, "patience": 3, "batch_size": 32}

# name -> (features, what it is, model spec, training)
MODELS: dict[str, tuple[str, str, dict, dict]] = {
    "nlinear": ("M", "NLinear at LTSF-Linear's settings",
                {"class_path": "ssmzoo.models.LinearForecaster", "init_args": {"decomposition": False}}, LINEAR_TRAINING),
    "dlinear": ("M", "DLinear at LTSF-Linear's settings",
                {"class_path": "ssmzoo.models.LinearForecaster", "init_args": {"decomposition": True}}, LINEAR_TRAINING),
    "s4d": ("M", "S4D forecaster (ours: RevIN, channel-independent patches)", _ssm_forecaster("s4d", {"d_state": 64}),
            SSM_TRAINING),
    "mamba": ("M", "Mamba forecaster (ours: RevIN, channel-independent patches)",
              _ssm_forecaster("mamba", {"d_state": 16}), SSM_TRAINING),
    "mamba2": ("M", "Mamba-2 forecaster (ours: RevIN, channel-independent patches)",
               _ssm_forecaster("mamba2", {"d_state": 32, "headdim": 16}), SSM_TRAINING),
    "spacetime_S": ("S", "SpaceTime at the paper's ETT settings (univariate)",
                    {"class_path": "ssmzoo.models.SpaceTime", "init_args": SPACETIME}, SPACETIME_TRAINING),
    "spacetime_M": ("M", "SpaceTime, the paper's ETT network, channel-independent (no published M setting)",
                    {"class_path": "ssmzoo.models.SpaceTime", "init_args": {**SPACETIME, "channel_independent": True}},
                    SPACETIME_TRAINING),
}


def config_name(model: str, dataset: str, horizon: int) -> str:
    """configs/timeseries/<data set>/<model>_<horizon>.yaml (model names carry their feature mode)."""
    base = model if "_" in model else f"{model}_{MODELS[model][0]}"
    return f"configs/timeseries/{dataset.lower()}/{base}_{horizon}.yaml"


def config(model: str, dataset: str, horizon: int) -> tuple[str, dict]:
    """(header comment, config) of ``model`` on ``dataset`` at ``horizon``."""
    features, what, spec, training = MODELS[model]
    task_args = dict(training["task"])
    if model in ("nlinear", "dlinear"):
        task_args["lr"] = LINEAR_LR[dataset]
    cfg = {
        "seed_everything": 0,
        "early_stopping_patience": training["patience"],
        "trainer": {"max_epochs": training["max_epochs"], "accelerator": "cpu"},
        "model": {"class_path": TASK, "init_args": {"model": spec, **task_args, "n_plots": 2}},
        "data": {"class_path": DATA, "init_args": {
            "name": dataset, "features": features, "target": "OT", "lookback": LOOKBACK, "horizon": horizon,
            "batch_size": training["batch_size"], "train_drop_last": True}},
    }
    mode = "multivariate (all 7 channels)" if features == "M" else "univariate (OT)"
    header = (f"# {dataset}, {mode}, lookback {LOOKBACK}, horizon {horizon}: {what}.\n"
              f"#   ssmzoo fit --config {config_name(model, dataset, horizon)}\n"
              f"# Written by benchmarks/timeseries/ett_configs.py (edit the table there, not this file). The data is\n"
              f"# $SSMZOO_DATA/ETT-small/{dataset}.csv; elsewhere: --data.init_args.path FILE.\n")
    return header, cfg


def render(model: str, dataset: str, horizon: int) -> str:
    header, cfg = config(model, dataset, horizon)
    return header + yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None, width=110)


def all_configs() -> dict[str, str]:
    """{path relative to the checkout: text} of every ETT config."""
    return {config_name(m, d, h): render(m, d, h) for d in DATASETS for m in MODELS for h in HORIZONS}


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    for path, text in all_configs().items():
        full = os.path.join(ROOT, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(text)
    print(f"wrote {len(all_configs())} configs under configs/timeseries/")


if __name__ == "__main__":
    main()
