"""The gated delta rule (Gated DeltaNet): the reference against independent forms (the paper's equation in its
own orientation, transformers' Qwen3-Next torch paths), its continuation and packed-document semantics, one-token
steps, every backend against the reference (outputs, final states and every gradient), the argument checks and
the dispatch."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from ssmzoo.ops.dispatch import Request
from ssmzoo.ops.gated_delta import dispatch, gated_delta_reference, gated_delta_rule, gated_delta_step
from ssmzoo.ops.gated_delta.inputs import GatedDeltaInputs
from ssmzoo.ops.segments import Segments
from triton_checks import check_under_interpreter, compile_for_hopper

CPU = torch.device("cpu")
CPU_BACKENDS = [n for n, b in dispatch.backends.items() if n != "reference" and "cpu" in b.devices]
GRAD_ARGS = ("q", "k", "v", "g", "beta", "initial_state")


def make_inputs(batch=2, length=7, heads_k=2, heads_v=4, d_k=5, d_v=3, dtype=torch.float64, seed=0, num_seqs=None,
                with_state=True):
    """Random inputs as a layer makes them: L2-normalised keys, g = log α < 0, β in (0, 1)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    args = {
        "q": rnd(batch, length, heads_k, d_k),
        "k": F.normalize(rnd(batch, length, heads_k, d_k), dim=-1),
        "v": rnd(batch, length, heads_v, d_v),
        "g": -torch.rand(batch, length, heads_v, generator=gen, dtype=dtype) * 0.7 - 0.01,
        "beta": torch.rand(batch, length, heads_v, generator=gen, dtype=dtype),
    }
    if with_state:
        args["initial_state"] = rnd(num_seqs or batch, heads_v, d_k, d_v)
    return args


def ref(args, **kwargs):
    return gated_delta_rule(**args, backend="reference", **kwargs)


# -- the reference against forms that share none of its code --------------------------------------------------
def paper_form(q, k, v, g, beta, initial_state, scale):
    """The paper's equation as written (Yang et al. 2024, section 3), state d_v × d_k, one row, one head at a time:
    S_t = S_{t-1} (α_t (I − β_t k_t k_tᵀ)) + β_t v_t k_tᵀ, o_t = S_t q_t."""
    batch, length, heads_k, d_k = q.shape
    heads_v = v.shape[2]
    out = torch.zeros_like(v)
    finals = torch.zeros_like(initial_state)
    eye = torch.eye(d_k, dtype=q.dtype)
    for b in range(batch):
        for h in range(heads_v):
            hk = h // (heads_v // heads_k)
            S = initial_state[b, h].T.clone()  # (d_v, d_k)
            for t in range(length):
                kt = k[b, t, hk]
                S = S @ (torch.exp(g[b, t, h]) * (eye - beta[b, t, h] * torch.outer(kt, kt))) \
                    + beta[b, t, h] * torch.outer(v[b, t, h], kt)
                out[b, t, h] = S @ (scale * q[b, t, hk])
            finals[b, h] = S.T
    return out, finals


