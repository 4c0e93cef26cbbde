"""SSD (Mamba-2): the reference against independent forms (the dense semiseparable matrix, transformers'
torch path), its packed-sequence and continuation semantics, every backend against the reference
(outputs, final states and every gradient), the argument checks and the dispatch."""

from __future__ import annotations

import functools
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from ssmzoo.ops.dispatch import Request
from ssmzoo.ops.segments import Segments
from ssmzoo.ops.ssd import SSDInputs, dispatch, ssd
from triton_checks import check_under_interpreter, compile_for_hopper

CPU = torch.device("cpu")
CPU_BACKENDS = [n for n, b in dispatch.backends.items() if n != "reference" and "cpu" in b.devices]
GPU_BACKENDS = [n for n, b in dispatch.backends.items() if n != "reference" and "cuda" in b.devices]
GRAD_ARGS = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state")
reference = functools.partial(ssd, backend="reference")


def keyword_form(backend_fn):
    """A backend function (which takes SSDInputs) called like the public op."""

    def call(output_final_state=False, **kwargs):
        return backend_fn(SSDInputs(**kwargs), output_final_state=output_final_state)

    return call


def make_inputs(batch=2, length=7, heads=4, headdim=3, groups=2, d_state=5, dtype=torch.float64, seed=0,
                with_all=True, num_seqs=None, D_per_channel=False):
    """Random SSD inputs; ``num_seqs``: the leading size of initial_state (default: batch)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, offset=0.0):
        return torch.randn(*shape, generator=g, dtype=dtype) * scale + offset

    args = {
        "x": rnd(batch, length, heads, headdim),
        "dt": rnd(batch, length, heads, scale=0.5, offset=-0.5),
        "A": -(torch.rand(heads, generator=g, dtype=dtype) * 1.5 + 0.1),
        "B": rnd(batch, length, groups, d_state),
        "C": rnd(batch, length, groups, d_state),
    }
    if with_all:
        args.update(D=rnd(heads, headdim) if D_per_channel else rnd(heads), z=rnd(batch, length, heads, headdim),
                    dt_bias=rnd(heads, scale=0.3), initial_state=rnd(num_seqs or batch, heads, headdim, d_state))
    return args


# -- the reference against forms that share none of its code ------------------------------------
def dense_ssd(x, dt, A, B, C, D, z, dt_bias, initial_state):
    """One sequence per row through SSD's matrix ("attention") form, Dao & Gu eq. (SSD):
    y = (L ∘ C Bᵀ) (Δ x) + (decay from the start) C h0, with L_ij = Π_{k=j+1..i} a_k built from
    explicit products (no cumsum, no recurrence). Also returns the final state the same way."""
    delta = F.softplus(dt + dt_bias)
    heads, groups = x.shape[2], B.shape[2]
    Bh, Ch = (t.repeat_interleave(heads // groups, dim=2) for t in (B, C))
    a = torch.exp(delta * A)  # (b, l, h)
    batch, length = x.shape[:2]
    ys, finals = [], []
    for r in range(batch):
        def prod(i, j, r=r):  # Π_{k=j+1..i} a_k, per head; 1 when j == i
            out = torch.ones_like(A)
            for k in range(j + 1, i + 1):
                out = out * a[r, k]
            return out

        L = torch.stack([torch.stack([prod(i, j) if j <= i else torch.zeros_like(A) for j in range(length)])
                         for i in range(length)])  # (l, l, h)
        scores = torch.einsum("ihn,jhn->ijh", Ch[r], Bh[r])
        y = torch.einsum("ijh,jhp->ihp", L * scores, delta[r, :, :, None] * x[r])
        from_start = torch.stack([prod(i, -1) for i in range(length)])  # decay of h0 up to token i
        y = y + from_start[:, :, None] * torch.einsum("hpn,ihn->ihp", initial_state[r], Ch[r])
        ys.append((y + D[:, None] * x[r]) * F.silu(z[r]))
        finals.append(torch.einsum("jh,jhp,jhn->hpn", L[-1], delta[r, :, :, None] * x[r], Bh[r])
                      + prod(length - 1, -1)[:, None, None] * initial_state[r])
    return torch.stack(ys), torch.stack(finals)


def test_reference_matches_dense_matrix_form():
    args = make_inputs(batch=2, length=6)
    y, final = reference(**args, dt_softplus=True, output_final_state=True)
    y_dense, final_dense = dense_ssd(**args)
    torch.testing.assert_close(y, y_dense, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, final_dense, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("length,chunk", [(12, 4), (10, 4)])
def test_reference_matches_transformers_torch_path(length, chunk):
    # transformers' Mamba2 torch fallback (mamba_chunk_scan_combined's signature, no z); it computes in float32.
    modeling = pytest.importorskip("transformers.models.mamba2.modeling_mamba2")
    chunk_scan = getattr(modeling, "mamba2_chunk_scan", None)
    if chunk_scan is None:
        pytest.skip("this transformers has no mamba2_chunk_scan")
    torch_path = getattr(chunk_scan, "__wrapped__", chunk_scan)
    args = make_inputs(batch=2, length=length, dtype=torch.float32)
    del args["z"]
    y, final = reference(**args, dt_softplus=True, dt_limit=(0.05, 1.5), output_final_state=True)
    y_hf, final_hf = torch_path(args["x"], args["dt"], args["A"], args["B"], args["C"], chunk, D=args["D"],
                                dt_bias=args["dt_bias"], initial_states=args["initial_state"], dt_softplus=True,
                                dt_limit=(0.05, 1.5), return_final_states=True)
    torch.testing.assert_close(y, y_hf, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(final, final_hf, rtol=1e-4, atol=1e-4)


def test_dt_is_biased_then_softplus_then_clamped():
    args = make_inputs(with_all=False)
    bias = torch.tensor([0.3, -0.2, 0.1, 2.0], dtype=torch.float64)
    limit = (0.4, 1.1)
    got = reference(**args, dt_bias=bias, dt_softplus=True, dt_limit=limit)
    delta = F.softplus(args["dt"] + bias).clamp(*limit)
    assert 0 < (delta == limit[0]).float().mean() < 1 and bool((delta == limit[1]).any())  # both ends bind
    torch.testing.assert_close(got, reference(**{**args, "dt": delta}))
    # mamba-ssm's default limit (0, inf) clamps a negative Δ to 0 also without softplus.
    torch.testing.assert_close(reference(**args), reference(**{**args, "dt": args["dt"].clamp(min=0)}))


def test_reference_skip_gate_and_per_channel_D():
    args = make_inputs(D_per_channel=True)
    full = reference(**args)
    plain = reference(**{**args, "D": None, "z": None})
    torch.testing.assert_close(full, (plain + args["D"] * args["x"]) * F.silu(args["z"]))


def split(args, k):
    """Inputs for tokens [:k] and [k:] of every row."""
    timed = ("x", "dt", "B", "C", "z")
    first = {n: (v[:, :k] if n in timed else v) for n, v in args.items()}
    rest = {n: (v[:, k:] if n in timed else v) for n, v in args.items() if n != "initial_state"}
    return first, rest


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
def test_continuation_equals_one_call(backend):
    args = make_inputs(length=9)
    y, final = ssd(**args, dt_softplus=True, chunk_size=4, output_final_state=True, backend=backend)
    first, rest = split(args, 5)
    y1, h1 = ssd(**first, dt_softplus=True, chunk_size=4, output_final_state=True, backend=backend)
    y2, h2 = ssd(**rest, initial_state=h1, dt_softplus=True, chunk_size=4, output_final_state=True, backend=backend)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h2, final, rtol=1e-10, atol=1e-10)


def one_row(args, row, start, stop, seq):
    """The inputs of one sequence alone: tokens [start, stop) of ``row``, initial state ``seq``."""
    timed = ("x", "dt", "B", "C", "z")
    out = {n: (v[row:row + 1, start:stop] if n in timed else v) for n, v in args.items()}
    out["initial_state"] = args["initial_state"][seq:seq + 1]
    return out


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
def test_packed_documents_equal_separate_calls(backend):
    # One row of documents (a document of length 1 among them), given as cu_seqlens or seq_idx: the same segments.
    bounds = [0, 3, 8, 9, 14]
    args = make_inputs(batch=1, length=14, num_seqs=4)
    segments = Segments.from_cu_seqlens(torch.tensor(bounds, dtype=torch.int32), 1, 14)
    y, finals = ssd(**args, segments=segments, dt_softplus=True, chunk_size=4, output_final_state=True, backend=backend)
    assert finals.shape == (4, 4, 3, 5)
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        y_k, h_k = reference(**one_row(args, 0, a, b, k), dt_softplus=True, output_final_state=True)
        torch.testing.assert_close(y[:, a:b], y_k, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(finals[k], h_k[0], rtol=1e-10, atol=1e-10)
    by_ids = Segments.from_seq_idx(torch.tensor([[0, 0, 0, 2, 2, 2, 2, 2, 3, 7, 7, 7, 7, 7]]))  # ids need not be 0, 1, ..
    y_s, f_s = ssd(**args, segments=by_ids, dt_softplus=True, chunk_size=4, output_final_state=True, backend=backend)
    torch.testing.assert_close(y_s, y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(f_s, finals, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
def test_documents_over_several_rows(backend):
    # Documents are numbered row by row; a row that is one run is one document.
    segments = Segments.from_seq_idx(torch.tensor([[0, 0, 1, 1, 1, 1, 1], [5, 5, 5, 5, 5, 5, 5]]))
    args = make_inputs(batch=2, length=7, num_seqs=3)
    y, finals = ssd(**args, segments=segments, chunk_size=3, output_final_state=True, backend=backend)
    for k, (row, a, b) in enumerate([(0, 0, 2), (0, 2, 7), (1, 0, 7)]):
        y_k, h_k = reference(**one_row(args, row, a, b, k), output_final_state=True)
        torch.testing.assert_close(y[row:row + 1, a:b], y_k, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(finals[k], h_k[0], rtol=1e-10, atol=1e-10)


# -- every backend against the reference -----------------------------------------------------------
def run_and_grads(args, fn, with_state=True, **kwargs):
    """Output, final states and the gradients of every input of a random projection of both."""
    leaves = {k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in args.items()
              if with_state or k != "initial_state"}
    g = torch.Generator().manual_seed(123)
    out = fn(**leaves, output_final_state=with_state, **kwargs)
    y, h = out if with_state else (out, None)
    loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype).to(y.device)).sum()
    if with_state:
        loss = loss + (h * torch.randn(h.shape, generator=g, dtype=h.dtype).to(h.device)).sum()
    names = [k for k, v in leaves.items() if v.requires_grad]
    return y, h, dict(zip(names, torch.autograd.grad(loss, [leaves[k] for k in names])))


def assert_close_scaled(got, want, tol, what):
    """max |got - want| <= tol · max(1, max |want|): a relative bound that survives entries near 0."""
    scale = max(1.0, want.abs().max().item())
    err = (got - want).abs().max().item()
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:.0e} x scale {scale:.3g}"


def compare(fn, case, dtype, tol, device="cpu", with_all=True, with_state=True):
    case = dict(case)
    kwargs = {k: case.pop(k) for k in ("chunk_size", "dt_softplus", "dt_limit") if k in case}
    lengths = case.pop("documents", None)  # each row's document lengths: packed
    if lengths is not None:
        kwargs["segments"] = Segments.from_lengths(lengths, case["length"], device=device)
        case["num_seqs"] = kwargs["segments"].num_docs
    args = {k: v.to(device) for k, v in make_inputs(**case, dtype=dtype, with_all=with_all).items()}
    kwargs.setdefault("dt_softplus", True)
    want = run_and_grads(args, reference, with_state, **kwargs)
    got = run_and_grads(args, fn, with_state, **kwargs)
    assert_close_scaled(got[0], want[0], tol, "y")
    if with_state:
        assert got[1].shape == want[1].shape
        assert_close_scaled(got[1], want[1], tol, "final state")
    expected = {k for k in GRAD_ARGS if k in args and (with_state or k != "initial_state")}
    assert set(got[2]) == set(want[2]) == expected
    for name in want[2]:
        assert_close_scaled(got[2][name], want[2][name], tol, f"grad {name}")


CASES = {
    "L1": {"length": 1, "chunk_size": 4},
    "L7-chunk3": {"length": 7, "chunk_size": 3},  # last chunk partial
    "L8-chunk4-g1": {"length": 8, "chunk_size": 4, "groups": 1},
    "L13-chunk16-g4": {"length": 13, "chunk_size": 16, "groups": 4},  # chunk longer than the sequence
    "L20-chunk6-Dp-limit": {"length": 20, "chunk_size": 6, "D_per_channel": True, "dt_limit": (0.2, 0.9)},
    "nosoftplus": {"length": 9, "chunk_size": 4, "dt_softplus": False},  # the (0, inf) clamp binds
    "packed-row": {"batch": 1, "length": 15, "chunk_size": 4, "documents": [[5, 1, 7, 2]]},
    "packed-rows": {"batch": 2, "length": 10, "chunk_size": 3, "documents": [[4, 6], [1, 2, 7]]},
}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_backend_matches_reference_float64(backend, case):
    compare(functools.partial(ssd, backend=backend), CASES[case], torch.float64, tol=1e-8)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", ["L20-chunk6-Dp-limit", "packed-row"])
def test_backend_matches_reference_float32(backend, case):
    compare(functools.partial(ssd, backend=backend), {**CASES[case], "d_state": 16, "headdim": 8}, torch.float32,
            tol=1e-4)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backend_matches_reference_at_kernel_sized_chunks(backend):
    # Chunks of 64 (the last one partial) and wider heads: the BLAS calls and blocks of real sizes.
    case = {"batch": 1, "length": 140, "chunk_size": 64, "headdim": 16, "d_state": 32, "heads": 4, "groups": 2}
    compare(functools.partial(ssd, backend=backend), case, torch.float32, tol=1e-4)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backend_without_optional_arguments(backend):
    fn = functools.partial(ssd, backend=backend)
    compare(fn, {"length": 9, "chunk_size": 4}, torch.float64, tol=1e-8, with_all=False)
    compare(fn, {"length": 9, "chunk_size": 4}, torch.float64, tol=1e-8, with_state=False)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backend_in_half_precision_computes_in_float32(backend):
    args = make_inputs(length=9, dtype=torch.bfloat16)
    y, h = ssd(**args, chunk_size=4, dt_softplus=True, output_final_state=True, backend=backend)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    want_y, want_h = reference(**args, chunk_size=4, dt_softplus=True, output_final_state=True)
    assert_close_scaled(h, want_h, 1e-4, "final state")  # same bf16 inputs, both computed in float32
    assert_close_scaled(y.float(), want_y.float(), 1e-2, "y")  # up to one bf16 rounding of the output


# -- argument checks -------------------------------------------------------------------------------
def bad_calls():
    a = make_inputs(batch=1, length=6)
    f64 = torch.float64
    yield "x must be", {**a, "x": a["x"][0]}
    yield "x must be a real floating", {**a, "x": a["x"].to(torch.int64)}
    yield "dt must be", {**a, "dt": a["dt"][:, :5]}
    yield "A must be", {**a, "A": a["A"][:3]}
    yield "B must be", {**a, "B": torch.zeros(1, 6, 3, 5, dtype=f64)}  # 3 groups do not divide 4 heads
    yield "C must have B's shape", {**a, "C": a["C"][..., :4]}
    yield "C must be a real floating", {**a, "C": a["C"].to(torch.complex128)}
    yield "D must be", {**a, "D": torch.zeros(3, dtype=f64)}
    yield "z must have", {**a, "z": a["z"][..., :2]}
    yield "dt_bias must be", {**a, "dt_bias": torch.zeros(4, 1, dtype=f64)}
    yield "chunk_size must be", {**a, "chunk_size": 0}
    yield "chunk_size must be", {**a, "chunk_size": 2.0}
    yield "dt_limit must be", {**a, "dt_limit": (1.0, 0.5)}
    yield "dt_softplus must be", {**a, "dt_softplus": "yes"}
    yield "initial_state must be", {**a, "initial_state": torch.zeros(2, 4, 3, 5, dtype=f64)}
    two_docs = Segments.from_lengths([[2, 4]], 6)
    yield r"initial_state must be \(num_docs=2", {**a, "segments": two_docs}  # 1 state, 2 documents
    yield "segments describe", {**a, "segments": Segments.from_lengths([[2, 3]], 5)}
    yield "segments must be a ssmzoo.Segments", {**a, "segments": torch.zeros(1, 6, dtype=torch.long)}
    yield "unknown backend", {**a, "backend": "nope"}


@pytest.mark.parametrize("match,kwargs", list(bad_calls()), ids=lambda v: v if isinstance(v, str) else "")
def test_bad_arguments_raise_value_error_naming_them(match, kwargs):
    with pytest.raises(ValueError, match=match):
        ssd(**kwargs)


def test_tensors_on_another_device_are_named():
    a = make_inputs(batch=1, length=4)
    meta = torch.zeros(1, 4, 4, 3, dtype=torch.float64, device="meta")
    with pytest.raises(ValueError, match="z must be on x's device"):
        ssd(**{**a, "z": meta})


# -- dispatch ----------------------------------------------------------------------------------------
def test_public_function_and_every_cpu_backend_pass_the_probe():
    import inspect

    params = inspect.signature(ssd).parameters
    for name in ("chunk_size", "initial_state", "output_final_state", "segments", "backend"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
    dispatch.reset()
    for name, backend in dispatch.backends.items():
        if "cpu" in backend.devices and backend.available():
            assert dispatch.usable(name, CPU), f"ssd backend {name} fails its probe"
    expected = "cpu" if dispatch.usable("cpu", CPU) else "chunked"  # the C++ kernel when it builds
    assert dispatch.choose("auto", Request(CPU, torch.float32, grad=True, final_state=True)).name == expected


@pytest.fixture
def mamba_ssm_stand_in(monkeypatch):
    """mamba-ssm's mamba_chunk_scan_combined (its signature; computed with our reference, seq_idx as
    runs) made visible to the dispatch on CPU; records its calls."""
    calls = []

    def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                                  seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, math.inf),
                                  return_final_states=False, return_varlen_states=False):
        calls.append({"seq_idx": seq_idx, "initial_states": initial_states, "final": return_final_states})
        return reference(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias,
                         dt_softplus=dt_softplus, dt_limit=dt_limit, initial_state=initial_states,
                         output_final_state=return_final_states,
                         segments=None if seq_idx is None else Segments.from_seq_idx(seq_idx))

    module = types.ModuleType("mamba_ssm.ops.triton.ssd_combined")
    module.mamba_chunk_scan_combined = mamba_chunk_scan_combined
    for name in ("mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.triton"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "mamba_ssm.ops.triton.ssd_combined", module)
    monkeypatch.setattr(dispatch.backends["mamba_ssm"], "devices", ("cuda", "cpu"))
    monkeypatch.setattr(dispatch.backends["mamba_ssm"], "available", lambda: True)
    monkeypatch.setattr(dispatch, "_probed", {})
    assert dispatch.usable("mamba_ssm", CPU)  # the stand-in passes the probe against the reference
    calls.clear()
    yield calls
    dispatch.reset()


def test_mamba_ssm_serves_packed_calls_only_without_states(mamba_ssm_stand_in):
    calls = mamba_ssm_stand_in
    args = make_inputs(batch=1, length=8, num_seqs=2, dtype=torch.float32)
    segments = Segments.from_cu_seqlens(torch.tensor([0, 3, 8]), 1, 8)
    plain = {k: v for k, v in args.items() if k != "initial_state"}
    y = ssd(**plain, segments=segments, chunk_size=4)
    # the documents reached mamba-ssm as its seq_idx
    assert len(calls) == 1 and calls[0]["seq_idx"].tolist() == [[0, 0, 0, 1, 1, 1, 1, 1]]
    torch.testing.assert_close(y, ssd(**plain, segments=segments, chunk_size=4, backend="reference"))
    calls.clear()
    ssd(**args, segments=segments, chunk_size=4)  # packed, with initial states: not mamba-ssm
    ssd(**plain, segments=segments, chunk_size=4, output_final_state=True)
    assert calls == []
    with pytest.raises(ValueError, match="no initial state and returns no final state for packed"):
        ssd(**args, segments=segments, backend="mamba_ssm")
    # unpacked: states are fine
    unpacked = make_inputs(batch=2, length=8, dtype=torch.float32)
    ssd(**unpacked, chunk_size=4, output_final_state=True)
    assert len(calls) == 1 and calls[0]["final"] and calls[0]["initial_states"] is not None
    assert dispatch.choose("auto", Request(CPU, torch.float64)).name != "mamba_ssm"  # float64: not mamba-ssm


TRITON_CHECK = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
import functools, torch
from ssmzoo.ops.ssd.triton import ssd_triton
from test_ssd import CASES, compare, keyword_form
fn = keyword_form(ssd_triton)
for name in ("L1", "L7-chunk3", "L20-chunk6-Dp-limit", "packed-rows"):  # packed rows of unequal chunk counts
    compare(fn, CASES[name], torch.float64, tol=1e-8)
compare(fn, {{"length": 9, "chunk_size": 4, "groups": 4}}, torch.float64, tol=1e-8, with_all=False)  # g = h
compare(fn, {{**CASES["packed-row"], "d_state": 16, "headdim": 8}}, torch.float32, tol=1e-4)  # a document of length 1
print("triton interpreter: all match")
"""


