"""torch.compile(fullgraph=True) and torch.export on the models: SequenceModel, LanguageModel (Mamba, Mamba-2, a
hybrid pattern), RAMba and the Titans models; compiled values and gradients equal eager ones. torch.export of a
language model's forward with a dynamic length, and of its one-token decode step (state in, state out): saved,
loaded and run, it equals eager."""

from __future__ import annotations

import io

import pytest
import torch

from ssmzoo import LanguageModel, SequenceModel
from ssmzoo.models import LinearForecaster, SpaceTime, SSMForecaster
from ssmzoo.models.decode_package import (DecodeStep, decode_metadata, export_decode_step, generate_greedy,
                                         package_decode_step)
from ssmzoo.models.ramba import RAMba
from ssmzoo.models.titans import MAC, MAG, MAL

VOCAB = 11


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _flat(x):
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _flat(v)]
    return []


def _assert_compiled_equals_eager(model, run, tol=1e-8, backend="aot_eager"):
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    want, got = _flat(run(model)), _flat(run(compiled))
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(4)
    weights = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in want if t.is_floating_point()]

    def grads(outs):
        loss = sum((t * w).sum() for t, w in zip([t for t in outs if t.is_floating_point()], weights))
        return torch.autograd.grad(loss, params, allow_unused=True)

    for a, b in zip(grads(got), grads(want)):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def _tokens(batch, length, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _lm(layer, **args):
    torch.manual_seed(0)
    return LanguageModel(VOCAB, 8, n_layers=2, layer=layer, layer_args=args).double()


LMS = {
    "mamba": lambda: _lm("mamba", d_state=4, d_conv=3, expand=2),
    "mamba2": lambda: _lm("mamba2", d_state=4, d_conv=3, expand=2, headdim=4, ngroups=1, chunk_size=4),
    "hybrid": lambda: LanguageModel(VOCAB, 8, pattern=[{"layer": "mamba", "args": {"d_state": 4}},
                                                       {"layer": "attention", "args": {"heads": 2}}]).double(),
    "ramba": lambda: RAMba(VOCAB, d_model=16, n_lower_layers=1, n_hsa_layers=1, local_per_hsa=1, heads=2, kv_heads=1,
                           chunk_size=4, top_k=2, lower_layer="mamba", local_layer="mamba",
                           lower_layer_args={"d_state": 4}, local_layer_args={"d_state": 4}).double(),
    "titans_mac": lambda: MAC(VOCAB, d_model=8, n_layers=1, heads=2, segment_len=4, persistent_tokens=2,
                              memory_heads=2).double(),
    "titans_mag": lambda: MAG(VOCAB, d_model=8, n_layers=1, heads=2, window=4, persistent_tokens=2, memory_heads=2,
                              memory_chunk=4).double(),
    "titans_mal": lambda: MAL(VOCAB, d_model=8, n_layers=1, heads=2, window=4, persistent_tokens=2, memory_heads=2,
                              memory_chunk=4).double(),
}


DEFAULT = {"mamba", "mamba2", "ramba", "titans_mac"}  # the rest are slow (about 30 s each on a busy 2-core machine)


def _some_slow(names):
    return [n if n in DEFAULT else pytest.param(n, marks=pytest.mark.slow) for n in names]


@pytest.mark.parametrize("name", _some_slow(LMS))
def test_language_model_fullgraph(name):
    """Forward and backward with the state out, then a continuation with the state in."""
    torch.manual_seed(0)
    model = LMS[name]().train()
    ids = _tokens(2, 9)
    _assert_compiled_equals_eager(model, lambda m: m(ids, return_state=True))
    with torch.no_grad():
        _, state = model(_tokens(2, 5, seed=2), return_state=True)
    if name.startswith("titans"):  # its layers branch on the state's values: a clear error, not a graph break
        with pytest.raises(Exception, match="cannot be compiled with fullgraph=True"):
            torch.compile(model, backend="aot_eager", fullgraph=True)(ids, state=state)
        return
    _assert_compiled_equals_eager(model, lambda m: m(ids, state=state, return_state=True))


def test_sequence_model_fullgraph():
    torch.manual_seed(0)
    model = SequenceModel(d_output=5, vocab_size=VOCAB, d_model=8, n_layers=2, layer=["s4d", "mamba"],
                          layer_args={"d_state": 4}).double().train()
    ids, lengths = _tokens(3, 10), torch.tensor([10, 7, 3])
    _assert_compiled_equals_eager(model, lambda m: m(ids, lengths=lengths))


# Every forecaster kind and its options that change the graph: NLinear (last-value norm), DLinear (moving-average
# decomposition) with RevIN, SpaceTime (linear and repeat embeddings, its closed-loop decoder), SSM forecasters over
# S4D, Mamba and Mamba-2 (channel-independent, patches with a flatten head, RevIN with affine weights, linear skip).
FORECASTERS = {
    "nlinear": lambda: LinearForecaster(3, 2, 16, 5),
    "dlinear_revin": lambda: LinearForecaster(3, 2, 16, 5, decomposition=True, moving_average=5, instance_norm="revin"),
    "spacetime": lambda: SpaceTime(3, 2, 16, 5, d_model=8, d_state=4, n_blocks=1),
    "spacetime_repeat_ci": lambda: SpaceTime(3, 3, 16, 5, d_model=8, d_state=4, embedding="repeat",
                                             instance_norm="revin", channel_independent=True),
    "ssm_s4d": lambda: SSMForecaster(3, 2, 16, 5, layer="s4d", layer_args={"d_state": 4}, d_model=8, n_layers=2),
    "ssm_s4d_patches": lambda: SSMForecaster(3, 3, 16, 5, layer="s4d", layer_args={"d_state": 4}, d_model=8,
                                             n_layers=1, instance_norm="revin", revin_affine=True,
                                             channel_independent=True, patch_len=4, stride=2, head="flatten",
                                             linear_skip=True),
    "ssm_mamba": lambda: SSMForecaster(3, 3, 16, 5, layer="mamba", layer_args={"d_state": 4}, d_model=8, n_layers=1,
                                       channel_independent=True, linear_skip=True),
    "ssm_mamba2": lambda: SSMForecaster(3, 2, 16, 5, layer="mamba2", d_model=8, n_layers=1,
                                        layer_args={"d_state": 4, "headdim": 4, "chunk_size": 4}),
}


# The default suite compiles three (about 20 s each on a busy 2-core machine): the companion SSM with its closed-loop
# decoder, the most options at once, and the smallest; the others are slow.
DEFAULT_FORECASTERS = {"nlinear", "spacetime", "ssm_s4d_patches"}


@pytest.mark.parametrize("name", [n if n in DEFAULT_FORECASTERS else pytest.param(n, marks=pytest.mark.slow)
                                  for n in FORECASTERS])
def test_forecaster_fullgraph(name):
    """Forecast and gradients of every parameter, compiled (fullgraph) vs eager, in float64."""
    torch.manual_seed(0)
    model = FORECASTERS[name]().double().train()
    x = torch.randn(4, 16, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _assert_compiled_equals_eager(model, lambda m: m(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_language_model_inductor(name):
    model = LMS[name]().train()
    ids = _tokens(2, 9)
    _assert_compiled_equals_eager(model, lambda m: m(ids), tol=1e-7, backend="inductor")


class _Forward(torch.nn.Module):
    """A language model's forward without states, as torch.export takes it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(ids)


def _save_load(program):
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    return torch.export.load(buffer)


@pytest.mark.parametrize("name", ["mamba", pytest.param("mamba2", marks=pytest.mark.slow)])
def test_export_forward_dynamic_length(name):
    model = LMS[name]().eval()
    length = torch.export.Dim("length", min=2, max=256)
    with torch.no_grad():
        program = torch.export.export(_Forward(model), (_tokens(2, 9),), dynamic_shapes=({1: length},))
    loaded = _save_load(program)
    for n in (5, 9, 23):
        ids = _tokens(2, n, seed=n)
        with torch.no_grad():
            torch.testing.assert_close(loaded.module()(ids), model(ids), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["mamba", pytest.param("mamba2", marks=pytest.mark.slow),
                                  pytest.param("hybrid", marks=pytest.mark.slow)])
def test_export_decode_step(name):
    model = LMS[name]().eval()
    step = DecodeStep(model)
    with torch.no_grad():
        _, state = model(_tokens(2, 6), return_state=True)
        leaves = torch.utils._pytree.tree_leaves(state)
        token = _tokens(2, 1, seed=3)[:, 0]
        program = torch.export.export(step, (token, *leaves))
    loaded = _save_load(program).module()
    with torch.no_grad():
        got = loaded(token, *leaves)
        want = step(token, *leaves)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# -- AOTInductor: the decode step compiled ahead of time, driven by a loop without the model ---------------------


class _ExportedStep:
    """The exported program of the decode step in place of its compiled package: the same call and metadata, so the
    loop and the export are checked in the default suite without the C++ compile."""

    def __init__(self, model):
        self.module, self.metadata = export_decode_step(model).module(), decode_metadata(model)

    def __call__(self, *args):
        return self.module(*args)

    def get_metadata(self):
        return self.metadata


@pytest.mark.parametrize("batch", [1, 3])
def test_exported_decode_step_generates_the_same_tokens(batch):
    """The step exported with PyTorch's reference ops and a dynamic batch (traced at 2), driven by generate_greedy
    from a zero state, gives the tokens of LanguageModel.generate (prefill by forward, then the fused C++ step)."""
    model = LMS["mamba"]().eval()
    step = _ExportedStep(model)
    prompt = _tokens(batch, 6, seed=5)
    torch.testing.assert_close(generate_greedy(step, prompt, 12), model.generate(prompt, max_new_tokens=12),
                               rtol=0, atol=0)
    assert generate_greedy(step, prompt, 0).equal(prompt)


def test_exported_decode_step_holds_pytorch_operators_only():
    """Before the export chose the reference backends, the graph called ssmzoo::mamba_step_cpu, which a package
    loaded without ssmzoo cannot run."""
    program = export_decode_step(LMS["mamba2"]().eval())
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert targets and not any(t.startswith("ssmzoo") for t in targets), sorted(targets)


def test_decode_package_says_what_it_cannot_compile(tmp_path):
    with pytest.raises(ValueError, match="changes shape while decoding"):  # an attention KV cache grows
        export_decode_step(LMS["hybrid"]().eval())
    with pytest.raises(ValueError, match="path must end with .pt2"):
        package_decode_step(LMS["mamba"]().eval(), tmp_path / "step.zip")
    with pytest.raises(ValueError, match="package written by package_decode_step"):
        generate_greedy(lambda *a: a, _tokens(1, 3), 2)
    step = _ExportedStep(LMS["mamba"]().eval())
    with pytest.raises(ValueError, match="input_ids must be a non-empty"):
        generate_greedy(step, _tokens(1, 3)[0], 2)
    with pytest.raises(ValueError, match="vocab_size=11"):
        generate_greedy(step, _tokens(1, 3) + VOCAB, 2)
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 0"):
        generate_greedy(step, _tokens(1, 3), -1)


# The loop of generate_greedy written out, in a process that never imports ssmzoo: the package runs on PyTorch alone.
_FRESH_PROCESS = """
import json, sys, torch
step = torch._inductor.aoti_load_package(sys.argv[1])
layout = json.loads(step.get_metadata()["ssmzoo_decode_step"])
prompt = torch.tensor(json.loads(sys.argv[2]))
state = [torch.zeros((prompt.shape[0], *shape), dtype=getattr(torch, dtype)) for shape, dtype in layout["state"]]
for t in range(prompt.shape[1]):
    logits, *state = step(prompt[:, t].contiguous(), *state)
new = []
for _ in range(int(sys.argv[3])):
    new.append(logits.argmax(-1))
    logits, *state = step(new[-1], *state)
assert not any(name.startswith("ssmzoo") for name in sys.modules)
print(json.dumps(torch.stack(new, 1).tolist()))
"""


@pytest.mark.slow  # the C++ compile: about 40 s on a busy 2-core machine
@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_aoti_package_generates_the_same_tokens(name, tmp_path):
    import json
    import os
    import subprocess
    import sys

    model = LMS[name]().eval()
    path = package_decode_step(model, tmp_path / "step.pt2")
    assert [p.name for p in tmp_path.iterdir()] == ["step.pt2"]  # no partial file left behind
    step = torch._inductor.aoti_load_package(str(path))
    for batch in (1, 3):
        prompt = _tokens(batch, 6, seed=batch)
        torch.testing.assert_close(generate_greedy(step, prompt, 12), model.generate(prompt, max_new_tokens=12),
                                   rtol=0, atol=0)
    prompt = _tokens(2, 5, seed=7)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, str(path), json.dumps(prompt.tolist()), "9"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    want = model.generate(prompt, max_new_tokens=9)[:, 5:]
    assert json.loads(done.stdout.splitlines()[-1]) == want.tolist()


# -- `ssmzoo fit --compile true` -------------------------------------------------------------------------------


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("compile_flag", [True, False])
def test_fit_with_compile_true_trains_the_compiled_network(compile_flag, tmp_path, monkeypatch):
    """The Mamba LM config through the CLI: with --compile true the task's network is compiled in place and every
    training step runs Dynamo's graphs (a counting backend stands in for Inductor, which takes minutes on 2 cores);
    without it nothing is compiled."""
    from pathlib import Path

    from ssmzoo.cli import run

    graphs, calls = [], []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)

        def call(*args):
            calls.append(len(graphs))
            return gm.forward(*args)
        return call

    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, *a, **k: compile_module(self, *a, **{**k, "backend": counting_backend}))
    monkeypatch.setenv("SSMZOO_DATA", str(tmp_path / "data"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(["ROMEO: O, she doth teach the torches to burn bright!\n" * 8,
                              "JULIET: My bounty is as boundless as the sea,\n" * 8, "NURSE: Madam!\n" * 20]):
        (corpus / f"{i}.txt").write_text(text)
    root = Path(__file__).resolve().parents[1]
    cli = run(["fit", "--config", str(root / "configs/lm/mamba.yaml"), f"--data.init_args.path={corpus}",
               "--data.init_args.tokenizer=byte", "--data.init_args.seq_len=16", "--data.init_args.val_split=1",
               "--data.init_args.test_split=1", "--data.init_args.batch_size=4",
               "--model.init_args.model.init_args.d_model=16", "--model.init_args.model.init_args.n_layers=1",
               "--trainer.max_steps=4", "--trainer.val_check_interval=4", "--trainer.limit_val_batches=1",
               "--trainer.limit_test_batches=1", "--model.init_args.sample_length=0",
               "--trainer.enable_model_summary=false", "--trainer.enable_progress_bar=false",
               f"--trainer.default_root_dir={tmp_path / 'runs'}", f"--compile={str(compile_flag).lower()}"])
    network = cli.model.model
    assert cli.results["steps"] == 4
    if not compile_flag:
        assert not graphs and network._compiled_call_impl is None
        return
    assert network._compiled_call_impl is not None and graphs
    # 4 training steps, the validation and the test batch ran the compiled graphs
    assert len(calls) >= 6, (len(graphs), len(calls))
