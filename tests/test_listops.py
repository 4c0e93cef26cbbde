"""LRA ListOps: generator, official TSV format, tokenisation, datamodule.

The oracle is an evaluator written here from the task's definition (a stack machine over the tokens),
independent of the generator; hand-written expressions have values computed by hand."""

from __future__ import annotations

import math
import random
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from ssmzoo.data.lra import ListOpsDataModule
from ssmzoo.data.lra.listops import (
    apply_operator,
    command,
    generate_listops,
    generate_samples,
    generator,
    read_listops_tsv,
    tokenize,
)

SHORT = {"min_length": 20, "max_length": 120}


def evaluate(source: str) -> int:
    """Value of a Source string: drop parentheses, then a stack machine over the tokens."""
    stack: list[list] = [[]]
    for token in source.replace("(", " ").replace(")", " ").split():
        if token.startswith("["):
            stack.append([token])
        elif token == "]":
            operator, *args = stack.pop()
            if operator == "[MIN":
                value = min(args)
            elif operator == "[MAX":
                value = max(args)
            elif operator == "[MED":
                value = math.floor(statistics.median(args))
            elif operator == "[SM":
                value = sum(args) % 10
            else:
                raise AssertionError(f"unknown operator {operator}")
            stack[-1].append(value)
        else:
            stack[-1].append(int(token))
    assert len(stack) == 1 and len(stack[0]) == 1, source
    return stack[0][0]


def lra_form(expression: str) -> str:
    """LRA's textual form of a bracket expression such as ``[MAX 2 9 ]``: an operator with arguments
    a1..an is the left-nested pair tree ((((OP, a1), a2), ...), END), and a pair (x, y) is written
    ``( x y )``."""
    tokens = expression.split()

    def parse(i: int) -> tuple[str, int]:
        if not tokens[i].startswith("["):
            return tokens[i], i + 1
        text, i = tokens[i], i + 1
        while tokens[i] != "]":
            argument, i = parse(i)
            text = f"( {text} {argument} )"
        return f"( {text} ] )", i + 1

    text, end = parse(0)
    assert end == len(tokens)
    return text


def write_rows(path: Path, lines: list[str]) -> Path:
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return path


# ---------------------------------------------------------------------------------- operator semantics

HAND_COMPUTED = [
    ("[MIN 3 8 1 ]", 1),
    ("[MAX 3 8 1 ]", 8),
    ("[MED 3 9 4 ]", 4),  # sorted 3 4 9
    ("[MED 1 2 ]", 1),  # (1 + 2) / 2 = 1.5, rounded down
    ("[MED 2 7 5 8 ]", 6),  # sorted 2 5 7 8: (5 + 7) / 2
    ("[MED 0 9 ]", 4),  # 4.5 rounded down
    ("[SM 7 8 9 ]", 4),  # 24 mod 10
    ("[SM 5 5 ]", 0),
    ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
    ("[SM [MAX 3 8 ] [MED 1 5 9 ] 7 ]", 0),  # 8 + 5 + 7 = 20
    ("[MIN [SM 9 9 ] [MED 6 6 7 1 ] ]", 6),  # min(18 mod 10 = 8, median 1 6 6 7 = 6)
    ("[MED [MAX 1 [MIN 9 4 ] ] [SM 3 3 ] 2 [MAX 0 0 ] ]", 3),  # 4, 6, 2, 0 -> sorted 0 2 4 6 -> 3
]


@pytest.mark.parametrize("expression,value", HAND_COMPUTED)
def test_evaluator_on_hand_computed_expressions(expression, value):
    assert evaluate(expression) == value
    assert evaluate(lra_form(expression)) == value


@pytest.mark.parametrize(
    "operator,arguments,value",
    [
        ("[MIN", [3, 8, 1], 1),
        ("[MAX", [3, 8, 1], 8),
        ("[MED", [3, 9, 4], 4),
        ("[MED", [1, 2], 1),
        ("[MED", [2, 7, 5, 8], 6),
        ("[MED", [0, 9], 4),
        ("[SM", [7, 8, 9], 4),
        ("[SM", [5, 5], 0),
    ],
)
def test_apply_operator_hand_computed(operator, arguments, value):
    assert apply_operator(operator, arguments) == value