def test_reference_matches_the_papers_equation():
    args = make_inputs(length=6)
    o, final = ref(args, scale=0.8, output_final_state=True)
    o_paper, final_paper = paper_form(**args, scale=0.8)
    torch.testing.assert_close(o, o_paper, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, final_paper, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", ["torch_recurrent_gated_delta_rule", "torch_chunk_gated_delta_rule"])
@pytest.mark.parametrize("length,chunk", [(9, 4), (16, 8)])
def test_op_matches_transformers_qwen3_next_torch_paths(path, length, chunk):
    # transformers' Qwen3-Next fallbacks: the same shapes, state layout (heads_v, d_k, d_v), default scale d_k^-½,
    # g = log α, value head h on key head h // (heads_v / heads_k); they compute in float32, without L2-normalising
    # q and k when use_qk_l2norm_in_kernel=False.
    modeling = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")
    fn = getattr(modeling, path)
    fn = getattr(fn, "__wrapped__", fn)  # the torch fallback, never a hub kernel
    args = make_inputs(length=length, dtype=torch.float32, d_k=8, d_v=4)
    kwargs = {"chunk_size": chunk} if "chunk" in path else {}
    o_hf, final_hf = fn(args["q"], args["k"], args["v"], g=args["g"], beta=args["beta"],
                        initial_state=args["initial_state"], output_final_state=True, use_qk_l2norm_in_kernel=False,
                        **kwargs)
    for backend in ["reference"] + CPU_BACKENDS:
        o, final = gated_delta_rule(**args, chunk_size=chunk, output_final_state=True, backend=backend)
        torch.testing.assert_close(o, o_hf, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(final, final_hf, rtol=1e-5, atol=1e-5)
    # use_qk_l2norm_in_kernel=True (what Qwen3-Next calls) is our op on q, k divided by sqrt(Σ x² + 1e-6).
    raw = {**args, "q": 3 * args["q"], "k": 2 * args["q"].flip(1)}
    o_hf, _ = fn(raw["q"], raw["k"], raw["v"], g=raw["g"], beta=raw["beta"], initial_state=raw["initial_state"],
                 output_final_state=True, use_qk_l2norm_in_kernel=True, **kwargs)
    unit = {n: raw[n] * torch.rsqrt((raw[n] ** 2).sum(-1, keepdim=True) + 1e-6) for n in ("q", "k")}
    torch.testing.assert_close(ref({**raw, **unit}), o_hf, rtol=1e-5, atol=1e-5)


def test_gates_do_what_they_say():
    args = make_inputs(length=5, with_state=False)
    # β = 0 writes nothing and α = 1 keeps everything: the state stays the initial one.
    h0 = make_inputs(length=5)["initial_state"]
    o, final = ref({**args, "beta": torch.zeros_like(args["beta"]), "g": torch.zeros_like(args["g"])},
                   initial_state=h0, output_final_state=True)
    torch.testing.assert_close(final, h0)
    # β = 1 with a unit key overwrites that key's value: reading k back gives v exactly.
    args["beta"] = torch.ones_like(args["beta"])
    _, final = ref(args, output_final_state=True)
    k_last = args["k"][:, -1].repeat_interleave(2, dim=1)  # (batch, heads_v, d_k)
    torch.testing.assert_close(torch.einsum("bhkv,bhk->bhv", final, k_last), args["v"][:, -1])


# -- semantics: continuation, steps, packed documents ------------------------------------------------------------
def split(args, t):
    timed = ("q", "k", "v", "g", "beta")
    first = {n: (x[:, :t] if n in timed else x) for n, x in args.items()}
    rest = {n: x[:, t:] for n, x in args.items() if n in timed}
    return first, rest


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
def test_continuation_equals_one_call(backend):
    args = make_inputs(length=11)
    o, final = gated_delta_rule(**args, chunk_size=4, output_final_state=True, backend=backend)
    first, rest = split(args, 6)
    o1, h1 = gated_delta_rule(**first, chunk_size=4, output_final_state=True, backend=backend)
    o2, h2 = gated_delta_rule(**rest, initial_state=h1, chunk_size=4, output_final_state=True, backend=backend)
    torch.testing.assert_close(torch.cat([o1, o2], 1), o, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h2, final, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_steps_equal_the_sequence(dtype, tol):
    args = make_inputs(length=8, dtype=dtype)
    o, final = ref(args, scale=0.6, output_final_state=True)
    state = args["initial_state"]
    for t in range(8):
        o_t, state = gated_delta_step(*(args[n][:, t] for n in ("q", "k", "v", "g", "beta")), state, scale=0.6)
        torch.testing.assert_close(o_t, o[:, t], rtol=tol, atol=tol)
    assert state.dtype == final.dtype
    torch.testing.assert_close(state, final, rtol=tol, atol=tol)


def packed_case():
    # Row 0: documents of 3, 1 and 5 tokens; row 1: one document spanning the row.
    return Segments.from_lengths([[3, 1, 5], [9]], 9)


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
def test_packed_documents_equal_each_document_alone(backend):
    segments = packed_case()
    args = make_inputs(batch=2, length=9, num_seqs=segments.num_docs)
    leaves = {n: x.clone().requires_grad_() for n, x in args.items()}
    o, finals = gated_delta_rule(**leaves, segments=segments, chunk_size=2, output_final_state=True, backend=backend)
    assert finals.shape == (4, 4, 5, 3)
    gen = torch.Generator().manual_seed(5)
    wo, wf = torch.randn(o.shape, generator=gen, dtype=o.dtype), torch.randn(finals.shape, generator=gen,
                                                                              dtype=o.dtype)
    grads = torch.autograd.grad((o * wo).sum() + (finals * wf).sum(), list(leaves.values()))
    grads = dict(zip(leaves, grads))
    timed = ("q", "k", "v", "g", "beta")
    for d, span in enumerate(segments.spans):
        one = {n: args[n][span.row:span.row + 1, span.start:span.stop].clone().requires_grad_() for n in timed}
        one["initial_state"] = args["initial_state"][d:d + 1].clone().requires_grad_()
        o_d, h_d = ref(one, output_final_state=True)
        torch.testing.assert_close(o[span.row, span.start:span.stop], o_d[0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(finals[d], h_d[0], rtol=1e-10, atol=1e-10)
        loss = (o_d[0] * wo[span.row, span.start:span.stop]).sum() + (h_d[0] * wf[d]).sum()
        alone = torch.autograd.grad(loss, list(one.values()))
        for n, gd in zip(one, alone):
            got = grads[n][d] if n == "initial_state" else grads[n][span.row, span.start:span.stop]
            torch.testing.assert_close(got, gd[0], rtol=1e-10, atol=1e-10, msg=f"grad {n}, document {d}")


# -- every backend against the reference ------------------------------------------------------------------------
def run_and_grads(fn, args, **kwargs):
    leaves = {n: x.detach().clone().requires_grad_() for n, x in args.items()}
    gen = torch.Generator().manual_seed(123)
    o, final = fn(**leaves, output_final_state=True, **kwargs)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype).to(o.device)).sum()
    loss = loss + (final * torch.randn(final.shape, generator=gen, dtype=final.dtype).to(o.device)).sum()
    return o, final, dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))


def assert_close_scaled(got, want, tol, what):
    """max |got - want| <= tol · max(1, max |want|): a relative bound that survives entries near 0."""
    scale = max(1.0, want.abs().max().item())
    err = (got - want).abs().max().item()
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:.0e} x scale {scale:.3g}"


