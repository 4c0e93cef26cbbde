"""Checkpoints survive any kill, and no checkpoint load runs code.

- ``AtomicCheckpointIO`` (the CLI's CheckpointIO plugin) writes a checkpoint to a temporary file in its own
  folder, fsyncs it and renames it over the old one; ``$TMPDIR`` is never used, so a tmpfs ``/tmp`` cannot turn
  the final rename into a copy. Checked by SIGKILL at random moments with ``$TMPDIR`` on a tmpfs: here on the
  plugin alone (fast), and in ``test_checkpoint_kill.py`` on whole ``ssmzoo fit`` runs that are then resumed.
- Every checkpoint load passes ``weights_only=True``: checked with torch's legacy default forced on
  (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``: ``torch.load`` without ``weights_only`` unpickles anything, as torch
  < 2.6 does by default), where a crafted checkpoint would otherwise run its code.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from ssmzoo.cli import run
from ssmzoo.cli.checkpoint_io import AtomicCheckpointIO, with_atomic_checkpoint_io
from ssmzoo.files import PARTIAL

ROOT = Path(__file__).resolve().parents[1]


def tmpfs_dir() -> Path | None:
    """A folder on a tmpfs (``/dev/shm``) on another filesystem than the tests' temporary folders, or None."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        return None
    if os.stat(shm).st_dev == os.stat(tempfile.gettempdir()).st_dev:
        return None
    return Path(tempfile.mkdtemp(prefix="ssmzoo-tmpdir-", dir=shm))


@pytest.fixture
def other_fs_tmpdir():
    folder = tmpfs_dir()
    if folder is None:
        pytest.skip("no writable tmpfs at /dev/shm on another filesystem than the temporary folder")
    yield folder
    for entry in folder.iterdir():  # ours: the folder was made for this test
        entry.unlink()
    folder.rmdir()