def test_lra_textual_form_by_hand():
    assert lra_form("[MAX 2 9 ]") == "( ( ( [MAX 2 ) 9 ) ] )"
    assert lra_form("[MIN 3 [MAX 2 9 ] ]") == "( ( ( [MIN 3 ) ( ( ( [MAX 2 ) 9 ) ] ) ) ] )"


# ---------------------------------------------------------------------------------- generator


@pytest.mark.parametrize("n,bounds", [(300, SHORT), (20, {"min_length": 500, "max_length": 2000})])
def test_generated_targets_equal_evaluated_source_and_lengths_in_bounds(n, bounds):
    samples = generate_samples(n, seed=3, **bounds)
    assert len({source for source, _ in samples}) == len(samples)  # distinct, as in LRA
    for source, target in samples:
        assert evaluate(source) == target
        n_tokens = len(tokenize(source))
        assert bounds["min_length"] < n_tokens < bounds["max_length"]
        # the Source is exactly LRA's textual form of its own tokens
        assert lra_form(source.replace("(", " ").replace(")", " ")) == source


def lra_process(rng: random.Random, depth: int = 1, max_depth: int = 10, max_args: int = 10) -> list[str]:
    """The LRA generator's process written plainly (Tay et al., arXiv 2011.04006): below max depth an operator with
    probability 0.25 and 2..max_args arguments, else a digit."""
    if depth < max_depth and rng.random() < 0.25:
        arguments = []
        for _ in range(rng.randint(2, max_args)):
            arguments += lra_process(rng, depth + 1, max_depth, max_args)
        return [rng.choice(["[MIN", "[MAX", "[MED", "[SM"])] + arguments + ["]"]
    return [str(rng.randrange(10))]


def features(tokens: list[str], max_args: int) -> list[float]:
    """Per-tree statistics: length, depth, root arity, whether the root's first / last argument is an
    operator, mean arity of the operators, share of operators at the maximum arity, share of each
    operator, value."""
    open_arities: list[int] = []  # argument counts of the operators still open
    arities: list[int] = []
    root_args: list[bool] = []  # True for an operator argument of the root
    deepest = 0
    counts = dict.fromkeys(["[MIN", "[MAX", "[MED", "[SM"], 0)
    for token in tokens:
        if token == "]":
            arities.append(open_arities.pop())
            continue
        if len(open_arities) == 1:
            root_args.append(token.startswith("["))
        if open_arities:
            open_arities[-1] += 1
        if token.startswith("["):
            open_arities.append(0)
            deepest = max(deepest, len(open_arities))
            counts[token] += 1
    n_operators = len(arities)
    return [
        len(tokens),
        deepest,
        len(root_args),
        root_args[0],
        root_args[-1],
        np.mean(arities),
        np.mean(np.array(arities) == max_args),
        *(c / n_operators for c in counts.values()),
        evaluate(" ".join(tokens)),
    ]


def test_generator_follows_the_lra_distribution():
    """The two-stage sampler against the plain LRA process (smaller depth and arity so it runs fast and
    the depth limit matters often), on trees of 10 < tokens < 80: every statistic's mean agrees within
    4.5 standard errors, and lengths pass a two-sample KS test."""
    n, low, high, depth, arity = 2500, 10, 80, 4, 7
    ours = [
        features(tokenize_words(source), arity)
        for source, _ in generate_samples(
            n, 11, min_length=low, max_length=high, max_depth=depth, max_args=arity
        )
    ]
    rng, reference = random.Random(5), []
    while len(reference) < n:
        tokens = lra_process(rng, 1, depth, arity)
        if low < len(tokens) < high:
            reference.append(features(tokens, arity))
    a, b = np.array(ours, dtype=float), np.array(reference, dtype=float)
    standard_error = np.sqrt(a.var(0) / n + b.var(0) / n)
    assert np.all(np.abs(a.mean(0) - b.mean(0)) < 4.5 * standard_error + 1e-12), (a.mean(0), b.mean(0))
    grid = np.arange(low, high + 1)
    ks = (
        np.abs(
            np.searchsorted(np.sort(a[:, 0]), grid, "right")
            - np.searchsorted(np.sort(b[:, 0]), grid, "right")
        ).max()
        / n
    )
    assert ks < 1.95 * math.sqrt(2 / n)  # alpha = 0.001


