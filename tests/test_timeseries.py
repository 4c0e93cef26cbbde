"""The Informer CSV loader, the AR(p) generator, the forecasting task and the configs."""

from __future__ import annotations

import glob
import json
import os

import lightning as L
import numpy as np
import pytest
import torch

from ssmzoo.data.timeseries import (
    ARDataModule,
    InformerDataModule,
    generate_ar,
    random_stable_ar,
    read_informer_csv,
    split_borders,
)
from ssmzoo.models import LinearForecaster, SpaceTime, SSMForecaster
from ssmzoo.tasks import ForecastingTask

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ETT = os.path.join(ROOT, "..", "shared", "data", "ETT-small")


@pytest.fixture(autouse=True)
def one_thread():
    # tiny models on shared cores: one intra-op thread is many times faster than two contended ones
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_csv(path, n_rows, columns=("date", "a", "b", "OT"), seed=0, bad=None):
    rng = np.random.default_rng(seed)
    lines = [",".join(columns)]
    for i in range(n_rows):
        vals = [f"{v:.6f}" for v in rng.normal(size=len(columns) - 1)]
        lines.append(",".join([f"2020-01-01 {i:05d}"] + vals))
    if bad is not None:
        row, col, text = bad
        parts = lines[row + 1].split(",")
        parts[col] = text
        lines[row + 1] = ",".join(parts)
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# -- the loader --------------------------------------------------------------------------------
def test_missing_file_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.csv"):
        read_informer_csv(str(tmp_path / "nothere.csv"), "OT")


def test_missing_target_column(tmp_path):
    path = write_csv(tmp_path / "x.csv", 50, columns=("date", "a", "b"))
    with pytest.raises(ValueError, match="missing target column 'OT'"):
        InformerDataModule(path, features="S", lookback=8, horizon=4).setup()


def test_missing_date_column(tmp_path):
    path = write_csv(tmp_path / "x.csv", 50, columns=("time", "a", "OT"))
    with pytest.raises(ValueError, match="missing column 'date'"):
        read_informer_csv(path, "OT")


def test_non_numeric_value_names_line_and_column(tmp_path):
    path = write_csv(tmp_path / "x.csv", 50, bad=(6, 2, "oops"))
    with pytest.raises(ValueError, match=r"line 8, column 'b': 'oops' is not a number"):
        read_informer_csv(path, "OT")
    path = write_csv(tmp_path / "y.csv", 50, bad=(3, 1, "nan"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        read_informer_csv(path, "OT")


def test_too_few_rows_for_lookback_and_horizon(tmp_path):
    path = write_csv(tmp_path / "x.csv", 100)  # ratio split: test has 20 rows + lookback
    with pytest.raises(ValueError, match="lookback \\+ horizon = 40"):
        InformerDataModule(path, lookback=16, horizon=24).setup()
    with pytest.raises(ValueError, match="needs 14400 rows"):
        InformerDataModule(path, lookback=16, horizon=4, split="etth").setup()


def test_feature_modes_windows_and_train_only_scaling(tmp_path):
    path = write_csv(tmp_path / "custom.csv", 200, columns=("date", "OT", "a", "b"))
    raw = read_informer_csv(path, "OT")
    assert raw.columns == ["a", "b", "OT"]  # target moved last
    shapes = {"M": (3, 3), "S": (1, 1), "MS": (3, 1)}
    for features, (n_in, n_out) in shapes.items():
        dm = InformerDataModule(path, features=features, lookback=10, horizon=5, batch_size=4)
        dm.setup()
        assert (dm.n_inputs, dm.n_outputs) == (n_in, n_out)
        x, y = next(iter(dm.test_dataloader()))
        assert x.shape == (4, 10, n_in) and y.shape == (4, 5, n_out)
    # ratio split: train rows [0, 140), val [130, 160), test [150, 200); z-score from train rows only
    dm = InformerDataModule(path, features="M", lookback=10, horizon=5)
    dm.setup()
    mean, std = raw.values[:140].mean(0), raw.values[:140].std(0)
    expected = (raw.values[150:160] - mean) / std  # the first test window's history
    x, y = dm.datasets["test"][0]
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y.numpy(), (raw.values[160:165] - mean) / std, rtol=1e-5, atol=1e-5)
    assert len(dm.datasets["test"]) == 50 - 10 - 5 + 1


@pytest.mark.skipif(not os.path.isfile(os.path.join(ETT, "ETTh1.csv")), reason="ETT-small is not beside the checkout")
def test_etth1_standard_split():
    dm = InformerDataModule(os.path.join(ETT, "ETTh1.csv"), features="S", lookback=336, horizon=96)
    dm.setup()
    assert dm.split == "etth"
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 8640 - 336 - 96 + 1, "val": 2785, "test": 2785}
    raw = read_informer_csv(dm.path, "OT").values[:, -1]
    mean, std = raw[:8640].mean(), raw[:8640].std()
    x, y = dm.datasets["val"][0]
    np.testing.assert_allclose(x[:, 0].numpy(), (raw[8640 - 336 : 8640] - mean) / std, rtol=1e-5, atol=1e-5)
    assert float(y[0, 0]) == pytest.approx((raw[8640] - mean) / std, abs=1e-5)


