"""The synthetic tasks' definitions: each example asks exactly what the task says."""

from __future__ import annotations

import pytest
import torch

from ssmzoo.data.synthetic import (
    InductionHeadsDataModule,
    MQARDataModule,
    NeedleDataModule,
    SelectiveCopyingDataModule,
    induction_heads,
    mqar,
    needles,
    selective_copying,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add overhead


def test_selective_copying_definition():
    g = torch.Generator().manual_seed(0)
    tokens, targets = selective_copying(200, seq_len=30, num_tokens=5, vocab_size=8, generator=g)
    assert tokens.shape == targets.shape == (200, 35)
    for x, y in zip(tokens, targets):
        body, markers = x[:30], x[30:]
        assert (markers == 1).all()
        assert not (body == 1).any()
        data = body[body != 0]  # the data tokens, in order of appearance
        assert len(data) == 5 and (data >= 2).all() and (data < 8).all()
        assert torch.equal(y[30:], data)
        assert (y[:30] == -100).all()
    # the data positions vary between examples and cover the whole body
    positions = (tokens[:, :30] != 0).nonzero()[:, 1]
    assert positions.min() == 0 and positions.max() == 29
    assert len({tuple((x[:30] != 0).nonzero().flatten().tolist()) for x in tokens}) > 150


def test_induction_heads_definition():
    g = torch.Generator().manual_seed(0)
    tokens, targets = induction_heads(300, seq_len=20, vocab_size=6, generator=g)
    assert tokens.shape == targets.shape == (300, 20)
    firsts = []
    for x, y in zip(tokens, targets):
        triggers = (x == 0).nonzero().flatten().tolist()
        assert len(triggers) == 2 and triggers[1] == 19 and triggers[0] <= 17
        firsts.append(triggers[0])
        assert y[-1] == x[triggers[0] + 1] and 1 <= y[-1] < 6
        assert (y[:-1] == -100).all()
    assert min(firsts) == 0 and max(firsts) == 17


def tensors(dm, split):
    samples = [dm.dataset(split)[i] for i in range(len(dm.dataset(split)))]
    return torch.stack([x["input_ids"] for x in samples]), torch.stack([x["targets"] for x in samples])


def test_needles_definition():
    g = torch.Generator().manual_seed(0)
    tokens, targets = needles(300, seq_len=40, pairs=2, filler=5, keys=4, values=6, generator=g)
    assert tokens.shape == targets.shape == (300, 40)
    slots = set()
    for x, y in zip(tokens, targets):
        haystack, asked = x[:36], x[36:]
        where = (haystack >= 5).nonzero().flatten().tolist()  # keys and values only: the filler is 0..4
        assert len(where) == 4 and all(p % 2 == 0 for p in where[::2])
        memory = {int(haystack[p]): int(haystack[p + 1]) for p in where[::2]}
        assert all(5 <= k < 9 for k in memory) and all(9 <= v < 15 for v in memory.values())
        assert len(memory) == 2  # distinct keys
        for j in (0, 2):
            key, value = int(asked[j]), int(asked[j + 1])
            assert memory[key] == value and y[36 + j] == value and y[37 + j] == -100
        assert {int(asked[0]), int(asked[2])} == set(memory)  # every key asked once
        assert (y[:36] == -100).all()
        slots.update(where[::2])
    assert slots == set(range(0, 36, 2))  # needles anywhere in the haystack


def test_mqar_definition():
    g = torch.Generator().manual_seed(0)
    tokens, targets = mqar(300, seq_len=40, num_kv_pairs=4, vocab_size=32, generator=g, random_non_queries=False)
    assert tokens.shape == targets.shape == (300, 40)
    gaps = []
    for x, y in zip(tokens, targets):
        keys, values = x[0:8:2], x[1:8:2]
        assert ((1 <= keys) & (keys < 16)).all() and ((16 <= values) & (values < 32)).all()
        assert len(set(keys.tolist())) == 4 and len(set(values.tolist())) == 4
        pairs = dict(zip(keys.tolist(), values.tolist()))
        asked = (y != -100).nonzero().flatten()
        assert len(asked) == 4 and (asked >= 8).all() and (asked % 2 == 0).all()
        assert sorted(x[asked].tolist()) == sorted(pairs)  # every key asked once, in the query region
        assert all(pairs[int(x[t])] == int(y[t]) for t in asked)  # its target: the value it was paired with
        query_region = x[8:].clone()
        query_region[asked - 8] = 0
        assert (query_region == 0).all()  # everything else is blank
        gaps += ((asked - 8) // 2).tolist()
    # Zoology's power law (a = 0.01): most keys asked soon after the context; a = 1: uniform over the 16 gaps.
    assert sum(gap < 4 for gap in gaps) > 0.4 * len(gaps)
    _, uniform = mqar(300, seq_len=40, num_kv_pairs=4, vocab_size=32, generator=g, power_a=1.0)
    later = ((uniform != -100).nonzero()[:, 1] - 8) // 2
    assert abs(later.float().mean().item() - 7.5) < 0.5 and later.max() == 15
    noisy, _ = mqar(50, seq_len=40, num_kv_pairs=4, vocab_size=32, generator=g)
    assert (noisy[:, 8:] != 0).float().mean() > 0.9  # random_non_queries: random tokens, not blanks


def test_mqar_datamodule_tests_more_pairs():
    dm = MQARDataModule(seq_len=32, num_kv_pairs=2, test_num_kv_pairs=6, test_seq_len=64, vocab_size=64,
                        num_train=4, num_val=4, num_test=4)
    _, val_targets = tensors(dm, "val")
    test_tokens, test_targets = tensors(dm, "test")
    assert val_targets.shape == (4, 32) and ((val_targets != -100).sum(1) == 2).all()
    assert test_tokens.shape == (4, 64) and ((test_targets != -100).sum(1) == 6).all()
    with pytest.raises(ValueError, match="seq_len must be an even int >= 4"):
        MQARDataModule(seq_len=30, num_kv_pairs=8)
    with pytest.raises(ValueError, match="vocab_size"):
        MQARDataModule(num_kv_pairs=8, vocab_size=16)
    with pytest.raises(ValueError, match="power_a"):
        MQARDataModule(power_a=0.0)


def test_samples_are_seeded_per_index_and_split():
    a = SelectiveCopyingDataModule(seq_len=20, num_tokens=4, vocab_size=6, num_train=8, num_val=8, num_test=8, seed=3)
    b = SelectiveCopyingDataModule(seq_len=20, num_tokens=4, vocab_size=6, num_train=8, num_val=8, num_test=8, seed=3)
    c = SelectiveCopyingDataModule(seq_len=20, num_tokens=4, vocab_size=6, num_train=8, num_val=8, num_test=8, seed=4)
    assert torch.equal(tensors(a, "train")[0], tensors(b, "train")[0])
    assert not torch.equal(tensors(a, "train")[0], tensors(c, "train")[0])
    assert not torch.equal(tensors(a, "train")[0], tensors(a, "val")[0])
    assert torch.equal(a.dataset("test")[5]["input_ids"], a.dataset("test")[5]["input_ids"])  # read again: the same
    batch = next(iter(a.train_dataloader()))
    assert set(batch) == {"input_ids", "targets"} and batch["input_ids"].shape == (8, 24)
    assert batch["input_ids"].dtype == batch["targets"].dtype == torch.long
    assert a.vocab_size == 6 and a.ignore_index == -100
    # a large split is not held in memory: samples are made when read
    big = SelectiveCopyingDataModule(seq_len=20, num_tokens=4, vocab_size=6, num_train=10**9)
    assert len(big.dataset("train")) == 10**9 and big.dataset("train")[10**9 - 1]["input_ids"].shape == (24,)


def test_test_lengths():
    dm = InductionHeadsDataModule(seq_len=16, test_seq_len=40, vocab_size=5, num_train=4, num_val=4, num_test=4)
    assert tensors(dm, "train")[0].shape == (4, 16) and tensors(dm, "val")[0].shape == (4, 16)
    assert tensors(dm, "test")[0].shape == (4, 40)
    pk = NeedleDataModule(seq_len=32, test_seq_len=128, num_train=4, num_val=4, num_test=4)
    assert tensors(pk, "val")[0].shape == (4, 32) and tensors(pk, "test")[0].shape == (4, 128)
    assert pk.vocab_size == 48 and int(tensors(pk, "test")[0].max()) < 48


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_tokens"):
        SelectiveCopyingDataModule(seq_len=4, num_tokens=5)
    with pytest.raises(ValueError, match="vocab_size"):
        SelectiveCopyingDataModule(vocab_size=2)
    with pytest.raises(ValueError, match="seq_len"):
        InductionHeadsDataModule(seq_len=2)
    with pytest.raises(ValueError, match="batch_size"):
        InductionHeadsDataModule(batch_size=0)
    with pytest.raises(ValueError, match="num_workers"):
        SelectiveCopyingDataModule(num_workers=-1)
    with pytest.raises(ValueError, match="seed must be an int"):
        InductionHeadsDataModule(seed=0.5)
    with pytest.raises(ValueError, match="split"):
        InductionHeadsDataModule().dataset("dev")
    with pytest.raises(ValueError, match="keys must be an int >= pairs"):
        NeedleDataModule(pairs=3, num_keys=2)
    with pytest.raises(ValueError, match="seq_len"):
        NeedleDataModule(test_seq_len=3)


@pytest.mark.parametrize("layer,size,floats_per_layer", [
    # 4 heads of 8 x 8 delta-rule state + the short convolution's last 3 inputs of q, k, v (32 + 32 + 32 channels)
    ("gated_deltanet", "small", 4 * 8 * 8 + (32 + 32 + 32) * 3),
    # 4 heads of 32 x 8 SSM state (d_inner 128) + the convolution's last 3 inputs of x, B, C (128 + 8 + 8 channels)
    ("mamba2", "small", 4 * 32 * 8 + (128 + 8 + 8) * 3),
    # differences up to order 3 keep the last 3 inputs of each of the 64 channels; no parameters (before: StopIteration)
    ("differencing", "large", 64 * 3),
])
def test_mqar_benchmark_counts_state_bytes(layer, size, floats_per_layer):
    import importlib.util
    from pathlib import Path

    from ssmzoo import LanguageModel

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "synthetic" / "mqar.py"
    spec = importlib.util.spec_from_file_location("mqar_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    model = LanguageModel(vocab_size=64, d_model=bench.D_MODEL, n_layers=2, layer=layer,
                          layer_args=bench.SIZES[layer][size])
    assert bench.state_bytes(model) == 2 * floats_per_layer * 4  # two layers, float32


def test_mqar_benchmark_lists_the_causal_layers():
    """Its list of layers builds every registered one; before, a layer that needs arguments it cannot choose
    (``parallel``: its layers) raised TypeError there and the whole benchmark ended without writing its table."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "synthetic" / "mqar.py"
    spec = importlib.util.spec_from_file_location("mqar_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    names = bench.causal_layers()
    assert {"mamba", "mamba2", "gated_deltanet", "swa", "s4d"} <= set(names)
    assert "parallel" not in names
