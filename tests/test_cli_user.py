"""The user's path through the ``ssmzoo`` command (issue #26): what the first minutes print, the errors a typo
gets, ``test`` without a checkpoint, ``predict`` for every task, the way from a trained run to generated text,
and several processes. Each test names what it caught before the fix it guards."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from ssmzoo.cli import main, run

ROOT = Path(__file__).resolve().parents[1]
MAIN_JOB = "configs/lra/listops/s4d_small.yaml"
# The main job made tiny (a few seconds): its own config, smaller data and a step budget.
TINY_LISTOPS = ["--data.init_args.n_train=64", "--data.init_args.n_val=16", "--data.init_args.n_test=16",
                "--data.init_args.max_length=40", "--data.init_args.batch_size=8",
                "--model.init_args.model.init_args.d_model=8", "--model.init_args.model.init_args.n_layers=1"]
STEPS = ["--trainer.max_steps=4", "--trainer.val_check_interval=4", "--trainer.log_every_n_steps=1",
         "--trainer.enable_model_summary=false"]
DOCS = ["Now is the winter of our discontent\nMade glorious summer by this sun of York;\n" * 6,
        "All the world's a stage,\nAnd all the men and women merely players;\n" * 6,
        "Friends, Romans, countrymen, lend me your ears;\n" * 8,
        "O Romeo, Romeo! wherefore art thou Romeo?\n" * 8]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMZOO_DATA", str(tmp_path / "data"))
    return tmp_path


def fit_listops(root: Path, *extra: str):
    return run(["fit", "--config", str(ROOT / MAIN_JOB), *TINY_LISTOPS, *STEPS,
                f"--trainer.default_root_dir={root}", *extra])


# -- several processes ------------------------------------------------------------------------------------------

def readme_ddp_command() -> list[str]:
    """The README's command for 2 CPU processes, exactly as printed there (continuation lines joined)."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines()
                if "--trainer.devices 2" in line and "s4d_small.yaml" in line and "--trainer.strategy ddp" in line)
    command = line.split("#")[0].split()
    assert command[:2] == ["ssmzoo", "fit"], line
    return command[1:]