def tokenize_words(source: str) -> list[str]:
    return source.replace("(", " ").replace(")", " ").split()


def test_generator_is_seeded(tmp_path):
    a = generate_listops(tmp_path / "a", 40, 5, 5, seed=7, **SHORT)
    b = generate_listops(tmp_path / "b", 40, 5, 5, seed=7, **SHORT)
    c = generate_listops(tmp_path / "c", 40, 5, 5, seed=8, **SHORT)
    for split in ("train", "val", "test"):
        name = f"basic_{split}.tsv"
        assert (a / name).read_bytes() == (b / name).read_bytes()
        assert (a / name).read_bytes() != (c / name).read_bytes()
    header, first = (a / "basic_train.tsv").read_bytes().split(b"\r\n")[:2]
    assert header == b"Source\tTarget"
    assert first.startswith(b"( ") and first.split(b"\t")[1] in {str(d).encode() for d in range(10)}
    sources = [line.split("\t")[0] for p in a.iterdir() for line in p.read_text().splitlines()[1:]]
    assert len(sources) == 50 and len(set(sources)) == 50  # no sample in two splits


def test_generator_rejects_impossible_settings():
    with pytest.raises(ValueError, match="max_length"):
        generate_samples(1, seed=0, min_length=10, max_length=11)
    with pytest.raises(ValueError, match="at most"):
        generate_samples(1, seed=0, min_length=100, max_length=200, max_depth=2, max_args=10)


def test_generator_reports_a_window_without_enough_distinct_trees(monkeypatch):
    # depth 2, two arguments, 3 < tokens < 5: only [OP d d ] fits, 4 * 10 * 10 = 400 distinct trees
    monkeypatch.setattr(generator, "MAX_CONSECUTIVE_REJECTIONS", 5000)
    assert len(generate_samples(400, 0, min_length=3, max_length=5, max_depth=2, max_args=2)) == 400
    with pytest.raises(ValueError, match="stalled after 400 samples"):
        generate_samples(401, 0, min_length=3, max_length=5, max_depth=2, max_args=2)


# ---------------------------------------------------------------------------------- official format


def test_official_format_round_trip(tmp_path):
    rows = {
        "train": [("[MAX 2 9 ]", 9), ("[SM 7 8 9 ]", 4), ("[MIN 3 [MAX 2 9 ] ]", 3)],
        "val": [("[MED 2 7 5 8 ]", 6)],
        "test": [("[MAX 2 9 [MIN 4 7 ] 0 ]", 9), ("[MED 0 9 ]", 4)],
    }
    for split, samples in rows.items():
        write_rows(
            tmp_path / f"basic_{split}.tsv", ["Source\tTarget"] + [f"{lra_form(e)}\t{v}" for e, v in samples]
        )
    data = read_listops_tsv(tmp_path / "basic_train.tsv")
    # PAD 0, digit d -> d + 1, [MIN 11, [MAX 12, [MED 13, [SM 14, ] 15
    expected = [[12, 3, 10, 15], [14, 8, 9, 10, 15], [11, 4, 12, 3, 10, 15, 15]]
    assert [data.tokens[data.offsets[i] : data.offsets[i + 1]].tolist() for i in range(3)] == expected
    assert data.labels.tolist() == [9, 4, 3]

    dm = ListOpsDataModule(data_dir=str(tmp_path), batch_size=2)
    dm.setup("test")
    tokens, lengths, labels = next(iter(dm.test_dataloader()))
    assert tokens.dtype == lengths.dtype == labels.dtype == torch.long
    assert lengths.tolist() == [9, 4] and labels.tolist() == [9, 4]
    assert tokens[1].tolist() == [13, 1, 10, 15] + [0] * 5
    assert dm.num_classes == 10 and dm.vocab_size == 16


