"""The Informer CSV loader, the AR(p) generator, the forecasting task and the configs."""

from __future__ import annotations

import glob
import json
import os

import lightning as L
import numpy as np
import pytest
import torch
from einops import repeat

from ssmzoo.data.timeseries import (
    ARDataModule,
    InformerDataModule,
    generate_ar,
    random_stable_ar,
    read_informer_csv,
    split_borders,
)
from ssmzoo.models import LinearForecaster, SpaceTime, SSMForecaster
from ssmzoo.models.instance_norm import InstanceNorm, split_channels
from ssmzoo.models.spacetime import preprocessing_taps
from ssmzoo.modules.fft_conv import fft_conv, fft_conv_reference
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


# -- the published protocol ----------------------------------------------------------------------
def write_hourly_csv(path, n_rows, n_channels=3, seed=0):
    """An ETT-shaped CSV: hourly dates from 2016-07-01, n_channels channels then OT."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n_rows, n_channels + 1)).cumsum(0) + np.arange(n_channels + 1) * 10
    dates = np.datetime64("2016-07-01T00:00") + np.arange(n_rows).astype("timedelta64[h]")
    header = "date," + ",".join([f"c{i}" for i in range(n_channels)] + ["OT"])
    rows = [f"{str(d).replace('T', ' ')}:00," + ",".join(f"{v:.6f}" for v in row) for d, row in zip(dates, values)]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return str(path), values, [str(d).replace("T", " ") + ":00" for d in dates]


def published_windows(n_rows, lookback, horizon, per_month):
    """Window counts as LTSF-Linear's / PatchTST's Dataset_ETT_hour computes them: border1s = [0, 12m − L,
    16m − L], border2s = [12m, 16m, 20m], len = border2 − border1 − L − H + 1 (written out here on purpose,
    independently of split_borders)."""
    m = per_month
    border1s = [0, 12 * m - lookback, 12 * m + 4 * m - lookback]
    border2s = [12 * m, 12 * m + 4 * m, 12 * m + 8 * m]
    return [b2 - b1 - lookback - horizon + 1 for b1, b2 in zip(border1s, border2s)]


def test_etth_splits_and_window_counts_equal_the_published_codes(tmp_path):
    """ETTh1's length (17,420 rows), lookback 336: 8,209 / 2,785 / 2,785 windows at horizon 96, as the published
    codes count them, and the split borders and train-only scaling behind them."""
    path, values, _ = write_hourly_csv(tmp_path / "ETTh1.csv", 17420)
    assert published_windows(17420, 336, 96, 720) == [8209, 2785, 2785]
    for horizon in (96, 192, 336, 720):
        dm = InformerDataModule(path, features="M", lookback=336, horizon=horizon)
        dm.setup()
        assert dm.split == "etth"
        assert dm.borders == {"train": (0, 8640), "val": (8640 - 336, 11520), "test": (11520 - 336, 14400)}
        counts = [len(dm.datasets[s]) for s in ("train", "val", "test")]
        assert counts == published_windows(17420, 336, horizon, 720)
    assert counts == [8640 - 336 - 720 + 1, 2880 - 720 + 1, 2880 - 720 + 1]
    # z-score with the train rows' mean and (population) std, as sklearn's StandardScaler fitted on train
    mean, std = values[:8640].mean(0), values[:8640].std(0)
    np.testing.assert_allclose(dm.mean, mean)
    np.testing.assert_allclose(dm.std, std)  # (assert_allclose returns None: never chain two with `and`)
    x, y = dm.datasets["test"][len(dm.datasets["test"]) - 1]  # the last test window ends at row 14,400
    np.testing.assert_allclose(y.numpy(), (values[14400 - 720 : 14400] - mean) / std, rtol=1e-5, atol=1e-5)
    x, y = dm.datasets["val"][0]  # the first validation window reads the last 336 train rows
    np.testing.assert_allclose(x.numpy(), (values[8640 - 336 : 8640] - mean) / std, rtol=1e-5, atol=1e-5)


def test_ettm_splits_and_window_counts_equal_the_published_codes(tmp_path):
    path, _, _ = write_hourly_csv(tmp_path / "ETTm2.csv", 69680, n_channels=1)
    dm = InformerDataModule(path, features="S", lookback=336, horizon=96)
    dm.setup()
    assert dm.split == "ettm"
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == published_windows(69680, 336, 96, 2880)


def test_window_dates_and_inverse_transform(tmp_path):
    path, values, dates = write_hourly_csv(tmp_path / "ETTh2.csv", 17420)
    dm = InformerDataModule(path, features="S", lookback=48, horizon=24)
    dm.setup()
    history, future = dm.window_dates("test", 5)
    start = 11520 - 48 + 5
    assert history == dates[start : start + 48] and future == dates[start + 48 : start + 72]
    assert future[0] == "2017-10-24 05:00:00"  # 11,525 hours (480 days, 5 h) after 2016-07-01 00:00
    x, y = dm.datasets["test"][5]
    np.testing.assert_allclose(dm.inverse_transform(y.numpy()), values[start + 48 : start + 72, -1:], rtol=1e-5)
    torch.testing.assert_close(dm.inverse_transform(y), torch.as_tensor(values[start + 48 : start + 72, -1:],
                                                                         dtype=torch.float32), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="index must be an int in \\[0, "):
        dm.window_dates("test", len(dm.datasets["test"]))
    with pytest.raises(ValueError, match="split must be"):
        dm.window_dates("holdout", 0)
    with pytest.raises(ValueError, match="the 1 outputs channels"):
        dm.inverse_transform(np.zeros((24, 4)))
    m = InformerDataModule(path, features="MS", lookback=48, horizon=24)
    assert m.inverse_transform(np.zeros((2, 4)), which="inputs").shape == (2, 4)


def test_train_drop_last(tmp_path):
    path, _, _ = write_hourly_csv(tmp_path / "x.csv", 300)  # ratio split: 210 train rows, 196 windows
    for drop, batches, last in ((False, 7, 196 - 6 * 32), (True, 6, 32)):
        dm = InformerDataModule(path, features="S", lookback=10, horizon=5, batch_size=32, train_drop_last=drop)
        loaded = list(dm.train_dataloader())
        assert len(loaded) == batches and len(loaded[-1][0]) == last
    with pytest.raises(ValueError, match="train_drop_last must be a bool"):
        InformerDataModule(path, train_drop_last=1)


# -- the task: drop_last metric and learning-rate schedules ----------------------------------------
def test_test_metrics_with_and_without_the_last_incomplete_batch():
    dm = ARDataModule(p=2, length=800, lookback=16, horizon=4, batch_size=32)
    dm.setup()  # 157 test windows: four batches of 32 and one of 29
    model = LinearForecaster(1, 1, 16, 4)
    task = ForecastingTask(model, n_plots=0)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.test(task, datamodule=dm, verbose=False)
    xs, ys = zip(*[dm.datasets["test"][i] for i in range(len(dm.datasets["test"]))])
    with torch.no_grad():
        err = model(torch.stack(xs)) - torch.stack(ys)
    kept = err[: 32 * (len(err) // 32)]
    assert len(err) % 32 and task.test_metrics["mse"] == pytest.approx(err.pow(2).mean().item(), rel=1e-5)
    assert task.test_metrics["mse_drop_last"] == pytest.approx(kept.pow(2).mean().item(), rel=1e-5)
    assert task.test_metrics["mae_drop_last"] == pytest.approx(kept.abs().mean().item(), rel=1e-5)
    assert task.test_metrics["mse_drop_last"] != task.test_metrics["mse"]
    # every batch full: the two agree
    dm.batch_size = len(dm.datasets["test"])
    trainer.test(task, datamodule=dm, verbose=False)
    assert task.test_metrics["mse_drop_last"] == task.test_metrics["mse"]


class _LearningRates(L.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize("schedule,kwargs,expected", [
    ("constant", {}, [1, 1, 1, 1, 1, 1]),
    # LTSF-Linear's type1: the lr of epoch e (1-based) is lr · 0.5^(e − 1), set after each epoch from the first
    ("halve", {}, [1, 1, 0.5, 0.25, 0.125, 0.0625]),
    # warmup from lr/1000 over 2 epochs, then cosine to min_lr at epoch 5, then flat
    ("cosine", {"warmup_epochs": 2, "cosine_epochs": 5, "min_lr": 0.001},
     [1e-3, 0.5005, 1.0, 0.5 * (1 + np.cos(np.pi / 3)) * 0.9 + 0.1, 0.5 * (1 + np.cos(2 * np.pi / 3)) * 0.9 + 0.1, 0.1]),
])
def test_learning_rate_schedules(schedule, kwargs, expected):
    dm = ARDataModule(p=2, length=400, lookback=16, horizon=4, batch_size=64)
    task = ForecastingTask(LinearForecaster(1, 1, 16, 4), lr=0.01, lr_schedule=schedule, n_plots=0, **kwargs)
    lrs = _LearningRates()
    trainer = L.Trainer(max_epochs=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", callbacks=[lrs], limit_val_batches=0)
    trainer.fit(task, datamodule=dm)
    np.testing.assert_allclose(lrs.lrs, 0.01 * np.array(expected), rtol=1e-9)


def test_forecasting_task_schedule_arguments():
    model = LinearForecaster(1, 1, 16, 4)
    for kwargs, message in (({"lr_schedule": "step"}, "lr_schedule"), ({"warmup_epochs": -1}, "warmup_epochs"),
                            ({"cosine_epochs": 0}, "cosine_epochs"), ({"min_lr": 1.0}, "min_lr")):
        with pytest.raises(ValueError, match=f"ForecastingTask: {message}"):
            ForecastingTask(model, **kwargs)


# -- instance normalisation and channel independence -------------------------------------------
@pytest.mark.parametrize("mode", ["last", "mean", "revin"])
def test_instance_norm_round_trip_and_statistics(mode):
    torch.manual_seed(0)
    norm = InstanceNorm(3, mode, affine=mode == "revin")
    if norm.weight is not None:
        with torch.no_grad():
            norm.weight.copy_(torch.tensor([0.5, 2.0, -1.5]))
            norm.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x = torch.randn(4, 30, 3, dtype=torch.float64) * 5 + 7
    norm = norm.double()
    z, stats = norm(x)
    plain = InstanceNorm(3, mode).double()(x)[0]
    if mode == "last":
        assert torch.all(plain[:, -1] == 0)
    else:
        torch.testing.assert_close(plain.mean(1), torch.zeros(4, 3, dtype=torch.float64))
    if mode == "revin":
        torch.testing.assert_close(plain.std(1, unbiased=False), torch.ones(4, 3, dtype=torch.float64), rtol=1e-4, atol=0)
    y = torch.randn(4, 6, 3, dtype=torch.float64) * 5 + 7
    torch.testing.assert_close(norm.inverse(norm.apply(y, stats), stats), y)
    # the last n channels only (the outputs of S / MS data)
    torch.testing.assert_close(norm.inverse(norm.apply(y[..., -1:], stats), stats), y[..., -1:])
    torch.testing.assert_close(norm.apply(y, stats)[..., -1:], norm.apply(y[..., -1:], stats))


def test_instance_norm_arguments():
    for kwargs, message in (({"mode": "std"}, "mode"), ({"affine": True, "mode": "last"}, "affine"),
                            ({"eps": 0}, "eps"), ({"n_channels": 0}, "n_channels")):
        with pytest.raises(ValueError, match=f"InstanceNorm: {message}"):
            InstanceNorm(**{"n_channels": 2, **kwargs})
    with pytest.raises(ValueError, match="x must be"):
        InstanceNorm(2)(torch.randn(2, 5, 3))


FORECASTERS = {
    "nlinear": lambda c: LinearForecaster(c, c, 24, 6),
    "dlinear_revin": lambda c: LinearForecaster(c, c, 24, 6, decomposition=True, moving_average=5, instance_norm="revin"),
    "s4d": lambda c: SSMForecaster(c, c, 24, 6, layer="s4d", layer_args={"d_state": 4}, d_model=8, n_layers=1,
                                   instance_norm="revin", channel_independent=True, patch_len=4, stride=2,
                                   head="flatten"),
    "mamba": lambda c: SSMForecaster(c, c, 24, 6, layer="mamba", layer_args={"d_state": 4}, d_model=8, n_layers=1,
                                     instance_norm="revin", revin_affine=True, channel_independent=True),
    "spacetime": lambda c: SpaceTime(c, c, 24, 6, d_model=8, d_state=4, embedding="repeat", instance_norm="revin",
                                     channel_independent=True),
}


@pytest.mark.parametrize("name", FORECASTERS)
def test_instance_norm_makes_forecasts_follow_shifts_and_scales(name):
    """With RevIN (or NLinear's last value) a window shifted by b and scaled by a > 0 is forecast as a · f + b."""
    torch.manual_seed(0)
    model = FORECASTERS[name](3).double().eval()
    x = torch.randn(2, 24, 3, dtype=torch.float64)
    a, b = (1.0 if name == "nlinear" else 3.0), torch.tensor([5.0, -2.0, 0.5], dtype=torch.float64)
    # (exact up to RevIN's eps, which the variance carries: 1e-5 against a variance near 1)
    torch.testing.assert_close(model(a * x + b), a * model(x) + b, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(model(a * x + b), model(x), rtol=1e-2)  # the forecast does depend on the window


@pytest.mark.parametrize("name", ["s4d", "mamba", "spacetime"])
def test_channel_independence(name):
    """Each channel's forecast reads only its own history, through weights shared by the channels."""
    torch.manual_seed(0)
    model = FORECASTERS[name](3).double().eval()
    x = torch.randn(2, 24, 3, dtype=torch.float64)
    changed = x.clone()
    changed[..., 0] = torch.randn(2, 24, dtype=torch.float64)
    y, y2 = model(x), model(changed)
    torch.testing.assert_close(y[..., 1:], y2[..., 1:])
    assert not torch.allclose(y[..., 0], y2[..., 0])
    # shared weights: channel 2's forecast is what the same model makes of it alone
    single = FORECASTERS[name](1).double().eval()
    single.load_state_dict({k: v[-1:] if k.startswith("norm.") else v for k, v in model.state_dict().items()})
    torch.testing.assert_close(single(x[..., 2:]), y[..., 2:])


def test_channel_independence_needs_matching_outputs():
    with pytest.raises(ValueError, match="channel_independent needs n_outputs == n_inputs"):
        SSMForecaster(3, 1, 24, 6, channel_independent=True)
    with pytest.raises(ValueError, match="channel_independent needs n_outputs == n_inputs"):
        SpaceTime(3, 1, 24, 6, d_model=8, d_state=4, channel_independent=True)


def ltsf_linear_reference(x, seasonal, trend, kernel, decomposition):
    """LTSF-Linear's models (cure-lab/LTSF-Linear models/NLinear.py and DLinear.py, individual=False) written out
    for the test: NLinear subtracts the last value; DLinear splits a replicate-padded moving average off."""
    if not decomposition:
        last = x[:, -1:]
        return seasonal((x - last).transpose(1, 2)).transpose(1, 2) + last
    half = (kernel - 1) // 2
    padded = torch.cat([x[:, :1].repeat(1, half, 1), x, x[:, -1:].repeat(1, half, 1)], dim=1)
    mean = torch.nn.functional.avg_pool1d(padded.transpose(1, 2), kernel, stride=1).transpose(1, 2)
    res = x - mean
    return (seasonal(res.transpose(1, 2)) + trend(mean.transpose(1, 2))).transpose(1, 2)


@pytest.mark.parametrize("decomposition", [False, True])
def test_linear_forecasters_equal_the_published_models(decomposition):
    torch.manual_seed(0)
    model = LinearForecaster(4, 4, 48, 12, decomposition=decomposition, moving_average=25).double()
    x = torch.randn(3, 48, 4, dtype=torch.float64).cumsum(1)
    expected = ltsf_linear_reference(x, model.linear, model.trend_linear, 25, decomposition)
    torch.testing.assert_close(model(x), expected)
    # MS: the last channel of the same forecast
    ms = LinearForecaster(4, 1, 48, 12, decomposition=decomposition).double()
    ms.load_state_dict(model.state_dict())
    torch.testing.assert_close(ms(x), expected[..., -1:])


def test_patches_cover_the_lookback_as_patchtst():
    """Patches of 16 every 8 steps over 336 steps, the series padded by repeating its last value 8 times: 42."""
    m = SSMForecaster(1, 1, 336, 96, d_model=8, n_layers=1, layer_args={"d_state": 4}, patch_len=16, stride=8)
    assert m.n_tokens == 42
    x = torch.arange(336.0).reshape(1, 336, 1)
    tokens = m._tokens(x)
    assert tokens.shape == (1, 42, 16)
    assert tokens[0, 0].tolist() == list(range(16)) and tokens[0, 40].tolist() == list(range(320, 336))
    assert tokens[0, 41].tolist() == list(range(328, 336)) + [335.0] * 8
    for kwargs, message in (({"stride": 17}, "stride"), ({"patch_len": 400}, "patch_len"), ({"head": "mlp"}, "head")):
        with pytest.raises(ValueError, match=f"SSMForecaster: {message}"):
            SSMForecaster(1, 1, 336, 96, **{"patch_len": 16, **kwargs})


# -- SpaceTime's preprocessing and loss ------------------------------------------------------
def test_spacetime_preprocessing_filters():
    """Groups of (Δ^0, Δ^1, Δ^2, Δ^3, 2 moving-average residuals), applied causally with zeros before the start."""
    u = torch.randn(50, dtype=torch.float64)
    windows = [3, 7, 80, 5]
    taps = preprocessing_taps(12, 50, [0, 1, 2, 3], 2, windows).double()
    y = fft_conv(u.expand(12, 50), taps)
    padded = torch.cat([torch.zeros(100, dtype=torch.float64), u])
    d1 = padded[1:] - padded[:-1]
    d2 = d1[1:] - d1[:-1]
    d3 = d2[1:] - d2[:-1]
    torch.testing.assert_close(y[0], u)
    torch.testing.assert_close(y[1], d1[-50:])
    torch.testing.assert_close(y[2], d2[-50:])
    torch.testing.assert_close(y[3], d3[-50:])
    for channel, w in ((4, 3), (5, 7), (10, 80), (11, 5)):  # a window longer than the series still divides by w
        mean = torch.stack([padded[100 + t - w + 1 : 100 + t + 1].sum() / w for t in range(50)])
        torch.testing.assert_close(y[channel], u - mean)
    assert torch.equal(taps[6], taps[0]) and torch.equal(taps[9], taps[3])  # the next group repeats the differences


@pytest.mark.parametrize("channel_independent", [False, True])
def test_spacetime_repeat_preprocessing_transforms_each_input_channel_once(channel_independent):
    """With the repeat embedding each input channel is transformed once and broadcast over its filters: the same
    values and gradients as filtering every repeated copy."""
    torch.manual_seed(0)
    model = SpaceTime(3, 3, 40, 5, d_model=24, d_state=4, encoder_kernels=4, embedding="repeat", ma_per_group=2,
                      channel_independent=channel_independent).double()
    z = torch.randn(2, 40, 3, dtype=torch.float64)
    z = (split_channels(z) if channel_independent else z).requires_grad_()
    fast = model._preprocess(z)
    copies = repeat(z, "b l c -> b (r c) l", r=24 // z.shape[-1])
    reference = fft_conv_reference(copies, model.preprocess).transpose(1, 2)
    torch.testing.assert_close(fast, reference, rtol=1e-10, atol=1e-10)
    weight = torch.randn_like(fast)
    (fast_grad,) = torch.autograd.grad((weight * fast).sum(), z)
    (reference_grad,) = torch.autograd.grad((weight * reference).sum(), z)
    torch.testing.assert_close(fast_grad, reference_grad, rtol=1e-10, atol=1e-10)
    with torch.no_grad():  # no graph kept for the fixed filters
        assert not model._preprocess(z).requires_grad


def test_spacetime_loss_terms():
    torch.manual_seed(0)
    x, y = torch.randn(4, 20, 1), torch.randn(4, 7, 1)
    kwargs = dict(d_model=8, d_state=4, embedding="repeat")
    model = SpaceTime(1, 1, 20, 7, **kwargs, loss="rmse")
    plain = SpaceTime(1, 1, 20, 7, **kwargs, loss="rmse", lag_weight=0.0, input_weight=0.0)
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(plain.loss(x, y), torch.nn.functional.mse_loss(model(x), y).sqrt())
    # the lag term: the decoder's one-step-ahead outputs from position lag_skip on, against the next value
    lag_only = SpaceTime(1, 1, 20, 7, **kwargs, loss="mse", lag_weight=1.0, input_weight=0.0, lag_skip=5)
    lag_only.load_state_dict(model.state_dict())
    _, z, out, _, _ = lag_only._run(x)
    series = torch.cat([x, y[:, :1]], 1) - x.mean(1, keepdim=True)
    expected = torch.nn.functional.mse_loss(lag_only(x), y) + torch.nn.functional.mse_loss(
        lag_only.output(out.lag_output)[:, 5:], series[:, 6:])
    torch.testing.assert_close(lag_only.loss(x, y), expected)
    with pytest.raises(ValueError, match="lag_skip"):
        SpaceTime(1, 1, 20, 7, **kwargs, lag_skip=20)
    with pytest.raises(ValueError, match="embedding='repeat' needs d_model=8 to be a multiple of the 3"):
        SpaceTime(3, 1, 20, 7, **kwargs)


# -- the shipped ETT configs -------------------------------------------------------------------
def test_ett_configs_are_the_generated_ones():
    """configs/timeseries/etth*/ are written by benchmarks/timeseries/ett_configs.py; edits go there."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ett_configs", os.path.join(ROOT, "benchmarks", "timeseries",
                                                                              "ett_configs.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.all_configs()
    shipped = {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "timeseries", "etth*", "*.yaml"))}
    assert shipped == set(expected)
    for path, text in expected.items():
        with open(os.path.join(ROOT, path)) as f:
            assert f.read() == text, f"{path} differs from what ett_configs.py writes; run it"
    assert len(expected) == 2 * 4 * len(module.MODELS)


def test_ssm_forecaster_linear_skip_is_rlinear_plus_the_layers():
    """With the layers' head zeroed the forecaster is the linear map of the RevIN-normalised series (RLinear)."""
    torch.manual_seed(0)
    model = SSMForecaster(3, 3, 24, 6, layer_args={"d_state": 4}, d_model=8, n_layers=1, instance_norm="revin",
                          channel_independent=True, patch_len=4, stride=2, head="flatten", linear_skip=True).double()
    x = torch.randn(2, 24, 3, dtype=torch.float64)
    full = model(x)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    rlinear = LinearForecaster(3, 3, 24, 6, instance_norm="revin").double()
    rlinear.linear.load_state_dict(model.skip.state_dict())
    torch.testing.assert_close(model(x), rlinear(x))
    assert not torch.allclose(full, rlinear(x))  # the layers did contribute before