@pytest.mark.slow
def test_the_readmes_ddp_command_finishes_with_its_test_and_results(tmp_path):
    """Before: the final test ran, then rank 0 asked trainer.log_dir (a collective) after rank 1 had returned:
    `[gloo] Connection closed by peer`, exit 1, no results.json. `ssmzoo test` on 2 devices failed the same way."""
    env = {**os.environ, "SSMZOO_DATA": str(tmp_path / "data"), "PYTHONPATH": str(ROOT)}
    shrink = [*TINY_LISTOPS, "--trainer.max_steps=4", f"--trainer.default_root_dir={tmp_path / 'runs'}"]
    for command in (readme_ddp_command() + shrink,
                    ["test", "--config", MAIN_JOB, "--trainer.accelerator", "cpu", "--trainer.devices", "2",
                     "--trainer.strategy", "ddp", "--ckpt_path", "last", *shrink]):
        done = subprocess.run([sys.executable, "-m", "ssmzoo.cli", *command], cwd=ROOT, env=env, timeout=600,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert done.returncode == 0, done.stdout[-5000:]
        written = re.findall(r"results in (\S+results\.json)", done.stdout)
        assert len(written) == 1, done.stdout[-3000:]  # one line, from rank 0
        results = json.loads(Path(written[0]).read_text())
        assert results["subcommand"] == command[0] and 0 <= results["test_acc"] <= 1
        assert not results.get("untrained") and (command[0] != "fit" or results["steps"] == 4)


# -- test without a checkpoint ---------------------------------------------------------------------------------

def test_test_without_a_checkpoint_says_untrained_in_the_output_and_the_results(data_home, capsys):
    """Before: it printed a test accuracy and wrote results.json as if a trained model had been tested."""
    cli = run(["test", "--config", str(ROOT / MAIN_JOB), *TINY_LISTOPS, f"--trainer.default_root_dir={data_home}"])
    captured = capsys.readouterr()
    assert "UNTRAINED" in captured.err and "UNTRAINED" in captured.out
    results = json.loads(cli.results_path.read_text())
    assert results["untrained"] is True and "--ckpt_path" in results["warning"]
    fitted = fit_listops(data_home / "fitted")
    tested = run(["test", "--config", str(ROOT / MAIN_JOB), *TINY_LISTOPS, f"--trainer.default_root_dir={data_home}",
                  "--ckpt_path", str(fitted.results["checkpoint"])])
    assert "untrained" not in json.loads(tested.results_path.read_text())


# -- predict, for every task --------------------------------------------------------------------------------

def test_predict_classification_writes_class_probabilities_and_labels(data_home):
    """Before: `SequenceModel: x must be a torch.Tensor, got tuple` (the default predict_step)."""
    fitted = fit_listops(data_home / "runs")
    run_dir = Path(fitted.results["run_dir"])
    cli = run(["predict", "--config", str(ROOT / MAIN_JOB), *TINY_LISTOPS, f"--trainer.default_root_dir={data_home / 'runs'}",
               "--ckpt_path", str(run_dir)])  # a run folder: its best checkpoint
    (path,) = cli.predictions
    assert path.parent.parent == run_dir.parent and path.name == "predictions.csv"  # a new run folder of that config
    rows = list(map(lambda line: line.split(","), path.read_text().splitlines()))
    header, rows = rows[0], rows[1:]
    classes = fitted.datamodule.num_classes
    assert header == ["sample", "label", "predicted", *(f"p_{c}" for c in range(classes))] and len(rows) == 16
    for i, row in enumerate(rows):
        p = [float(v) for v in row[3:]]
        assert int(row[0]) == i and abs(sum(p) - 1) < 1e-4 and int(row[2]) == max(range(classes), key=p.__getitem__)
    # the accuracy of the written predictions is the test accuracy of the same checkpoint
    accuracy = sum(row[1] == row[2] for row in rows) / len(rows)
    assert accuracy == pytest.approx(fitted.results["test_acc"])


def test_predict_forecasting_writes_forecasts_with_their_times(data_home):
    """Before: `predict_dataloader must be implemented`. The times are the series' own (AR: the step index), the
    values in the data's units (the datamodule's scaling undone)."""
    config = str(ROOT / "configs/timeseries/ar/spacetime_ar8.yaml")
    small = ["--data.init_args.length=600", "--model.init_args.model.init_args.d_model=8",
             f"--trainer.default_root_dir={data_home}"]
    fitted = run(["fit", "--config", config, *small, "--trainer.max_steps=3", "--trainer.val_check_interval=3",
                  "--trainer.limit_val_batches=1"])
    cli = run(["predict", "--config", config, *small, "--ckpt_path", "last"])
    csv_path, first, last = cli.predictions
    assert first.stat().st_size > 0 and last.stat().st_size > 0  # the plots
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "window,step,time,channel,forecast,actual,units"
    data = fitted.datamodule
    data.setup()
    horizon, lookback = data.horizon, data.lookback
    windows = len(data.datasets["test"])
    assert len(lines) == 1 + windows * horizon
    series_start = 600 - int(600 * 0.2) - lookback  # the test split starts lookback rows before its 20%
    for line in (lines[1], lines[horizon + 3], lines[-1]):
        window, step, time, _, _, actual, units = line.split(",")
        row = int(window) + lookback + int(step) - 1
        assert int(time) == series_start + row and units == "data"
        scaled = data.datasets["test"].values[row, 0].item()
        assert float(actual) == pytest.approx(scaled * data.std + data.mean, rel=1e-4, abs=1e-4)


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """A BPE language model trained for a few steps through `ssmzoo fit` (the run folder, the config's flags)."""
    home = tmp_path_factory.mktemp("lm")
    corpus = home / "corpus"
    corpus.mkdir()
    for i, text in enumerate(DOCS):
        (corpus / f"{i}.txt").write_text(text)
    flags = ["--config", str(ROOT / "configs/lm/mamba.yaml"), f"--data.init_args.path={corpus}",
             "--data.init_args.tokenizer=bpe", "--data.init_args.bpe_vocab_size=300", "--data.init_args.seq_len=16",
             "--data.init_args.val_split=1", "--data.init_args.test_split=1", "--data.init_args.batch_size=4",
             "--model.init_args.model.init_args.d_model=16", "--model.init_args.model.init_args.n_layers=1",
             f"--trainer.default_root_dir={home / 'runs'}"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSMZOO_DATA", str(home / "data"))
        cli = run(["fit", *flags, "--trainer.max_steps=6", "--trainer.val_check_interval=3",
                   "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
                   "--model.init_args.sample_length=4", "--trainer.enable_model_summary=false"])
        yield SimpleNamespace(cli=cli, flags=flags, run_dir=Path(cli.results["run_dir"]), home=home)


def test_from_pretrained_loads_a_run_folder_or_its_checkpoint(lm_run):
    """Before: from_pretrained refused both (it took only folders with config.json)."""
    from ssmzoo import LanguageModel

    trained = lm_run.cli.model.model
    best = Path(lm_run.cli.results["checkpoint"])
    by_folder = LanguageModel.from_pretrained(lm_run.run_dir)
    by_file = LanguageModel.from_pretrained(best)
    state = torch.load(best, weights_only=True)["state_dict"]
    for model in (by_folder, by_file):
        assert type(model) is type(trained) and not model.training
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor, state[f"model.{name}"]), name
    prompt = torch.tensor([[299, 5, 6]]) % trained.vocab_size
    assert torch.equal(by_folder.generate(prompt, max_new_tokens=5), by_file.generate(prompt, max_new_tokens=5))


def test_a_bpe_run_keeps_its_tokenizer(lm_run):
    """Before: a BPE run's tokenizer lived only in the data cache, so a run folder could not decode its own ids."""
    from ssmzoo.cli.generate import load_tokenizer

    saved = lm_run.run_dir / "tokenizer.json"
    assert saved.is_file()
    data_tokenizer = lm_run.cli.datamodule.tokenizer
    assert json.loads(saved.read_text()) == json.loads(data_tokenizer.tokenizer.to_str())
    for where in (lm_run.run_dir, Path(lm_run.cli.results["checkpoint"])):
        tokenizer = load_tokenizer(where)
        text = "Friends, Romans"
        assert tokenizer.encode(text).tolist() == data_tokenizer.encode(text).tolist()
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_generate_command_streams_the_models_continuation(lm_run, capsys):
    """Before: there was no `ssmzoo generate`. Greedy, so the text must be the model's own argmax continuation."""
    from ssmzoo import LanguageModel
    from ssmzoo.cli.generate import load_tokenizer

    main(["generate", "--ckpt_path", str(lm_run.run_dir), "--prompt", "Friends,", "--max_new_tokens", "12", "--greedy"])
    printed = capsys.readouterr().out
    tokenizer = load_tokenizer(lm_run.run_dir)
    model = LanguageModel.from_pretrained(lm_run.run_dir)
    ids = [tokenizer.eos_id] + tokenizer.encode("Friends,").tolist()
    want = tokenizer.decode(model.generate(torch.tensor([ids]), max_new_tokens=12)[0, len(ids):].tolist())
    assert printed == "Friends," + want + "\n"


def test_generate_streams_token_by_token(lm_run):
    from ssmzoo.cli.generate import TextStreamer, load_tokenizer

    tokenizer = load_tokenizer(lm_run.run_dir)
    writes: list[str] = []
    out = SimpleNamespace(write=writes.append, flush=lambda: None)
    streamer = TextStreamer(tokenizer, out)
    ids = tokenizer.encode("O Romeo, Romeo! wherefore").tolist()
    streamer.put(torch.tensor([[tokenizer.eos_id]]))  # the prompt: not printed again
    for i in ids:
        streamer.put(torch.tensor([i]))
    streamer.end()
    assert len(writes) >= len(ids) // 2  # pieces as they come, not one write at the end
    assert "".join(writes) == "O Romeo, Romeo! wherefore\n"


def test_predict_language_model_continues_the_given_prompts(lm_run, monkeypatch):
    """Before: `predict_dataloader must be implemented`."""
    monkeypatch.setenv("SSMZOO_DATA", str(lm_run.home / "data"))
    cli = run(["predict", *lm_run.flags, "--ckpt_path", str(lm_run.run_dir), "--predictions.prompts",
               '["Friends, Romans", "All the"]', "--predictions.max_new_tokens=7", "--predictions.greedy=true"])
    (path,) = cli.predictions
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["Friends, Romans", "All the"]
    tokenizer, model = cli.datamodule.tokenizer, cli.model.model
    for r in records:
        ids = [tokenizer.eos_id] + tokenizer.encode(r["prompt"]).tolist()
        out = model.generate(torch.tensor([ids]), max_new_tokens=7)
        assert r["new_tokens"] == 7 and r["continuation"] == tokenizer.decode(out[0, len(ids):].tolist())
    with pytest.raises(ValueError, match="--predictions.prompts"):
        run(["predict", *lm_run.flags, "--ckpt_path", str(lm_run.run_dir)])


def test_predict_needs_a_checkpoint(data_home):
    with pytest.raises(ValueError, match="predict needs a trained model"):
        run(["predict", "--config", str(ROOT / MAIN_JOB), *TINY_LISTOPS, f"--trainer.default_root_dir={data_home}"])


# -- loading a run never runs what a file says ----------------------------------------------------------------------

def test_a_checkpoint_naming_another_class_or_holding_a_pickle_is_refused(lm_run, tmp_path):
    from ssmzoo.models.pretrained import load_run

    checkpoint = torch.load(lm_run.cli.results["checkpoint"], weights_only=True)
    checkpoint["hyper_parameters"]["model"]["class_path"] = "os.system"
    torch.save(checkpoint, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="only the models of ssmzoo.models"):
        load_run(tmp_path / "other.ckpt")

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"state_dict": {}, "payload": Payload()}, tmp_path / "pickle.ckpt")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_run(tmp_path / "pickle.ckpt")
    assert not marker.exists()