@pytest.mark.parametrize(
    "row,message",
    [
        ("( ( ( [MAX 2 ) 9 ) ] )", "expected 2 tab-separated columns"),
        ("( ( ( [MAX 2 ) 9 ) ] )\t9\t1", "expected 2 tab-separated columns"),
        ("( ( ( [MAX 2 ) 9 ) ] )\tnine", "Target must be an integer"),
        ("( ( ( [MAX 2 ) 9 ) ] )\t10", "Target must be in 0-9"),
        ("( ( ( [MAX 2 ) 9 ) ] )\t-1", "Target must be in 0-9"),
        ("( ( ( [MAX 2 ) 12 ) ] )\t9", "unknown token '12'"),
        ("( ( ( [FIRST 2 ) 9 ) ] )\t2", r"unknown token '\[FIRST'"),
        ("( )\t2", "no tokens"),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path, row, message):
    path = write_rows(tmp_path / "basic_train.tsv", ["Source\tTarget", "( ( ( [MIN 2 ) 9 ) ] )\t2", row])
    with pytest.raises(ValueError, match=message) as error:
        read_listops_tsv(path)
    assert f"{path}, line 3" in str(error.value)


def test_bad_header_is_reported(tmp_path):
    path = write_rows(tmp_path / "basic_train.tsv", ["Input\tLabel", "( ( ( [MIN 2 ) 9 ) ] )\t2"])
    with pytest.raises(ValueError, match="line 1: expected the header"):
        read_listops_tsv(path)


def test_missing_path_says_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError, match="ssmzoo data listops") as error:
        ListOpsDataModule(data_dir=str(tmp_path / "nowhere")).prepare_data()
    assert str(tmp_path / "nowhere") in str(error.value)
    write_rows(tmp_path / "basic_train.tsv", ["Source\tTarget", "( ( ( [MIN 2 ) 9 ) ] )\t2"])
    with pytest.raises(FileNotFoundError, match="basic_val.tsv, basic_test.tsv"):
        ListOpsDataModule(data_dir=str(tmp_path)).setup("fit")
    with pytest.raises(FileNotFoundError, match="basic_val.tsv"):
        read_listops_tsv(tmp_path / "basic_val.tsv")


def test_max_tokens_cuts_long_sequences(tmp_path):
    path = write_rows(tmp_path / "t.tsv", ["Source\tTarget", f"{lra_form('[SM 1 2 3 4 5 6 ]')}\t1"])
    with pytest.warns(UserWarning, match="cut 1 sequences"):
        data = read_listops_tsv(path, max_tokens=5)
    assert data.tokens.tolist() == [14, 2, 3, 4, 5]


# ---------------------------------------------------------------------------------- datamodule


def test_generated_batches_are_padded_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMZOO_DATA", str(tmp_path))
    args = dict(n_train=48, n_val=8, n_test=8, seed=1, batch_size=16, **SHORT)
    dm = ListOpsDataModule(**args)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.split_dir.parent == tmp_path / "lra" / "listops"
    seen = 0
    for tokens, lengths, labels in dm.train_dataloader():
        assert tokens.shape == (len(lengths), int(lengths.max()))
        positions = torch.arange(tokens.shape[1])
        valid = positions[None, :] < lengths[:, None]
        assert bool((tokens[valid] >= 1).all()) and bool((tokens[~valid] == 0).all())
        assert bool((lengths > SHORT["min_length"]).all()) and bool((lengths < SHORT["max_length"]).all())
        assert bool(((labels >= 0) & (labels < 10)).all())
        seen += len(labels)
    assert seen == 48

    # a second datamodule with the same settings reads the cache instead of generating again
    def no_generation(*a, **k):
        raise AssertionError("regenerated")

    monkeypatch.setattr(generator, "generate_listops", no_generation)
    again = ListOpsDataModule(**args)
    again.prepare_data()
    again.setup()
    assert again.split_dir == dm.split_dir
    np.testing.assert_array_equal(again.load_split("train")[0].tokens, dm.load_split("train")[0].tokens)
    other = ListOpsDataModule(**{**args, "seed": 2})
    assert other.split_dir != dm.split_dir
    with pytest.raises(AssertionError, match="regenerated"):
        other.setup("fit")
    assert sorted(p.name for p in (tmp_path / "lra" / "listops").iterdir()) == [dm.split_dir.name]


