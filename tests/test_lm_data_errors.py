"""``TextDataModule`` on damaged input: a truncated ``.gz``, a plain file named ``.gz``, binary data, and a
damaged token cache (truncated files, missing or truncated ``meta.json``). Each input is refused with an error
naming the file; a damaged cache is rebuilt (never left to fail every later run), and the building folders of
killed processes are removed."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from ssmzoo.data.lm import TextDataModule
from ssmzoo.files import BUILDING

TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(400))


@pytest.fixture(autouse=True)
def _data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMZOO_DATA", str(tmp_path / "data"))


def module(path, **kw) -> TextDataModule:
    return TextDataModule(path=str(path), seq_len=16, val_split=0, test_split=0, batch_size=2, **kw)


def refused(path, says: str) -> str:
    with pytest.raises(ValueError) as error:
        module(path).prepare_data()
    message = str(error.value)
    assert str(path) in message and says in message, message
    return message


# -- the corpus files --------------------------------------------------------------------------------
def test_truncated_gz(tmp_path):
    data = gzip.compress(TEXT.encode())
    path = tmp_path / "corpus.txt.gz"
    path.write_bytes(data[: len(data) // 2])
    refused(path, "truncated or damaged gzip")


def test_gz_with_a_bad_checksum(tmp_path):
    data = bytearray(gzip.compress(TEXT.encode()))
    data[-6] ^= 0xFF  # the CRC-32 in the trailer
    path = tmp_path / "corpus.txt.gz"
    path.write_bytes(bytes(data))
    refused(path, "truncated or damaged gzip")


def test_plain_file_named_gz(tmp_path):
    path = tmp_path / "corpus.jsonl.gz"
    path.write_text('{"text": "not compressed"}\n')
    refused(path, "is not gzip-compressed")


@pytest.mark.parametrize("content", [
    b"\x00" * 4096,
    TEXT.encode()[:500] + b"\x00\x00\x00\x00" + TEXT.encode()[500:],
    bytes(range(1, 32)) * 100,  # control characters: valid UTF-8, not text
])
def test_binary_data(tmp_path, content):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    refused(path, "binary data")


def test_binary_data_inside_a_gz(tmp_path):
    path = tmp_path / "corpus.txt.gz"
    path.write_bytes(gzip.compress(b"\x00" * 1000))
    refused(path, "binary data")


def test_text_with_tabs_form_feeds_and_escapes_is_text(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT.replace("fox", "f\tox\x0c\x1b[1m"))
    dm = module(path)
    dm.setup()
    assert len(dm.dataset("train")) > 0


# -- the token cache ---------------------------------------------------------------------------------
@pytest.fixture
def built(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    dm = module(path)
    dm.setup()
    first = dm.dataset("train")[3]
    return path, dm.cache_dir, first


def damage_tokens(cache):
    data = (cache / "train.tokens.bin").read_bytes()
    (cache / "train.tokens.bin").write_bytes(data[: len(data) // 3])


def damage_bytes(cache):
    (cache / "train.bytes.bin").write_bytes(b"")


def remove_meta(cache):
    (cache / "meta.json").unlink()


def truncate_meta(cache):
    text = (cache / "meta.json").read_text()
    (cache / "meta.json").write_text(text[: len(text) // 2])


def meta_not_an_object(cache):
    (cache / "meta.json").write_text("[]")


def remove_starts(cache):
    (cache / "train.starts.bin").unlink()


@pytest.mark.parametrize("damage", [damage_tokens, damage_bytes, remove_meta, truncate_meta, meta_not_an_object,
                                    remove_starts])
def test_damaged_cache_is_rebuilt(built, damage, caplog):
    path, cache, first = built
    damage(cache)
    dm = module(path)
    assert dm.cache_dir == cache
    dm.prepare_data()
    dm.setup()
    got = dm.dataset("train")[3]
    assert all(torch.equal(got[k], first[k]) for k in first)
    assert "rebuilt" in caplog.text and str(cache) in caplog.text
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name]  # nothing left beside it
    # and every later run uses it as it is
    again = module(path)
    again.setup()
    assert torch.equal(again.dataset("train")[3]["input_ids"], first["input_ids"])


def test_damaged_cache_found_by_setup_alone(built):
    """``setup`` without ``prepare_data`` (as outside a Trainer) rebuilds too."""
    path, cache, first = built
    damage_tokens(cache)
    dm = module(path)
    dm.setup()
    assert torch.equal(dm.dataset("train")[3]["input_ids"], first["input_ids"])


def test_stale_building_folders_of_dead_processes_are_removed(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    dm = module(path)
    cache = dm.cache_dir
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale = [cache.with_name(f"{cache.name}{BUILDING}{dead.pid}"),  # the older name: a bare pid
             cache.with_name(f"{cache.name}{BUILDING}{host}-{dead.pid}")]
    live = [cache.with_name(f"{cache.name}{BUILDING}{host}-{os.getppid()}"),
            cache.with_name(f"{cache.name}{BUILDING}other-machine-{dead.pid}")]
    for folder in stale + live:
        folder.mkdir(parents=True)
        (folder / "train.tokens.bin").write_bytes(b"\x00" * 10)
    dm.prepare_data()
    assert not any(folder.exists() for folder in stale)
    assert all(folder.is_dir() for folder in live)
    # also when the cache is complete already (the killed build lost a race with one that finished)
    stale[0].mkdir()
    module(path).prepare_data()
    assert not stale[0].exists()
    assert json.loads((cache / "meta.json").read_text())["splits"]["train"]["tokens"] > 0