# -- errors ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, message", [
    ("--model.init_args.model.init_args.layer=s4x", "unknown layer 's4x'; available layers:"),
    ("--model.init_args.model.init_args.layer_args={d_stat: 4}", "has no argument(s) 'd_stat'"),
])
def test_a_bad_value_gets_its_one_clear_message(data_home, capsys, flag, message):
    """Before: 80-90 lines of jsonargparse's type alternatives, ending in `Expected a <class 'NoneType'>`."""
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(ROOT / MAIN_JOB), *TINY_LISTOPS, f"--trainer.default_root_dir={data_home}", flag])
    err = capsys.readouterr().err
    assert done.value.code == 2 and message in err
    assert "NoneType" not in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2, err


def test_a_missing_corpus_gets_its_one_clear_message(data_home, capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(ROOT / "configs/lm/mamba.yaml"), f"--trainer.default_root_dir={data_home}"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "ssmzoo data shakespeare" in err
    assert "NoneType" not in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2, err


def test_a_misspelled_flag_is_refused_not_taken_as_a_prefix(data_home, capsys):
    """Before: `--trainer.max_step=3` was taken as --trainer.max_steps=3 and the run went ahead."""
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(ROOT / MAIN_JOB), *TINY_LISTOPS, f"--trainer.default_root_dir={data_home}",
              "--trainer.max_step=3"])
    assert done.value.code == 2 and "max_step" in capsys.readouterr().err
    assert not (data_home / "listops_s4d_small").exists()


