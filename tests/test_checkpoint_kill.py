"""``ssmzoo fit`` killed (SIGKILL) at random moments, mostly during checkpoint saves, with ``$TMPDIR`` on a tmpfs
(another filesystem than the run folder), then resumed with ``--ckpt_path last``: every resume ends with the
weights of an uninterrupted run, bit for bit, and a resume is refused only when no complete ``last.ckpt`` had
ever existed. (Lightning's own writer copied the finished file over ``last.ckpt`` from ``$TMPDIR``: a kill
during the copy left it truncated, the run lost.)

20 trials of two processes each take minutes, so they are ``slow``; ``test_checkpoint_io.py`` kills the same
writer (``AtomicCheckpointIO``) in the default suite.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ssmzoo.cli.runs import LAST, find_last_checkpoint
from ssmzoo.files import PARTIAL
from test_checkpoint_io import tmpfs_dir

ROOT = Path(__file__).resolve().parents[1]
TRIALS = 20

# 40 samples in batches of 4: 10 steps per epoch, 2 epochs; last.ckpt after every step and validation, so that
# most of the run is spent saving. d_model 384 makes a checkpoint of about 10 MB (weights and Adam's moments).
CONFIG = """
seed_everything: 7
test_after_fit: false
last_checkpoint: {every_n_train_steps: 1}
trainer:
  max_epochs: 2
  val_check_interval: 5
  accelerator: cpu
  devices: 1
  enable_progress_bar: false
  enable_model_summary: false
  log_every_n_steps: 1
model:
  class_path: ssmzoo.tasks.ClassificationTask
  init_args:
    model:
      class_path: ssmzoo.models.SequenceModel
      init_args:
        d_model: 384
        n_layers: 2
        layer: s4d
        layer_args: {d_state: 4, bidirectional: true, dropout: 0.1}
        dropout: 0.1
    lr: 0.001
    warmup: 3
data:
  class_path: ssmzoo.data.lra.ListOpsDataModule
  init_args: {n_train: 40, n_val: 8, n_test: 8, min_length: 4, max_length: 30, max_depth: 3, max_args: 4,
              seed: 1, batch_size: 4}
"""


def command(config: Path, root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ssmzoo.cli", "fit", "--config", str(config), "--trainer.default_root_dir",
            str(root), *extra]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmpdir = tmpfs_dir()
    if tmpdir is None:
        pytest.skip("no writable tmpfs at /dev/shm on another filesystem than the temporary folder")
    base = tmp_path_factory.mktemp("kill")
    config = base / "cfg" / "big.yaml"
    config.parent.mkdir()
    config.write_text(CONFIG)
    env = dict(os.environ, TMPDIR=str(tmpdir), SSMZOO_DATA=str(base / "data"), OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT))
    # the uninterrupted run: its final weights, and how long its training part takes
    root = base / "uninterrupted"
    started = time.perf_counter()
    child = subprocess.Popen(command(config, root), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    run_dir = root / "cfg_big" / "version_0"
    while not run_dir.exists() and child.poll() is None:
        time.sleep(0.005)
    folder_at = time.perf_counter()
    _, stderr = child.communicate()
    assert child.returncode == 0, stderr[-3000:]
    duration = time.perf_counter() - folder_at
    reference = torch.load(run_dir / "checkpoints" / LAST, map_location="cpu", weights_only=True)
    yield config, base, env, reference, duration
    for entry in tmpdir.iterdir():  # the folder is ours, made for these tests
        entry.unlink()
    tmpdir.rmdir()
    print(f"uninterrupted run: {time.perf_counter() - started:.1f} s, {duration:.1f} s after its folder appeared")


def _saving(tmpdir: Path, checkpoints: Path) -> bool:
    """Whether a checkpoint is being written: a file in $TMPDIR (where Lightning's own writer stages it) or a
    temporary file beside the checkpoints (ours)."""
    try:
        return any(tmpdir.iterdir()) or any(PARTIAL in p.name for p in checkpoints.iterdir())
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(TRIALS))
def test_fit_killed_at_a_random_moment_resumes_bit_identical(setup, trial):
    """Even trials: killed at a moment drawn uniformly over the run. Odd trials: killed during a save (the k-th,
    k drawn from 1-12), a random 0-30 ms after it began."""
    config, base, env, reference, duration = setup
    rng = random.Random(trial)
    tmpdir = Path(env["TMPDIR"])
    root = base / f"trial{trial}"
    run_dir = root / "cfg_big" / "version_0"
    last = run_dir / "checkpoints" / LAST
    child = subprocess.Popen(command(config, root), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not run_dir.exists() and child.poll() is None:
        time.sleep(0.002)
    kill_at = time.perf_counter() + rng.uniform(0.0, duration)
    kth_save, saves, was_saving = rng.randint(1, 12), 0, False
    seen_last = False  # whether a complete last.ckpt has existed (it appears only by a rename, complete)
    while child.poll() is None:
        seen_last = seen_last or last.exists()
        if trial % 2 == 0:
            if time.perf_counter() >= kill_at:
                break
        else:
            saving = _saving(tmpdir, last.parent)
            saves += saving and not was_saving
            was_saving = saving
            if saves == kth_save:
                time.sleep(rng.uniform(0.0, 0.03))
                break
        time.sleep(0.001)
    child.send_signal(signal.SIGKILL)
    child.wait()
    print(f"trial {trial}: killed {'during a save' if _saving(tmpdir, last.parent) else 'between saves'}, "
          f"last.ckpt {'present' if last.exists() else 'absent'}")
    for entry in tmpdir.iterdir():  # what the killed writer left in $TMPDIR (Lightning's, before the fix)
        entry.unlink()
    if not last.exists():
        assert not seen_last, "last.ckpt existed, and the kill removed it"
        with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
            find_last_checkpoint(root, "cfg_big")  # what --ckpt_path last does: refused, by name
        return
    resumed = subprocess.run(command(config, root, "--ckpt_path", "last"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, f"the resume failed:\n{resumed.stderr[-3000:]}"
    final = torch.load(last, map_location="cpu", weights_only=True)
    assert final["global_step"] == reference["global_step"]
    assert final["state_dict"].keys() == reference["state_dict"].keys()
    different = [k for k, v in final["state_dict"].items() if not torch.equal(v, reference["state_dict"][k])]
    assert not different, f"weights differ from the uninterrupted run's: {different}"
    # the killed save's temporary file, if any, was removed by the resumed run's saves
    assert not [p for p in last.parent.iterdir() if PARTIAL in p.name]