def compare(fn, case, dtype, tol, device="cpu"):
    case = dict(case)
    kwargs = {n: case.pop(n) for n in ("chunk_size", "scale") if n in case}
    lengths = case.pop("segments", None)
    segments = None
    if lengths is not None:
        segments = Segments.from_lengths(lengths, case["length"], device=device)
        case["num_seqs"] = segments.num_docs
    args = {n: x.to(device) for n, x in make_inputs(**case, dtype=dtype).items()}
    want = run_and_grads(functools.partial(gated_delta_reference_kw), args, segments=segments, **kwargs)
    got = run_and_grads(fn, args, segments=segments, **kwargs)
    assert got[0].dtype == want[0].dtype and got[1].dtype == want[1].dtype
    assert_close_scaled(got[0], want[0], tol, "o")
    assert got[1].shape == want[1].shape
    assert_close_scaled(got[1], want[1], tol, "final state")
    assert set(got[2]) == set(want[2]) == {n for n in GRAD_ARGS if n in args}
    for name in want[2]:
        assert_close_scaled(got[2][name], want[2][name], tol, f"grad {name}")


def gated_delta_reference_kw(q, k, v, g, beta, initial_state=None, output_final_state=False, segments=None,
                             chunk_size=64, scale=None):
    return gated_delta_reference(GatedDeltaInputs(q, k, v, g, beta, scale, chunk_size, initial_state, segments),
                                 output_final_state)