def test_a_failed_run_leaves_no_run_folder(data_home):
    """Before: a run that failed in its first step left runs/<name>/version_N with a config and empty logs."""
    with pytest.raises(RuntimeError, match="boom"):
        fit_listops(data_home, "--trainer.callbacks", json.dumps([{"class_path": f"{__name__}.FailsAtFirstStep"}]))
    assert list((data_home / "listops_s4d_small").iterdir()) == []
    # a user's file in the folder is never removed, and then the folder stays
    from ssmzoo.cli.runs import remove_failed_run

    folder = data_home / "x" / "version_0"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("ours")
    (folder / "notes.txt").write_text("the user's")
    assert not remove_failed_run(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


class FailsAtFirstStep(Callback):
    def on_train_batch_start(self, *args) -> None:
        raise RuntimeError("boom")


THREADS_SEEN: list[int] = []


class RecordThreads(Callback):
    def on_train_start(self, *args) -> None:
        THREADS_SEEN.append(torch.get_num_threads())


# -- the first minutes --------------------------------------------------------------------------------------------

def test_help_answers_without_loading_torch_and_lists_every_subcommand():
    """Before: `ssmzoo --help` imported torch and Lightning (5.5 s on an idle machine)."""
    from ssmzoo.cli.entry import SUBCOMMANDS

    code = ("import sys\nfrom ssmzoo.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit as e:\n"
            "    assert e.code == 0\nprint('TORCH' if 'torch' in sys.modules else 'NO TORCH')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("NO TORCH")
    for name in SUBCOMMANDS:
        assert f"    {name} " in done.stdout
    from lightning.pytorch.cli import LightningCLI

    assert set(SUBCOMMANDS) == set(LightningCLI.subcommands()) | {"data", "generate"}


NOISE = ("litlogger", "💡", "LeafSpec", "Total FLOPs", "FLOPs", "The dirpath has changed", "does not have many workers",
         "args parameter is intended", "JsonargparseDeprecationWarning", "deprecated")


def test_a_run_prints_none_of_the_known_noise(data_home, capsys, caplog, recwarn, monkeypatch):
    """Before: Lightning's litlogger tip, the LeafSpec deprecation, `Total FLOPs: 0`, "The dirpath has changed"
    when testing from a checkpoint, the DataLoader worker-count warning (on a machine with more than 2 cores, here
    made one by Lightning's worker suggestion) and LightningCLI's warning about pytest's sys.argv."""
    import lightning.pytorch.trainer.connectors.data_connector as connector

    monkeypatch.setattr(connector, "suggested_max_num_workers", lambda devices: 15)
    fitted = fit_listops(data_home, "--trainer.enable_model_summary=true")
    run(["test", "--config", str(ROOT / MAIN_JOB), *TINY_LISTOPS, f"--trainer.default_root_dir={data_home}",
         "--ckpt_path", fitted.results["checkpoint"]])
    captured = capsys.readouterr()
    said = [captured.out, captured.err, *(r.getMessage() for r in caplog.records), *(str(w.message) for w in recwarn)]
    for noise in NOISE:
        assert not any(noise in text for text in said), noise
    assert any("trainable parameters" in text for text in said)  # the summary itself is still there


def test_progress_lines_when_the_output_is_not_a_terminal(data_home, capsys):
    """Before: nothing between the model summary and the end (Rich's bar draws nothing into a file)."""
    fit_listops(data_home, "--progress_interval=0")
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("ssmzoo: step ")]
    assert [int(re.match(r"ssmzoo: step (\d+)/4", line).group(1)) for line in lines] == [1, 2, 3, 4]
    for line in lines:
        assert re.search(r"loss \d", line) and re.search(r"[\d.]+ s/step", line) and "elapsed" in line
    assert all("ETA" in line for line in lines)
    assert "ssmzoo: validation at step" in out


def test_the_progress_bar_shows_true_epochs_and_totals():
    """Before: `Epoch 0/-2` for runs bounded by steps, and `5/1` for a run resumed mid-epoch (the total was the
    steps left, the counter the batches of the whole epoch)."""
    from ssmzoo.cli.progress import RunProgressBar, epoch_label, train_total

    def trainer(max_epochs, max_steps, global_step, done_this_epoch, epoch=0, batches=8):
        progress = SimpleNamespace(current=SimpleNamespace(ready=done_this_epoch))
        return SimpleNamespace(max_epochs=max_epochs, max_steps=max_steps, global_step=global_step,
                               current_epoch=epoch, num_training_batches=batches, accumulate_grad_batches=1,
                               fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)))

    assert epoch_label(trainer(-1, 3000, 0, 0)) == "Epoch 0"
    assert epoch_label(trainer(8, -1, 0, 0, epoch=2)) == "Epoch 2/7"
    # resumed at step 9 of 10, 4 batches into an 8-batch epoch: the bar counts to 5, so its total is 5
    resumed = trainer(-1, 10, 9, 4, epoch=1)
    assert train_total(resumed) == 5
    assert train_total(trainer(-1, 100, 0, 0)) == 8 and train_total(trainer(-1, 3, 0, 0)) == 3
    bar = RunProgressBar()
    bar._trainer = resumed
    assert "-" not in bar._get_train_description(1) and bar.total_train_batches == 5