def test_split_borders():
    per_month = 30 * 24 * 4  # ETTm: 15-minute rows
    assert split_borders(69680, 96, "ettm") == [(0, 12 * per_month), (12 * per_month - 96, 16 * per_month),
                                                (16 * per_month - 96, 20 * per_month)]
    assert split_borders(1000, 10, "ratio") == [(0, 700), (690, 800), (790, 1000)]


# -- AR(p) ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [1, 4, 7])
def test_random_ar_is_stable_and_recoverable(p):
    phi = random_stable_ar(p, seed=p)
    companion_roots = np.roots(np.concatenate([[1.0], -phi]))
    assert np.abs(companion_roots).max() < 0.96
    x = generate_ar(phi, 20000, noise_std=1.0, seed=3)
    # least squares on lagged values recovers the coefficients
    lagged = np.stack([x[p - i - 1 : len(x) - i - 1] for i in range(p)], 1)
    fit, *_ = np.linalg.lstsq(lagged, x[p:], rcond=None)
    np.testing.assert_allclose(fit, phi, atol=0.05)


# -- the task ------------------------------------------------------------------------------------
def test_task_fits_tests_and_plots(tmp_path):
    dm = ARDataModule(p=2, length=800, lookback=16, horizon=4, batch_size=32)
    model = LinearForecaster(1, 1, 16, 4)
    task = ForecastingTask(model, lr=1e-2, plot_dir=str(tmp_path), n_plots=2)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(task, datamodule=dm)
    trainer.test(task, datamodule=dm, verbose=False)
    # the reported test MSE / MAE are the averages over every forecast value of the test split
    xs, ys = zip(*[dm.datasets["test"][i] for i in range(len(dm.datasets["test"]))])
    with torch.no_grad():
        err = model(torch.stack(xs)) - torch.stack(ys)
    assert task.test_metrics["mse"] == pytest.approx(err.pow(2).mean().item(), rel=1e-5)
    assert task.test_metrics["mae"] == pytest.approx(err.abs().mean().item(), rel=1e-5)
    assert task.test_metrics["mse"] < 1.0  # better than predicting the (scaled) mean
    assert len(glob.glob(str(tmp_path / "forecast_*.png"))) == 2
    assert json.loads((tmp_path / "test_metrics.json").read_text())["mse"] == pytest.approx(task.test_metrics["mse"])


def test_task_rejects_mismatched_horizon():
    task = ForecastingTask(LinearForecaster(1, 1, 16, 4))
    with pytest.raises(ValueError, match="horizon=4"):
        task.training_step((torch.randn(2, 16, 1), torch.randn(2, 5, 1)), 0)


@pytest.mark.parametrize("model", [
    lambda: SpaceTime(2, 1, 24, 6, d_model=8, d_state=4, n_blocks=1),
    lambda: SSMForecaster(2, 1, 24, 6, layer="s4d", layer_args={"d_state": 4}, d_model=8, n_layers=1),
    lambda: LinearForecaster(2, 1, 24, 6, decomposition=True, moving_average=5),
])
def test_forecasters_share_the_interface(model):
    m = model()
    x, y = torch.randn(3, 24, 2), torch.randn(3, 6, 1)
    assert m(x).shape == (3, 6, 1)
    loss = m.loss(x, y)
    assert torch.isfinite(loss)
    loss.backward()


# -- configs -------------------------------------------------------------------------------------
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "timeseries", "**", "*.yaml"), recursive=True))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_configs_instantiate_through_the_cli(config, monkeypatch):
    from lightning.pytorch.cli import LightningCLI

    monkeypatch.setattr("sys.argv", ["ssmzoo"])  # only the args below

    cli = LightningCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       run=False, args=["--config", config, "--trainer.logger=false"], save_config_kwargs={"overwrite": True})
    assert isinstance(cli.model, ForecastingTask)
    assert isinstance(cli.datamodule, (InformerDataModule, ARDataModule))
    assert cli.model.model.horizon == cli.datamodule.horizon and cli.model.model.lookback == cli.datamodule.lookback


def test_spacetime_etth1_config_exists():
    assert os.path.join(ROOT, "configs", "timeseries", "etth1", "spacetime_S_96.yaml") in CONFIGS