CASES = {
    "L1": {"length": 1, "chunk_size": 4},
    "L7-chunk3": {"length": 7, "chunk_size": 3},  # the last chunk partial
    "L8-chunk1": {"length": 8, "chunk_size": 1},  # every token its own chunk
    "L8-chunk4-gva1": {"length": 8, "chunk_size": 4, "heads_k": 4},  # heads_v = heads_k
    "L13-chunk16": {"length": 13, "chunk_size": 16, "scale": 0.3},  # chunk longer than the sequence
    "L20-chunk6-no-state": {"length": 20, "chunk_size": 6, "with_state": False},
    "packed": {"batch": 2, "length": 10, "chunk_size": 3, "segments": [[4, 1, 5], [10]]},
    "packed-ones": {"batch": 1, "length": 5, "chunk_size": 2, "segments": [[1, 1, 2, 1]]},
}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_backend_matches_reference_float64(backend, case):
    compare(functools.partial(gated_delta_rule, backend=backend), CASES[case], torch.float64, tol=1e-8)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", ["L20-chunk6-no-state", "packed"])
def test_backend_matches_reference_float32(backend, case):
    compare(functools.partial(gated_delta_rule, backend=backend), {**CASES[case], "d_k": 16, "d_v": 8},
            torch.float32, tol=1e-4)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backend_matches_reference_at_kernel_sized_chunks(backend):
    # Chunks of 64 (the last one partial) and heads of 32: the BLAS calls at real sizes.
    case = {"batch": 1, "length": 150, "chunk_size": 64, "heads_k": 1, "heads_v": 2, "d_k": 32, "d_v": 16}
    compare(functools.partial(gated_delta_rule, backend=backend), case, torch.float32, tol=1e-4)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backend_in_half_precision_computes_in_float32(backend):
    args = make_inputs(length=9, dtype=torch.bfloat16)
    o, h = gated_delta_rule(**args, chunk_size=4, output_final_state=True, backend=backend)
    assert o.dtype == torch.bfloat16 and h.dtype == torch.float32
    want_o, want_h = ref(args, output_final_state=True)
    assert want_o.dtype == torch.bfloat16 and want_h.dtype == torch.float32
    assert_close_scaled(h, want_h, 1e-4, "final state")  # the same bf16 inputs, both computed in float32
    assert_close_scaled(o.float(), want_o.float(), 1e-2, "o")  # up to one bf16 rounding of the output


def repeated_key_inputs(length, decay, dtype=torch.float64):
    """One key repeated through the whole sequence with β near 1: the UT system's strictly lower part is all ~1,
    whose inverse is tame but whose powers grow like binomial coefficients (a power series in it loses every digit
    in float32: 4e9 error for one repeated key over 64 tokens, before the stable inverse)."""
    args = make_inputs(batch=1, length=length, heads_k=1, heads_v=2, d_k=16, d_v=8, dtype=dtype)
    args["k"] = args["k"][:, :1].expand_as(args["k"]).contiguous()
    args["beta"] = 0.9 + 0.1 * args["beta"]
    args["g"] = torch.full_like(args["g"], decay)
    return args


def run_and_grads_float64_cotangents(fn, args, **kwargs):
    # The same cotangents in every dtype (randn draws differ between float32 and float64 from one seed).
    leaves = {n: x.detach().clone().requires_grad_() for n, x in args.items()}
    gen = torch.Generator().manual_seed(123)
    o, final = fn(**leaves, output_final_state=True, **kwargs)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)).sum()
    loss = loss + (final * torch.randn(final.shape, generator=gen, dtype=torch.float64).to(final.dtype)).sum()
    return o, final, dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-8), (torch.float32, 1e-4)], ids=["fp64", "fp32"])
