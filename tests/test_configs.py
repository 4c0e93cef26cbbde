"""Every shipped config trains: `ssmzoo fit` for two steps on each config under configs/ whose data is
available offline (command-line overrides make the model and data tiny), then its results.json is checked.
Configs whose data is absent are skipped, naming what is missing and the flag that points at it."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import yaml

from offline_data import ett_dir
from test_fashion_mnist import write_fashion
from test_lra_data import write_cifar, write_imdb, write_pathfinder
from ssmzoo.cli import run
from ssmzoo.data import data_root
from ssmzoo.data.lra.fashion_mnist import DEBIAN_DIR as fashion_mnist_dir
from ssmzoo.data.lra.image import default_data_dir as cifar_dir
from ssmzoo.data.lra.pathfinder import default_data_dir as pathfinder_dir
from ssmzoo.data.lra.text import default_aan_dir, default_imdb_dir
from ssmzoo.tasks import ClassificationTask, ForecastingTask, LanguageModelingTask, RecallTask

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml"))
LM_CONFIGS = [c for c in CONFIGS if c.startswith("configs/lm/")]
# Where the user keeps the real data sets ($SSMZOO_DATA when the tests start; the fixtures below point it at
# temporary folders for generated data, so it is read once, here).
USER_DATA = os.environ.get("SSMZOO_DATA")

# The nested model made tiny, by class: every model class a config uses needs an entry here.
TINY_MODELS = {
    "ssmzoo.models.SequenceModel": {"d_model": "8", "n_layers": "1"},
    "ssmzoo.models.SpaceTime": {"d_model": "8", "d_state": "8", "n_blocks": "1"},
    "ssmzoo.models.SSMForecaster": {"d_model": "8", "n_layers": "1", "layer_args": "{d_state: 8}"},
    "ssmzoo.models.LinearForecaster": {},
    "ssmzoo.models.RAMba": {"d_model": "16", "n_lower_layers": "1", "local_per_hsa": "1", "heads": "2",
                            "chunk_size": "4", "top_k": "2"},
    "ssmzoo.models.LanguageModel": {"d_model": "8", "n_layers": "1"},
    **{f"ssmzoo.models.{titans}": {"d_model": "8", "n_layers": "1", "heads": "2", "memory_heads": "2"}
       for titans in ("MAC", "MAG", "MAL")},
}
# Language-modelling configs train on this stand-in corpus (three documents: train, val, test), whatever their path.
STANDIN_TEXT = ["To be, or not to be, that is the question:\n" * 12, "Whether 'tis nobler in the mind to suffer\n" * 12,
                "The slings and arrows of outrageous fortune,\n" * 12]
SYNTHETIC = {"SelectiveCopyingDataModule": {}, "InductionHeadsDataModule": {"test_seq_len": 32},
             "NeedleDataModule": {}, "PasskeyDataModule": {"seq_len": 40}, "MQARDataModule": {}}


def data_overrides(data: dict, scratch: Path) -> tuple[list[str], str | None]:
    """(arguments that make the config's data tiny and point at it, or why this test does not fit it);
    ``scratch`` is a folder for stand-in files."""
    name, args = data["class_path"].rsplit(".", 1)[1], data.get("init_args") or {}
    if name == "TextDataModule":
        corpus = scratch / "corpus"
        corpus.mkdir(parents=True, exist_ok=True)
        for i, text in enumerate(STANDIN_TEXT):
            (corpus / f"doc{i}.txt").write_text(text)
        tiny = {"path": corpus, "seq_len": 16, "batch_size": 2, "val_split": 1, "test_split": 1}
        if args.get("tokenizer", "byte") not in ("byte", "bpe"):  # a tokenizer.json: one trained on the stand-in
            tiny.update(tokenizer="bpe", bpe_vocab_size=300)
        return [f"--data.init_args.{k}={v}" for k, v in tiny.items()], None
    if name in SYNTHETIC:
        tiny = {"num_train": 8, "num_val": 4, "num_test": 4, "batch_size": 4, **SYNTHETIC[name]}
        return [f"--data.init_args.{k}={v}" for k, v in tiny.items()], None
    if name == "ListOpsDataModule":
        if args.get("data_dir"):
            return [], f"needs ListOps files at {args['data_dir']} (--data.init_args.data_dir)"
        tiny = {"n_train": 16, "n_val": 4, "n_test": 4, "min_length": 5, "max_length": 40, "max_depth": 3,
                "max_args": 4, "batch_size": 4}
        return [f"--data.init_args.{k}={v}" for k, v in tiny.items()], None
    if name == "GeneratedPathfinderDataModule":  # generated offline, 40 images (cached for the next configs)
        return ["--data.init_args.n=40", "--data.init_args.generator_workers=1", "--data.init_args.batch_size=4"], None
    if name == "FashionMNISTDataModule":
        # Fitted on tiny IDX files by the next test (whether or not Debian's package is installed); the Debian
        # files themselves are read by test_fashion_mnist.py::test_real_debian_files.
        return [], (f"fitted on Fashion-MNIST IDX files written by the next test instead (the real files at "
                    f"{fashion_mnist_dir} are read by test_fashion_mnist.py)")
    if name == "ARDataModule":
        return ["--data.init_args.length=1000", "--data.init_args.batch_size=8"], None
    if name == "InformerDataModule":
        folder = ett_dir()
        if folder is None:
            return [], f"needs ETT-small under $SSMZOO_DATA ({data_root() / 'ETT-small'}); or pass --data.init_args.path"
        csv = folder / f"{args.get('name', 'ETTh1')}.csv"
        return [f"--data.init_args.path={csv}", "--data.init_args.batch_size=4"], None
    where = {
        "LRAImageDataModule": cifar_dir(),
        "LRATextDataModule": default_imdb_dir(),
        "LRARetrievalDataModule": default_aan_dir(),
        "PathfinderDataModule": pathfinder_dir(args.get("resolution", 32)),
    }[name]
    if not Path(where).is_dir():
        return [], f"needs the {name} files at {where} (or pass --data.init_args.data_dir)"
    return [f"--data.init_args.data_dir={where}", "--data.init_args.batch_size=4"], None


@pytest.fixture(scope="module")
def data_home(tmp_path_factory):
    """Generated data (ListOps) goes to a temporary $SSMZOO_DATA; real data sets are found before it is set."""
    home = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSMZOO_DATA", str(home))
        torch.set_num_threads(1)
        yield home


def test_the_configs_are_found():
    assert "configs/lra/listops/s4d_small.yaml" in CONFIGS and any(c.startswith("configs/timeseries/") for c in CONFIGS)
    # every LRA task at the published scale, and the CPU mini-LRA, for each model
    for model in ("s4", "s4d", "mamba", "mamba2", "hsa"):
        for task in ("listops", "text", "retrieval", "image", "pathfinder", "pathx"):
            assert f"configs/lra/{task}/{model}.yaml" in CONFIGS
    for model in ("s4", "s4d", "mamba", "mamba2"):
        for task in ("listops", "pathfinder", "fashion_mnist"):
            assert f"configs/lra/mini/{task}_{model}.yaml" in CONFIGS


def user_data_overrides(spec: dict, scratch: Path, monkeypatch) -> tuple[list[str], str | None]:
    """``data_overrides`` with $SSMZOO_DATA as the user set it (where the real data sets are), then back to the
    temporary data home."""
    generated = os.environ["SSMZOO_DATA"]
    if USER_DATA is None:
        monkeypatch.delenv("SSMZOO_DATA")
    else:
        monkeypatch.setenv("SSMZOO_DATA", USER_DATA)
    try:
        return data_overrides(spec["data"], scratch)
    finally:
        monkeypatch.setenv("SSMZOO_DATA", generated)


@pytest.mark.parametrize("config", CONFIGS)
def test_shipped_config_fits_and_writes_results(config, data_home, tmp_path, monkeypatch):
    spec = yaml.safe_load((ROOT / config).read_text())
    data_args, missing = user_data_overrides(spec, tmp_path / "standin", monkeypatch)
    if missing:
        pytest.skip(missing)
    fit_tiny_and_check(config, spec, data_args, tmp_path)


@pytest.mark.parametrize("config", LM_CONFIGS)
def test_language_model_config_fits_in_bf16_mixed_precision(config, data_home, tmp_path, monkeypatch):
    """``--trainer.precision bf16-mixed`` (autocast, float32 weights) on every language-model config: training,
    validation with its generated sample, and the test. Before: Mamba-2 (mamba2, ramba) and HSA (hsa_swa, ramba)
    failed in their first step."""
    spec = yaml.safe_load((ROOT / config).read_text())
    data_args, missing = user_data_overrides(spec, tmp_path / "standin", monkeypatch)
    if missing:
        pytest.skip(missing)
    fit_tiny_and_check(config, spec, data_args, tmp_path, "--trainer.precision=bf16-mixed")


def test_real_data_is_looked_for_where_ssmzoo_data_pointed_when_the_tests_started(tmp_path, monkeypatch):
    """Before: the config tests deleted $SSMZOO_DATA to look for real data sets, so ETT under a user's
    $SSMZOO_DATA was never found (only under ~/.cache/ssmzoo)."""
    user = tmp_path / "user_data"
    (user / "ETT-small").mkdir(parents=True)
    (user / "ETT-small" / "ETTh1.csv").write_text("date,OT\n")
    monkeypatch.setattr(__import__(__name__), "USER_DATA", str(user))
    monkeypatch.setenv("SSMZOO_DATA", str(tmp_path / "generated"))
    spec = yaml.safe_load((ROOT / "configs/timeseries/etth1/s4d_M_96.yaml").read_text())
    args, missing = user_data_overrides(spec, tmp_path / "standin", monkeypatch)
    assert missing is None and f"--data.init_args.path={user / 'ETT-small' / 'ETTh1.csv'}" in args
    assert os.environ["SSMZOO_DATA"] == str(tmp_path / "generated")


def write_standin(name: str, folder: Path, resolution: int) -> None:
    """A few samples in the official file format of the data set (see test_lra_data.py)."""
    if name == "LRAImageDataModule":
        write_cifar(folder / "cifar-10-batches-py", n_per_batch=8)
    elif name == "PathfinderDataModule":
        write_pathfinder(folder, n=40, resolution=resolution)
    elif name == "LRATextDataModule":
        write_imdb(folder)
    elif name == "FashionMNISTDataModule":
        write_fashion(folder, n_train=16, n_test=8)
    else:
        assert name == "LRARetrievalDataModule"
        folder.mkdir()
        rows = "".join(f"{i % 2}\ta{i}\tb{i}\tdocument {i} text\tanother {i}\n" for i in range(8))
        for split in ("train", "eval", "test"):
            (folder / f"new_aan_pairs.{split}.tsv").write_text(rows)


STANDIN = [c for c in CONFIGS if yaml.safe_load((ROOT / c).read_text())["data"]["class_path"].rsplit(".", 1)[1]
           in ("LRAImageDataModule", "PathfinderDataModule", "LRATextDataModule", "LRARetrievalDataModule",
               "FashionMNISTDataModule")]


@pytest.mark.parametrize("config", STANDIN)
def test_shipped_config_fits_on_files_in_the_official_format(config, data_home, tmp_path):
    """The configs whose data sets are downloads, on a few stand-in samples written in the official format:
    the model the config builds (tokens or pixels, single or paired) trains on the batches its datamodule makes."""
    spec = yaml.safe_load((ROOT / config).read_text())
    name = spec["data"]["class_path"].rsplit(".", 1)[1]
    write_standin(name, tmp_path / "data", spec["data"]["init_args"].get("resolution", 32))
    data_args = [f"--data.init_args.data_dir={tmp_path / 'data'}", "--data.init_args.batch_size=4"]
    if name in ("LRAImageDataModule", "FashionMNISTDataModule"):
        data_args.append("--data.init_args.val_size=8")  # of the 40 (CIFAR) or 16 (Fashion-MNIST) training images
    fit_tiny_and_check(config, spec, data_args, tmp_path / "runs")


def fit_tiny_and_check(config: str, spec: dict, data_args: list[str], root: Path, *extra: str) -> None:
    model = spec["model"]["init_args"]["model"]
    assert model["class_path"] in TINY_MODELS, f"add {model['class_path']} to TINY_MODELS"
    tiny = dict(TINY_MODELS[model["class_path"]])
    model_init = model.get("init_args") or {}
    if any(model_init.get(k) in ("mamba2", "mamba3") for k in ("layer", "lower_layer", "local_layer")):
        tiny["d_model"] = "32"  # expand · d_model must hold whole heads of the config's headdim (up to 64)
    model_args = [f"--model.init_args.model.init_args.{k}={v}" for k, v in tiny.items()]
    trainer_args = ["--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
                    "--trainer.num_sanity_val_steps=0", "--trainer.val_check_interval=1", "--trainer.accelerator=cpu",
                    "--trainer.devices=1", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                    "--trainer.log_every_n_steps=1",
                    f"--trainer.default_root_dir={root}", "--data.init_args.num_workers=0"]
    task_args = ["--model.init_args.sample_length=4"] if spec["model"]["class_path"].endswith("LanguageModelingTask") else []
    cli = run(["fit", "--config", str(ROOT / config), *trainer_args, *model_args, *task_args, *data_args, *extra])

    task = type(cli.model)
    results = json.loads((Path(cli.trainer.log_dir) / "results.json").read_text())
    assert results["steps"] == 2 and results["monitor"] == task.monitor
    assert set(task.headline) <= set(results) and all(math.isfinite(results[k]) for k in task.headline)
    if task is ClassificationTask:
        assert 0 <= results["test_acc"] <= 1 and 0 <= results["majority_baseline"] <= 1
        assert cli.model.model.d_output == cli.datamodule.num_classes
    elif task is LanguageModelingTask:
        assert results["test_bpb"] > 0 and results["test_ppl"] == pytest.approx(math.exp(results["test_loss"]), rel=1e-5)
        assert cli.model.model.vocab_size == cli.datamodule.vocab_size
        assert cli.model.last_sample is not None  # a sample was generated at validation
        assert (Path(cli.trainer.log_dir) / "samples.txt").is_file()
    elif task is RecallTask:
        assert 0 <= results["test_exact"] <= results["test_acc"] <= 1
        assert cli.model.model.vocab_size == cli.datamodule.vocab_size
    else:
        assert task is ForecastingTask
        # Jensen: the mean absolute error squared never exceeds the mean squared error
        assert 0 <= results["test_mae"] ** 2 <= results["test_mse"] * (1 + 1e-6)
        assert (cli.model.model.lookback, cli.model.model.horizon) == (cli.datamodule.lookback, cli.datamodule.horizon)
    # the checkpoint alone rebuilds the model, with the values the data decided
    reloaded = task.load_from_checkpoint(results["checkpoint"])
    assert reloaded.state_dict().keys() == cli.model.state_dict().keys()
