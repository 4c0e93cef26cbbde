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

from offline_data import ett_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ETT = ett_dir()


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


@pytest.mark.skipif(ETT is None, reason="ETT-small is neither under $SSMZOO_DATA nor in shared/data beside the checkout")
def test_etth1_standard_split():
    dm = InformerDataModule(str(ETT / "ETTh1.csv"), features="S", lookback=336, horizon=96)
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
    dm.setup()
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


def test_informer_default_path_and_missing_file_name_the_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMZOO_DATA", str(tmp_path))
    dm = InformerDataModule(name="ETTm2", features="M", lookback=8, horizon=4)
    assert dm.path == str(tmp_path / "ETT-small" / "ETTm2.csv") and dm.split == "ettm"
    for read in (lambda: dm.n_inputs, dm.setup):
        with pytest.raises(FileNotFoundError, match="--data.init_args.path") as error:
            read()
        assert str(tmp_path / "ETT-small" / "ETTm2.csv") in str(error.value)


def test_channel_counts_read_only_the_header(tmp_path):
    """n_inputs / n_outputs, which the CLI links into the model when it is built, read the header line only;
    the values are read (and checked) in setup."""
    path = write_csv(tmp_path / "x.csv", 50, columns=("date", "a", "b", "c", "OT"), bad=(10, 2, "oops"))
    for features, shapes in {"M": (4, 4), "MS": (4, 1), "S": (1, 1)}.items():
        dm = InformerDataModule(path, features=features, lookback=8, horizon=4)
        assert (dm.n_inputs, dm.n_outputs) == shapes
        assert dm.datasets == {}
    with pytest.raises(ValueError, match="'oops' is not a number"):
        dm.setup()
    no_target = write_csv(tmp_path / "y.csv", 50, columns=("date", "a"))
    with pytest.raises(ValueError, match="missing target column 'OT'.*--data.init_args.target"):
        _ = InformerDataModule(no_target, features="M").n_inputs


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"features": "X"}, "features"),
        ({"split": "daily"}, "split"),
        ({"lookback": 0}, "lookback"),
        ({"horizon": 2.5}, "horizon"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_workers": -1}, "num_workers"),
        ({"name": ""}, "name"),
    ],
)
def test_informer_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=f"InformerDataModule: {message}"):
        InformerDataModule(**{"path": "x.csv", **kwargs})


def test_ar_datamodule_checks_in_init_and_generates_in_setup():
    dm = ARDataModule(p=3, length=400, lookback=16, horizon=4)
    assert dm.datasets == {} and not hasattr(dm, "phi")  # nothing generated yet
    dm.setup()
    assert dm.phi.shape == (3,) and {k: len(v) for k, v in dm.datasets.items()} == {
        "train": 280 - 16 - 4 + 1, "val": 40 - 4 + 1, "test": 80 - 4 + 1}
    with pytest.raises(ValueError, match="length=100 splits into 70 / 10 / 20 rows"):
        ARDataModule(length=100, lookback=16, horizon=16)
    for kwargs, message in (({"p": 0}, "p must"), ({"noise_std": 0}, "noise_std"), ({"batch_size": 0}, "batch_size")):
        with pytest.raises(ValueError, match=f"ARDataModule: {message}"):
            ARDataModule(**kwargs)


def test_forecasting_task_bad_arguments():
    model = LinearForecaster(1, 1, 16, 4)
    for kwargs, message in (({"lr": 0}, "lr"), ({"weight_decay": -1}, "weight_decay"), ({"n_plots": -1}, "n_plots")):
        with pytest.raises(ValueError, match=f"ForecastingTask: {message}"):
            ForecastingTask(model, **kwargs)


def test_forecasting_task_declares_what_its_runs_monitor():
    assert (ForecastingTask.monitor, ForecastingTask.monitor_mode) == ("val/mse", "min")
    assert ForecastingTask.headline == {"test_mse": "test/mse", "test_mae": "test/mae"}