@pytest.mark.parametrize("length,chunk,decay", [(64, 64, 0.0), (100, 32, 0.0), (70, 64, -0.01)],
                         ids=["one-chunk", "L-not-multiple", "slow-decay"])
def test_repeated_keys_stay_accurate(backend, dtype, tol, length, chunk, decay):
    # Outputs, final states and every gradient in `dtype` against the float64 reference on the same inputs.
    args = repeated_key_inputs(length, decay)
    want = run_and_grads_float64_cotangents(functools.partial(gated_delta_rule, backend="reference"), args,
                                            chunk_size=chunk)
    got = run_and_grads_float64_cotangents(functools.partial(gated_delta_rule, backend=backend),
                                           {n: x.to(dtype) for n, x in args.items()}, chunk_size=chunk)
    assert_close_scaled(got[0].double(), want[0], tol, f"{backend} o")
    assert_close_scaled(got[1].double(), want[1], tol, f"{backend} final state")
    for name in want[2]:
        assert_close_scaled(got[2][name].double(), want[2][name], tol, f"{backend} grad {name}")


def test_strong_decay_stays_finite():
    # g far below exp's range: decays underflow to (floored) zeros, never inf or NaN, forward or backward.
    args = make_inputs(length=12)
    args["g"] = torch.full_like(args["g"], -300.0)
    for backend in ["reference"] + CPU_BACKENDS:
        o, final, grads = run_and_grads(functools.partial(gated_delta_rule, backend=backend), args, chunk_size=5)
        assert all(torch.isfinite(t).all() for t in (o, final, *grads.values())), backend
        want = run_and_grads(functools.partial(gated_delta_rule, backend="reference"), args, chunk_size=5)
        assert_close_scaled(o, want[0], 1e-8, f"{backend} o")


# -- argument checks --------------------------------------------------------------------------------------------
def bad_calls():
    a = make_inputs(batch=1, length=6)
    f64 = torch.float64
    yield "q must have shape", {**a, "q": a["q"][0]}
    yield "q must be a real floating", {**a, "q": a["q"].long()}
    yield "k must have q's shape", {**a, "k": a["k"][..., :4]}
    yield "v must be", {**a, "v": torch.zeros(1, 6, 3, 3, dtype=f64)}  # 3 value heads, 2 key heads
    yield "q, k and v must share one dtype", {**a, "v": a["v"].float()}
    yield "g must be", {**a, "g": a["g"][:, :5]}
    yield "beta must be", {**a, "beta": a["beta"][..., :2]}
    yield "beta must be a real floating", {**a, "beta": a["beta"].to(torch.complex128)}
    yield "scale must be", {**a, "scale": -1.0}
    yield "chunk_size must be", {**a, "chunk_size": 0}
    yield "chunk_size must be", {**a, "chunk_size": 2.0}
    yield "output_final_state must be", {**a, "output_final_state": 1}
    yield "initial_state must be", {**a, "initial_state": torch.zeros(2, 4, 5, 3, dtype=f64)}
    yield "initial_state must be .num_seqs=2", {**a, "segments": Segments.from_lengths([[2, 4]], 6)}
    yield "segments describe", {**a, "segments": Segments.from_lengths([[2, 3]], 5)}
    yield "segments must be a ssmzoo Segments", {**a, "segments": torch.zeros(1, 6)}
    yield "unknown backend", {**a, "backend": "nope"}


@pytest.mark.parametrize("match,kwargs", list(bad_calls()), ids=lambda v: v if isinstance(v, str) else "")
def test_bad_arguments_raise_value_error_naming_them(match, kwargs):
    with pytest.raises(ValueError, match=match) as info:
        gated_delta_rule(**kwargs)
    assert "gated_delta_rule" in str(info.value) or "backend" in match