def test_triton_matches_reference_under_interpreter():
    check_under_interpreter(TRITON_CHECK)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_triton_kernels_compile_for_hopper(dtype):
    # Every kernel (see compile_for_hopper). About a minute.
    pytest.importorskip("triton")
    from ssmzoo.ops.ssd import triton as kernels

    blocks = {"BLOCK_P": 32, "BLOCK_N": 64, "PRECISION": "ieee"}
    for fn, consts in [(kernels._chunk_outer, {"FROM_END": True, "BLOCK_T": 64, **blocks}),
                       (kernels._chunk_outer, {"FROM_END": False, "BLOCK_T": 64, **blocks}),
                       (kernels._state_passing_fwd, {"HAS_INIT": True, "BLOCK": 256}),
                       (kernels._chunk_scan_fwd, {"BLOCK_M": 64, **blocks}),
                       (kernels._state_passing_bwd, {"BLOCK": 256}),
                       (kernels._chunk_scan_bwd_columns, {"BLOCK_M": 64, **blocks}),
                       (kernels._chunk_scan_bwd_rows, {"BLOCK_M": 64, **blocks})]:
        compile_for_hopper(fn, consts, dtype, types={"starts_ptr": "*i32"})


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_gpu_backend_matches_reference(backend, case):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if not dispatch.usable(backend, torch.device("cuda")):
        pytest.skip(f"backend {backend} is not available on this machine")
    fn = functools.partial(ssd, backend=backend)
    packed = "documents" in CASES[case]
    with_state = not (backend == "mamba_ssm" and packed)
    compare(fn, {**CASES[case], "d_state": 16, "headdim": 16}, torch.float32, tol=1e-4, device="cuda",
            with_all=with_state, with_state=with_state)
    if backend != "mamba_ssm":
        compare(fn, CASES[case], torch.float64, tol=1e-8, device="cuda")