def child_env(tmpdir: Path) -> dict[str, str]:
    env = dict(os.environ, TMPDIR=str(tmpdir), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    return env


# -- atomic writes -----------------------------------------------------------------------------------
BIG = 3_000_000  # float32 elements: a 12 MB checkpoint, so that a save takes a while


def _save_forever(path: Path, tmpdir: Path, write_fd: int) -> None:
    """In a forked child: save checkpoints to ``path`` step after step, reporting each finished save on the pipe."""
    os.environ["TMPDIR"] = str(tmpdir)
    tempfile.tempdir = None  # so tempfile reads $TMPDIR again, as a fresh process would
    torch.set_num_threads(1)
    io, base = AtomicCheckpointIO(), torch.arange(BIG, dtype=torch.float32)
    os.write(write_fd, b"ready\n")
    for step in range(1, 1_000_000):
        io.save_checkpoint({"step": step, "big": base + step, "tail": torch.full((8,), step)}, path)
        os.write(write_fd, f"{step}\n".encode())


def _kill_during_saves(path: Path, tmpdir: Path, rng: random.Random) -> int:
    """Fork a child saving ``path`` (``_save_forever``), SIGKILL it at a random moment; the saves it finished."""
    read_fd, write_fd = os.pipe()
    child = multiprocessing.get_context("fork").Process(target=_save_forever, args=(path, tmpdir, write_fd))
    child.start()
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        assert pipe.readline() == b"ready\n"
        time.sleep(rng.uniform(0.0, 1.0))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        lines = pipe.read().split(b"\n")
    return max((int(line) for line in lines if line.strip().isdigit()), default=0)


@pytest.mark.parametrize("trial", range(3))
def test_checkpoint_survives_sigkill_during_saves(tmp_path, other_fs_tmpdir, trial):
    """Every kill leaves the last finished save, whole (or a newer one), or no file when none had finished."""
    path = tmp_path / "checkpoints" / "last.ckpt"
    finished = _kill_during_saves(path, other_fs_tmpdir, random.Random(trial))
    if path.exists():
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        step = checkpoint["step"]
        assert step >= finished
        assert torch.equal(checkpoint["big"], torch.arange(BIG, dtype=torch.float32) + step)
        assert torch.equal(checkpoint["tail"], torch.full((8,), step))
    else:
        assert finished == 0, f"{finished} save(s) had finished, yet no last.ckpt"
    assert list(other_fs_tmpdir.iterdir()) == [], "the checkpoint passed through $TMPDIR"


def test_saved_through_a_temporary_file_in_the_same_folder(tmp_path, monkeypatch):
    renames = []
    real_replace = os.replace

    def replace(src, dst):
        renames.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "never"))  # tempfile's folder, were it used
    path = tmp_path / "run" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(3)}, path)
    assert len(renames) == 1 and renames[0][1] == path and renames[0][0].parent == path.parent
    assert renames[0][0].name.startswith(f".last.ckpt{PARTIAL}")
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    assert not (tmp_path / "never").exists()


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.ones(4)}, path)
    real_save = torch.save

    def save_half_then_fail(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(4)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert io.load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # its own temporary file removed


def test_leftovers_of_killed_writers_are_removed_and_nothing_else(tmp_path):
    """A killed save leaves ``.<name>.partial-<host>-<pid>-<random>``; the next save in the folder removes those
    of dead processes on this machine (whichever file they were saving: a best checkpoint's name is never saved
    again), and leaves live writers', other machines' and anything else."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    names = {
        "dead": f".last.ckpt{PARTIAL}{host}-{dead.pid}-0123abcd",
        "alive": f".last.ckpt{PARTIAL}{host}-{os.getppid()}-0123abcd",
        "other_host": f".last.ckpt{PARTIAL}elsewhere.example-{dead.pid}-0123abcd",
        "other_file": f".best-epoch0-step5.ckpt{PARTIAL}{host}-{dead.pid}-0123abcd",
        "not_ours": f".best.ckpt{PARTIAL}{host}-{dead.pid}-notahex",
        "user": "notes.txt",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(1)}, tmp_path / "last.ckpt")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"last.ckpt"} | {v for k, v in names.items() if k not in ("dead", "other_file")}


def test_cli_trainer_gets_the_plugin_unless_it_has_a_checkpoint_io():
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    assert [type(p) for p in with_atomic_checkpoint_io(None)] == [AtomicCheckpointIO]
    theirs = TorchCheckpointIO()
    assert with_atomic_checkpoint_io([theirs]) == [theirs]
    assert [type(p) for p in with_atomic_checkpoint_io("bf16-mixed")] == [str, AtomicCheckpointIO]


# -- weights_only ----------------------------------------------------------------------------------
class _Runs:
    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    """A file that looks like a Lightning checkpoint and creates ``marker`` when unpickled without
    ``weights_only``."""
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 0, "pytorch-lightning_version": "2.6.0",
                "payload": _Runs(os.system, f"touch {marker}")}, path)
    return path


@pytest.fixture
def legacy_default(monkeypatch):
    """torch.load without ``weights_only`` unpickles anything (torch < 2.6's default)."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


def test_the_legacy_default_is_truly_forced(tmp_path, legacy_default):
    """The control: with the legacy default forced on, a load that does not pass ``weights_only`` runs the
    payload, so the tests below would see it run if our loads left ``weights_only`` out."""
    marker = tmp_path / "ran"
    with pytest.warns(UserWarning, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        torch.load(crafted_checkpoint(tmp_path / "c.ckpt", marker))
    assert marker.exists()


def test_checkpoint_io_refuses_crafted_checkpoint(tmp_path, legacy_default):
    marker = tmp_path / "ran"
    path = crafted_checkpoint(tmp_path / "c.ckpt", marker)
    with pytest.raises(ValueError, match=r"c\.ckpt: refused: it holds objects other than tensors"):
        AtomicCheckpointIO().load_checkpoint(path)
    assert not marker.exists()


def test_checkpoint_io_reports_a_truncated_checkpoint_by_name(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"w": torch.ones(1000)}, tmp_path / "good.ckpt")
    data = (tmp_path / "good.ckpt").read_bytes()
    (tmp_path / "half.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"half\.ckpt: cannot be read, it is truncated or corrupt"):
        io.load_checkpoint(tmp_path / "half.ckpt")


CONFIG = """
seed_everything: 7
test_after_fit: false
trainer:
  max_epochs: 1
  accelerator: cpu
  devices: 1
  enable_progress_bar: false
  enable_model_summary: false
model:
  class_path: ssmzoo.tasks.ClassificationTask
  init_args:
    model:
      class_path: ssmzoo.models.SequenceModel
      init_args: {d_model: 8, n_layers: 1, layer: s4d, layer_args: {d_state: 4, bidirectional: true}}
data:
  class_path: ssmzoo.data.lra.ListOpsDataModule
  init_args: {n_train: 8, n_val: 4, n_test: 4, min_length: 4, max_length: 20, max_depth: 2, max_args: 3,
              seed: 1, batch_size: 4}
"""


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMZOO_DATA", str(tmp_path / "data"))
    path = tmp_path / "cfg" / "tiny.yaml"
    path.parent.mkdir()
    path.write_text(CONFIG)
    return path


@pytest.mark.parametrize("ckpt_path", ["hpc", "file"])
@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_cli_never_runs_a_crafted_checkpoint(tmp_path, config, legacy_default, ckpt_path, subcommand):
    """``--ckpt_path hpc`` skips the CLI's own check and reaches Lightning's loader (``hpc_ckpt_<n>.ckpt`` in
    the root folder); a file path is checked first. Neither runs the payload."""
    marker = tmp_path / "ran"
    root = tmp_path / "runs"
    root.mkdir()
    crafted = crafted_checkpoint(root / "hpc_ckpt_1.ckpt", marker)
    with pytest.raises(ValueError, match=r"hpc_ckpt_1\.ckpt.*(refused|not a Lightning checkpoint|cannot be read)"):
        run([subcommand, "--config", str(config), "--trainer.default_root_dir", str(root),
             "--ckpt_path", "hpc" if ckpt_path == "hpc" else str(crafted)])
    assert not marker.exists()