def test_majority_class_accuracy(tmp_path):
    train = [("[MAX 2 9 ]", 9), ("[MAX 1 9 ]", 9), ("[MIN 3 8 ]", 3)]
    test = [("[MAX 0 9 ]", 9), ("[MIN 2 5 ]", 2), ("[MIN 2 6 ]", 2), ("[SM 4 5 ]", 9)]
    for split, samples in (("train", train), ("val", train[:1]), ("test", test)):
        write_rows(
            tmp_path / f"basic_{split}.tsv", ["Source\tTarget"] + [f"{lra_form(e)}\t{v}" for e, v in samples]
        )
    dm = ListOpsDataModule(data_dir=str(tmp_path))
    assert dm.majority_class_accuracy("test") == pytest.approx(0.5)  # train majority is 9
    assert dm.majority_class_accuracy("train") == pytest.approx(2 / 3)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="batch_size"):
        ListOpsDataModule(batch_size=0)
    with pytest.raises(ValueError, match="n_val"):
        ListOpsDataModule(n_val=0)
    with pytest.raises(ValueError, match="min_length"):
        ListOpsDataModule(min_length=2000, max_length=500)
    with pytest.raises(ValueError, match="split"):
        ListOpsDataModule(data_dir="x").load_split("dev")
    with pytest.raises(ValueError, match="max_depth must be an int"):
        ListOpsDataModule(max_depth="4")
    with pytest.raises(ValueError, match="num_workers"):
        ListOpsDataModule(num_workers=-1)
    with pytest.raises(ValueError, match="max_tokens"):
        ListOpsDataModule(max_tokens=0)


def test_split_with_only_a_header_is_an_error_naming_file_and_flag(tmp_path):
    """A header-only split used to give a NaN majority baseline (mean of an empty array)."""
    rows = ["Source\tTarget", f"{lra_form('[MAX 2 9 ]')}\t9"]
    write_rows(tmp_path / "basic_train.tsv", rows)
    write_rows(tmp_path / "basic_val.tsv", rows)
    write_rows(tmp_path / "basic_test.tsv", ["Source\tTarget"])
    dm = ListOpsDataModule(data_dir=str(tmp_path))
    dm.setup("fit")  # train and val are fine
    for call in (lambda: dm.setup("test"), lambda: dm.majority_class_accuracy("test")):
        with pytest.raises(ValueError, match="test split is empty") as error:
            call()
        assert str(tmp_path / "basic_test.tsv") in str(error.value)
        assert "--data.init_args.data_dir" in str(error.value)


def test_command_line_writes_the_three_files(tmp_path, capsys):
    out = command.main(
        [
            "--out",
            str(tmp_path / "cli"),
            "--n-train",
            "30",
            "--n-val",
            "5",
            "--n-test",
            "5",
            "--min-length",
            "20",
            "--max-length",
            "120",
            "--seed",
            "4",
        ]
    )
    assert out == tmp_path / "cli"
    assert [len(read_listops_tsv(out / f"basic_{s}.tsv")) for s in ("train", "val", "test")] == [30, 5, 5]
    assert "wrote 40 samples" in capsys.readouterr().out
    direct = generate_listops(tmp_path / "direct", 30, 5, 5, seed=4, min_length=20, max_length=120)
    assert (direct / "basic_test.tsv").read_bytes() == (out / "basic_test.tsv").read_bytes()