def test_threads_flag(data_home, monkeypatch):
    """Before: no --threads (torch's default, every core, whatever else ran there)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    THREADS_SEEN.clear()
    before = torch.get_num_threads()
    cli = fit_listops(data_home, "--threads=1", "--trainer.callbacks",
                      json.dumps([{"class_path": f"{__name__}.RecordThreads"}]))
    assert THREADS_SEEN == [1] and cli.results["threads"] == 1
    assert torch.get_num_threads() == before and "OMP_NUM_THREADS" not in os.environ  # the caller's, restored
    with pytest.raises(ValueError, match="--threads must be an int >= 1"):
        fit_listops(data_home, "--threads=0")


def test_openmp_waits_passively_unless_the_user_chose(monkeypatch):
    from ssmzoo.cli.threads import prepare_environment

    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"):
        monkeypatch.delenv(name, raising=False)
    prepare_environment()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    prepare_environment()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setenv("GOMP_SPINCOUNT", "1000")
    prepare_environment()
    assert "OMP_WAIT_POLICY" not in os.environ


def test_the_cli_process_starts_with_passive_openmp(tmp_path):
    """The policy must be in the environment before torch loads (OpenMP reads it once): check it from inside a
    real `ssmzoo` process, through a callback that reports it."""
    code = ("import os, sys\nimport ssmzoo.cli.entry as entry\n"
            "orig = entry.prepare_environment\n"
            "def spy():\n    orig()\n    print('POLICY', os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)\n"
            "entry.prepare_environment = spy\n"
            "try:\n    entry.main(['generate', '--help'])\nexcept SystemExit:\n    pass\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**env, "PYTHONPATH": str(ROOT)})
    assert "POLICY PASSIVE False" in done.stdout, done.stdout + done.stderr


def test_results_record_the_threads_used(data_home):
    cli = fit_listops(data_home, "--threads=2")
    assert cli.results["threads"] == 2


def test_the_main_jobs_accuracy_is_stated_in_one_place():
    """Before: 0.5745, 57.6%, 57.55 and 58.3% in different places of the README and the config."""
    readme = (ROOT / "README.md").read_text()
    config = (ROOT / MAIN_JOB).read_text()
    for stale in ("57.6%", "57.55", "58.3%"):
        assert stale not in readme and stale not in config, stale
    assert readme.count("0.5745") == 1


def test_dataloader_workers_are_chosen_from_the_cpus(monkeypatch):
    """None on the CPU (the compute threads take every core); on a GPU up to 4 per device from the CPUs there are,
    unless the config or the command line sets num_workers."""
    from ssmzoo.cli import SsmzooCLI
    import ssmzoo.cli.app as app

    monkeypatch.setattr(app, "suggested_max_num_workers", lambda devices: 15 // devices)
    GPU = type("CUDAAccelerator", (), {})
    CPU = type("CPUAccelerator", (), {})

    def choose(accelerator, devices=1, workers=0, explicit=False):
        cli = SimpleNamespace(datamodule=SimpleNamespace(num_workers=workers),
                              trainer=SimpleNamespace(accelerator=accelerator(), num_devices=devices, is_global_zero=True),
                              _explicit=lambda key: explicit)
        SsmzooCLI._choose_workers(cli)
        return cli.datamodule.num_workers

    assert choose(CPU) == 0
    assert choose(GPU) == 4 and choose(GPU, devices=8) == 1
    assert choose(GPU, explicit=True) == 0 and choose(GPU, workers=2) == 2