def test_bad_step_arguments():
    a = make_inputs(batch=2, length=1)
    one = [a[n][:, 0] for n in ("q", "k", "v", "g", "beta")]
    with pytest.raises(ValueError, match="gated_delta_step: state must be"):
        gated_delta_step(*one, a["initial_state"][:, :, :4])
    with pytest.raises(ValueError, match="gated_delta_step: g must be"):
        gated_delta_step(*one[:3], one[3][:, :3], one[4], a["initial_state"])


def test_tensors_on_another_device_are_named():
    a = make_inputs(batch=1, length=4)
    with pytest.raises(ValueError, match="beta must be on q's device"):
        gated_delta_rule(**{**a, "beta": a["beta"].to("meta")})


# -- dispatch ---------------------------------------------------------------------------------------------------
def test_public_function_and_every_cpu_backend_pass_the_probe():
    import inspect

    params = inspect.signature(gated_delta_rule).parameters
    for name in ("scale", "chunk_size", "initial_state", "output_final_state", "segments", "backend"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
    dispatch.reset()
    for name, backend in dispatch.backends.items():
        if "cpu" in backend.devices and backend.available():
            assert dispatch.usable(name, CPU), f"gated_delta_rule backend {name} fails its probe"
    expected = "cpu" if dispatch.usable("cpu", CPU) else "chunked"  # the C++ kernel when it builds
    assert dispatch.choose("auto", Request(CPU, torch.float32, grad=True, final_state=True)).name == expected


def test_meta_tensors_give_shapes():
    a = {n: x.to("meta") for n, x in make_inputs(batch=2, length=5).items()}
    o, final = gated_delta_rule(**a, output_final_state=True)
    assert o.shape == (2, 5, 4, 3) and final.shape == (2, 4, 5, 3) and o.device.type == "meta"


TRITON_CHECK = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
import functools, torch
from ssmzoo.ops.gated_delta.triton import gated_delta_triton
from ssmzoo.ops.gated_delta.inputs import GatedDeltaInputs
from test_gated_delta import CASES, assert_close_scaled, compare, gated_delta_reference_kw, make_inputs

def fn(q, k, v, g, beta, initial_state=None, output_final_state=False, segments=None, chunk_size=64, scale=None):
    x = GatedDeltaInputs(q, k, v, g, beta, scale, chunk_size, initial_state, segments)
    return gated_delta_triton(x, output_final_state)

for name in ("L1", "L7-chunk3", "L20-chunk6-no-state", "packed"):
    compare(fn, CASES[name], torch.float64, tol=1e-8)
compare(fn, {{**CASES["L8-chunk4-gva1"], "d_k": 16, "d_v": 8}}, torch.float32, tol=1e-4)
# one key repeated through a chunk of 16 with β near 1 (see test_repeated_keys_stay_accurate_in_float32)
args = {{n: x.float() for n, x in make_inputs(batch=1, length=16, heads_k=1, heads_v=1, d_k=16, d_v=16,
                                            with_state=False).items()}}
args["k"] = args["k"][:, :1].expand_as(args["k"]).contiguous()
args["beta"], args["g"] = 0.9 + 0.1 * args["beta"], torch.zeros_like(args["g"])
want = gated_delta_reference_kw(**{{n: x.double() for n, x in args.items()}}, chunk_size=16)
assert_close_scaled(fn(**args, chunk_size=16).double(), want, 1e-4, "repeated keys")
print("triton interpreter: all match")
"""


def test_triton_matches_reference_under_interpreter():
    check_under_interpreter(TRITON_CHECK)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_triton_kernels_compile_for_hopper(dtype):
    # Both kernels at chunks of 64 and heads of 128 (see compile_for_hopper).
    pytest.importorskip("triton")
    from ssmzoo.ops.gated_delta import triton as kernels

    for fn in (kernels._forward, kernels._backward):
        compile_for_hopper(fn, {"HAS_INIT": True, **kernels._meta(64, 128, 128)}, dtype,
                           types={"starts_ptr": "*i32", "scale": dtype})
