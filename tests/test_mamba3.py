"""The Mamba-3 op: the reference against forms that share none of its code (the paper's complex diagonal SSM,
Mamba-2's SSD at λ = 1), its state, continuation and packed-document semantics, every backend against the
reference (outputs, final states and every gradient), half inputs, the argument checks and the dispatch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssmzoo.ops.dispatch import Request
from ssmzoo.ops.mamba3 import Mamba3State, dispatch, mamba3, mamba3_reference
from ssmzoo.ops.mamba3.inputs import Mamba3Inputs
from ssmzoo.ops.mamba3.rotary import rotate
from ssmzoo.ops.segments import Segments
from ssmzoo.ops.ssd import ssd
from triton_checks import check_under_interpreter, compile_for_hopper

CPU = torch.device("cpu")
CPU_BACKENDS = [n for n, b in dispatch.backends.items() if n != "reference" and "cpu" in b.devices]
GPU_BACKENDS = [n for n, b in dispatch.backends.items() if n != "reference" and "cuda" in b.devices]


def make_inputs(batch=2, length=9, heads=4, headdim=3, groups=2, d_state=8, n_angles=2, rank=None, num=None,
                dtype=torch.float64, seed=0, z=True, D=True, bias=True, mimo_o=True, state=True):
    """Random op arguments (a dict of keyword arguments of ``mamba3``); ``rank``: MIMO of that rank;
    ``num``: the leading size of the initial state (default: batch)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=dtype) * scale

    R = () if rank is None else (rank,)
    args = dict(x=rnd(batch, length, heads, headdim), dt=torch.rand(batch, length, heads, generator=g, dtype=dtype) + 0.05,
                A=-torch.rand(batch, length, heads, generator=g, dtype=dtype) * 1.5 - 0.05,
                B=rnd(batch, length, *R, groups, d_state), C=rnd(batch, length, *R, groups, d_state),
                trap=rnd(batch, length, heads, scale=2.0), angles=rnd(batch, length, heads, n_angles, scale=2.0))
    if bias:
        args.update(B_bias=rnd(heads, *R, d_state), C_bias=rnd(heads, *R, d_state))
    if D:
        args["D"] = rnd(heads)
    if z:
        args["z"] = rnd(batch, length, heads, headdim)
    if rank is not None:
        args["mimo_x"] = rnd(heads, rank, headdim)
        if z:
            args["mimo_z"] = rnd(heads, rank, headdim)
        if mimo_o:
            args["mimo_o"] = rnd(heads, rank, headdim)
    if state:
        n = num or batch
        args["initial_state"] = Mamba3State(torch.rand(n, heads, n_angles, generator=g, dtype=dtype) * 2 * math.pi,
                                            rnd(n, heads, headdim, d_state), rnd(n, heads, *R, d_state),
                                            rnd(n, heads, headdim))
    return args


# -- the reference against forms that share none of its code ------------------------------------
def pair_indices(d_state: int, n_angles: int, pairs: str) -> tuple[list[tuple[int, int]], list[int]]:
    """The entry pairs a complex state entry stands for (rotated ones first) and the unpaired entries."""
    if pairs == "interleaved":
        pairs_ = [(2 * m, 2 * m + 1) for m in range(d_state // 2)]
    else:
        pairs_ = [(m, m + d_state // 2) for m in range(d_state // 2)]
    used = {i for p in pairs_ for i in p}
    return pairs_, [i for i in range(d_state) if i not in used]


def complex_ssm(x, dt, A, B, C, trap, angles, B_bias=None, C_bias=None, D=None, z=None, mimo_x=None, mimo_z=None,
                mimo_o=None, rotary=None, initial_state=None):
    """The paper's §3.2 form, one row at a time: a complex diagonal state H (headdim, d_state/2) whose entries turn
    by exp(-i Δ_t θ_t) each step, fed with the *unrotated* B (as complex pairs), read with the unrotated C;
    h_t = α_t e^{-iΔθ} (h_{t-1} + (1-λ_t) Δ_t x_{t-1} b_{t-1}) + λ_t Δ_t x_t b_t, y_t = Re(Σ conj(c_t) h_t).
    Entries left out of every pair form an ordinary real state. Rotated states (of the real form) map to this
    frame by e^{∓iφ}. Returns y and the final state mapped back to the real form."""
    mimo = B.dim() == 5
    pairs = rotary or ("halves" if mimo else "interleaved")
    if not mimo:
        B, C = B[:, :, None], C[:, :, None]
        B_bias = None if B_bias is None else B_bias[:, None]
        C_bias = None if C_bias is None else C_bias[:, None]
    batch, length, rank, groups, d_state = B.shape
    heads, headdim = x.shape[2], x.shape[3]
    n_angles = angles.shape[3]
    prs, rest = pair_indices(d_state, n_angles, pairs)
    u, w = [p[0] for p in prs], [p[1] for p in prs]
    ys, finals = [], []
    for row in range(batch):
        y_row = []
        Hc = torch.zeros(heads, headdim, len(prs), dtype=torch.complex128)
        Hr = torch.zeros(heads, headdim, len(rest), dtype=torch.float64)
        kc_prev = torch.zeros(heads, rank, len(prs), dtype=torch.complex128)
        kr_prev = torch.zeros(heads, rank, len(rest), dtype=torch.float64)
        x_prev = torch.zeros(heads, headdim, dtype=torch.float64)
        phi = torch.zeros(heads, len(prs), dtype=torch.float64)
        if initial_state is not None:
            a0, h0, k0, v0 = (t[row].double() for t in initial_state)
            k0 = k0 if mimo else k0[:, None]
            phi[:, :n_angles] = a0
            turn0 = torch.exp(-1j * phi)  # the real form's rotated frame -> this unrotated one
            Hc = torch.complex(h0[..., u], h0[..., w]) * turn0[:, None]
            Hr = h0[..., rest].clone()
            kc_prev = torch.complex(k0[..., u], k0[..., w]) * turn0[:, None]
            kr_prev = k0[..., rest].clone()
            x_prev = v0.clone()
        for t in range(length):
            Bt = B[row, t].double().repeat_interleave(heads // groups, dim=1).transpose(0, 1)  # (heads, rank, N)
            Ct = C[row, t].double().repeat_interleave(heads // groups, dim=1).transpose(0, 1)
            if B_bias is not None:
                Bt, Ct = Bt + B_bias.double(), Ct + C_bias.double()
            theta = torch.zeros(heads, len(prs), dtype=torch.float64)
            theta[:, :n_angles] = math.pi * torch.tanh(angles[row, t].double())
            d = dt[row, t].double()
            phi = phi + d[:, None] * theta
            lam = torch.sigmoid(trap[row, t].double())
            alpha = torch.exp(d * A[row, t].double())
            turn = torch.exp(-1j * d[:, None] * theta)  # (heads, pairs)
            xr = x[row, t].double()[:, None] * mimo_x.double() if mimo else x[row, t].double()[:, None]
            xr_prev = x_prev[:, None] * mimo_x.double() if mimo else x_prev[:, None]
            bc, br = torch.complex(Bt[..., u], Bt[..., w]), Bt[..., rest]
            cc, cr = torch.complex(Ct[..., u], Ct[..., w]), Ct[..., rest]
            left_c = torch.einsum("hrp,hrm->hpm", xr_prev.to(torch.complex128), kc_prev)
            left_r = torch.einsum("hrp,hrm->hpm", xr_prev, kr_prev)
            Hc = (alpha[:, None, None] * turn[:, None] * (Hc + ((1 - lam) * d)[:, None, None] * left_c)
                  + (lam * d)[:, None, None] * torch.einsum("hrp,hrm->hpm", xr.to(torch.complex128), bc))
            Hr = (alpha[:, None, None] * (Hr + ((1 - lam) * d)[:, None, None] * left_r)
                  + (lam * d)[:, None, None] * torch.einsum("hrp,hrm->hpm", xr, br))
            out = (torch.einsum("hpm,hrm->hrp", Hc, cc.conj()).real + torch.einsum("hpm,hrm->hrp", Hr, cr))
            if D is not None:
                out = out + D.double()[:, None, None] * xr
            if z is not None:
                gate = z[row, t].double()[:, None] * mimo_z.double() if mimo else z[row, t].double()[:, None]
                out = out * F.silu(gate)
            if not mimo:
                out = out[:, 0]
            elif mimo_o is not None:
                out = (out * mimo_o.double()).sum(1)
            else:
                out = out.transpose(0, 1)
            y_row.append(out)
            kc_prev, kr_prev, x_prev = bc, br, x[row, t].double()
        ys.append(torch.stack(y_row))
        back = torch.exp(1j * phi)  # to the real form's frame of the last token
        h = torch.zeros(heads, headdim, d_state, dtype=torch.float64)
        hc = Hc * back[:, None]
        h[..., u], h[..., w], h[..., rest] = hc.real, hc.imag, Hr
        k = torch.zeros(heads, rank, d_state, dtype=torch.float64)
        kc = kc_prev * back[:, None]
        k[..., u], k[..., w], k[..., rest] = kc.real, kc.imag, kr_prev
        finals.append((torch.remainder(phi[:, :n_angles], 2 * math.pi), h, k if mimo else k[:, 0], x_prev))
    return torch.stack(ys), Mamba3State(*(torch.stack(parts) for parts in zip(*finals)))


@pytest.mark.parametrize("rotary", [None, "interleaved", "halves"])
@pytest.mark.parametrize("rank,d_state,n_angles", [(None, 8, 2), (None, 7, 3), (None, 8, 4), (3, 8, 2), (2, 6, 0)])
def test_reference_equals_the_complex_diagonal_ssm(rank, d_state, n_angles, rotary):
    if rotary == "halves" and d_state % 2:
        pytest.skip("halves pairs need an even d_state")
    args = make_inputs(rank=rank, d_state=d_state, n_angles=n_angles, length=7)
    y, final = mamba3_reference(Mamba3Inputs(**{k: v for k, v in args.items()}, rotary=rotary), True)
    y_c, final_c = complex_ssm(**args, rotary=rotary)
    torch.testing.assert_close(y, y_c, rtol=1e-10, atol=1e-10)
    for got, want in zip(final, final_c):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_reference_mimo_without_mimo_o_returns_every_rank():
    args = make_inputs(rank=3, mimo_o=False)
    y = mamba3_reference(Mamba3Inputs(**args))
    assert y.shape == (2, 9, 3, 4, 3)
    torch.testing.assert_close(y, complex_ssm(**args)[0], rtol=1e-10, atol=1e-10)
    # Contracting the ranks afterwards is the op with mimo_o.
    mimo_o = torch.randn(4, 3, 3, dtype=torch.float64)
    torch.testing.assert_close((y * mimo_o.transpose(0, 1)).sum(2), mamba3_reference(Mamba3Inputs(**args,
                                                                                                   mimo_o=mimo_o)))


def test_lambda_one_without_rotation_is_mamba2():
    """λ = 1 (trap → ∞) is the exponential-Euler rule and no angles leave a real state: with A constant per
    head this is Mamba-2's SSD (ssd op, independently tested), including the initial state."""
    args = make_inputs(n_angles=0, bias=False, state=False)
    A = -torch.rand(4, dtype=torch.float64) - 0.1
    args["A"] = A.expand_as(args["dt"]).clone()
    args["trap"] = torch.full_like(args["trap"], 60.0)  # sigmoid(60) = 1 in float64
    h0 = torch.randn(2, 4, 3, 8, dtype=torch.float64)
    state = Mamba3State(torch.zeros(2, 4, 0, dtype=torch.float64), h0, torch.randn(2, 4, 8, dtype=torch.float64),
                        torch.randn(2, 4, 3, dtype=torch.float64))  # k, v unused when λ = 1
    y, final = mamba3(**args, initial_state=state, output_final_state=True, backend="reference")
    y2, final2 = ssd(args["x"], args["dt"], A, args["B"], args["C"], D=args["D"], z=args["z"], initial_state=h0,
                     output_final_state=True, backend="reference")
    torch.testing.assert_close(y, y2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final.ssm, final2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pairs", ["interleaved", "halves"])
def test_rotate_is_complex_multiplication(pairs):
    t = torch.randn(3, 10, dtype=torch.float64)
    phi = torch.randn(3, 3, dtype=torch.float64)
    got = rotate(t, torch.cos(phi), torch.sin(phi), pairs)
    prs, rest = pair_indices(10, 3, pairs)
    u, w = [p[0] for p in prs[:3]], [p[1] for p in prs[:3]]
    turned = torch.complex(t[:, u], t[:, w]) * torch.exp(1j * phi)
    torch.testing.assert_close(got[:, u], turned.real)
    torch.testing.assert_close(got[:, w], turned.imag)
    untouched = sorted(set(range(10)) - set(u) - set(w))
    assert torch.equal(got[:, untouched], t[:, untouched])


# -- state semantics ------------------------------------------------------------------------------------
def _split(args, k):
    """(first k tokens, the rest) of the per-token arguments."""
    per_token = ("x", "dt", "A", "B", "C", "trap", "angles", "z")
    first = {n: (v[:, :k] if n in per_token else v) for n, v in args.items()}
    rest = {n: (v[:, k:] if n in per_token else v) for n, v in args.items() if n != "initial_state"}
    return first, rest


@pytest.mark.parametrize("rank", [None, 2])
@pytest.mark.parametrize("k", [1, 4, 8])
def test_continuation_equals_one_call(rank, k):
    """forward(x[:, :k]) then forward(x[:, k:], state) == forward(x): the state carries everything (the phase, the
    trapezoid's left endpoint k and v, and h)."""
    args = make_inputs(rank=rank)
    y, final = mamba3(**args, output_final_state=True, backend="reference")
    first, rest = _split(args, k)
    y1, s1 = mamba3(**first, output_final_state=True, backend="reference")
    y2, s2 = mamba3(**rest, initial_state=s1, output_final_state=True, backend="reference")
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y, rtol=1e-10, atol=1e-10)
    for a, b in zip(s2, final):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


PACKED = [[3, 1, 7], [11]]  # a document of length 1 and one spanning a whole row


@pytest.mark.parametrize("backend", ["reference", *CPU_BACKENDS])
@pytest.mark.parametrize("rank", [None, 2])
def test_packed_equals_each_document_alone(backend, rank):
    segments = Segments.from_lengths(PACKED, 11)
    args = make_inputs(rank=rank, length=11, num=segments.num_docs)
    y, final = mamba3(**args, segments=segments, chunk_size=4, output_final_state=True, backend=backend)
    per_token = ("x", "dt", "A", "B", "C", "trap", "angles", "z")
    for d, s in enumerate(segments.spans):
        alone = {n: (v[s.row:s.row + 1, s.start:s.stop] if n in per_token else v) for n, v in args.items()}
        alone["initial_state"] = Mamba3State(*(t[d:d + 1] for t in args["initial_state"]))
        y_d, final_d = mamba3(**alone, output_final_state=True, backend="reference")
        torch.testing.assert_close(y[s.row:s.row + 1, s.start:s.stop], y_d, rtol=1e-10, atol=1e-10)
        for a, b in zip(final, final_d):
            torch.testing.assert_close(a[d:d + 1], b, rtol=1e-10, atol=1e-10)


# -- every backend against the reference ------------------------------------------------------------
CASES = {
    "L1": dict(length=1),
    "L9-chunk4": dict(length=9, chunk_size=4),
    "L13-chunk1": dict(length=13, chunk_size=1),
    "L16-chunk16": dict(length=16, chunk_size=16),
    "L21-chunk8-halves": dict(length=21, chunk_size=8, rotary="halves"),
    "groups=heads-no-angles": dict(length=10, chunk_size=4, groups=4, n_angles=0),
    "odd-d_state": dict(length=10, chunk_size=3, d_state=7, n_angles=3),
    "bare": dict(length=10, chunk_size=4, z=False, D=False, bias=False, state=False),
    "packed": dict(length=11, chunk_size=4, segments=PACKED),
    "packed-chunk64": dict(length=11, chunk_size=64, segments=PACKED),
    "mimo": dict(length=11, chunk_size=4, rank=3),
    "mimo-packed-chunk8": dict(length=19, chunk_size=8, rank=3, segments=[[5, 1, 13], [19]]),
    "mimo-no-mimo_o-interleaved": dict(length=9, chunk_size=5, rank=2, mimo_o=False, rotary="interleaved"),
    "mimo-bare": dict(length=9, chunk_size=4, rank=2, z=False, D=False, bias=False, state=False),
}


def _leaves(args):
    out = [v for k, v in args.items() if isinstance(v, torch.Tensor)]
    return out + list(args.get("initial_state") or ())


def compare(fn, case, dtype, tol, device="cpu"):
    """fn(**args) in ``dtype`` against the reference on one case: outputs, final states and the gradient of every
    floating input. The reference runs in float64 on the same (rounded) inputs, so float32 is measured against the
    exact value, not against the reference's own float32 rounding (which reaches 2e-4 on some MIMO gradients)."""
    case = dict(case)
    op_args = {k: case.pop(k) for k in ("chunk_size", "rotary", "segments") if k in case}
    segments = Segments.from_lengths(op_args.pop("segments"), case["length"]) if "segments" in op_args else None
    args = make_inputs(**case, num=segments.num_docs if segments is not None else None)
    results = []
    for f, cast in ((fn, dtype), (mamba3_reference, torch.float64)):
        leaves = [t.detach().clone().to(device=device, dtype=dtype).to(cast).requires_grad_() for t in _leaves(args)]
        it = iter(leaves)
        call = {k: next(it) for k, v in args.items() if isinstance(v, torch.Tensor)}
        if "initial_state" in args:
            call["initial_state"] = Mamba3State(*[next(it) for _ in range(4)])
        inputs = Mamba3Inputs(**call, **op_args, segments=None if segments is None else segments.to(device))
        y, final = f(inputs, output_final_state=True)
        gen = torch.Generator().manual_seed(7)
        outs = [y, *final]
        loss = sum((o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o)).sum() for o in outs)
        grads = torch.autograd.grad(loss, leaves)
        results.append((outs, grads))
    (got, got_grads), (want, want_grads) = results
    assert all(g.dtype == dtype for g in got)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=tol, atol=tol)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g.double(), w, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-8), (torch.float32, 1e-4)])
def test_cpu_backend_matches_reference(backend, case, dtype, tol):
    if not dispatch.backends[backend].available():  # does not build here; one that builds but is wrong fails
        pytest.skip(f"backend {backend} is not available here")
    compare(dispatch.backends[backend].fn, CASES[case], dtype, tol)


@pytest.mark.parametrize("backend", ["reference", *CPU_BACKENDS])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(backend, dtype):
    """Half inputs: computed in float32 (state float32), the output in the input's dtype, equal to the float32
    computation on the same (rounded) inputs up to the output's rounding."""
    args = make_inputs(length=10, rank=None)
    half = {k: v.to(dtype) if isinstance(v, torch.Tensor) else Mamba3State(*(t.to(dtype) for t in v))
            for k, v in args.items()}
    y, final = mamba3(**half, chunk_size=4, output_final_state=True, backend=backend)
    assert y.dtype == dtype and all(s.dtype == torch.float32 for s in final)
    as32 = {k: v.float() if isinstance(v, torch.Tensor) else Mamba3State(*(t.float() for t in v))
            for k, v in half.items()}
    y32, final32 = mamba3(**as32, chunk_size=4, output_final_state=True, backend="reference")
    torch.testing.assert_close(y.float(), y32, rtol=1e-2, atol=1e-2)
    for a, b in zip(final, final32):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_phase_keeps_its_precision_over_long_float32_sequences():
    """The chunked forms sum phases in float64: on 3,000 tokens of large turns the float32 output stays at the
    float64 reference's value (a float32 cumsum of the phase would drift by ~1e-3 rad here)."""
    args = make_inputs(batch=1, length=3000, heads=2, headdim=2, groups=1, d_state=4, n_angles=2, z=False,
                       state=False)
    args["dt"] = args["dt"] + 1.0
    args["A"] = args["A"] * 0.01  # slow decay: the rotated keys stay visible across the sequence
    want = mamba3(**args, chunk_size=64, backend="chunked")
    got = mamba3(**{k: v.float() for k, v in args.items()}, chunk_size=64, backend="chunked")
    torch.testing.assert_close(got.double(), want, rtol=2e-4, atol=2e-4)


TRITON_CHECK = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
import torch
from ssmzoo.ops.mamba3.triton import mamba3_triton
from test_mamba3 import CASES, compare
for name in ("L1", "L9-chunk4", "packed", "mimo-packed-chunk8", "mimo-no-mimo_o-interleaved"):
    compare(mamba3_triton, {{**CASES[name], "heads": 2, "groups": 1}}, torch.float64, tol=1e-8)
compare(mamba3_triton, {{**CASES["L21-chunk8-halves"], "heads": 2, "groups": 1}}, torch.float32, tol=1e-4)
print("triton interpreter: all match")
"""


def test_triton_matches_reference_under_interpreter():
    check_under_interpreter(TRITON_CHECK)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_gpu_backend_matches_reference(backend, case):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if not dispatch.usable(backend, torch.device("cuda")):
        pytest.skip(f"backend {backend} is not available on this machine")
    fn = dispatch.backends[backend].fn
    compare(fn, {**CASES[case], "d_state": 16, "headdim": 16}, torch.float32, tol=1e-4, device="cuda")
    compare(fn, CASES[case], torch.float64, tol=1e-8, device="cuda")


# -- dispatch and checks ----------------------------------------------------------------------------------
def test_auto_takes_the_cpu_kernel():
    if not dispatch.backends["cpu"].available():
        pytest.skip("the C++ extension does not build here")
    assert dispatch.choose("auto", Request(CPU, torch.float32, grad=True, final_state=True)).name == "cpu"


def test_meta_tensors_give_shapes():
    args = make_inputs(rank=2)
    meta = {k: v.to("meta") if isinstance(v, torch.Tensor) else Mamba3State(*(t.to("meta") for t in v))
            for k, v in args.items()}
    y, final = mamba3(**meta, output_final_state=True)
    assert y.device.type == "meta" and y.shape == (2, 9, 4, 3)
    assert [tuple(t.shape) for t in final] == [(2, 4, 2), (2, 4, 3, 8), (2, 4, 2, 8), (2, 4, 3)]


def _bad_calls():
    good = make_inputs()
    mimo = make_inputs(rank=2)

    def with_(base=good, **change):
        return {**base, **change}

    state = good["initial_state"]
    yield with_(x=good["x"][0]), "x"
    yield with_(x=good["x"].long()), "x"
    yield with_(dt=good["dt"][:, :, :2]), "dt"
    yield with_(A=good["A"][:, :-1]), "A"
    yield with_(trap=None), "trap"
    yield with_(B=good["B"][:, :, :, :3]), "C"  # B and C then differ
    yield with_(B=good["B"][:, :, :1].expand(-1, -1, 3, -1), C=good["C"][:, :, :1].expand(-1, -1, 3, -1)), "groups"
    yield with_(angles=good["angles"][..., :1, :]), "angles"
    yield with_(angles=torch.zeros(2, 9, 4, 5, dtype=torch.float64)), "n_angles"
    yield with_(B_bias=good["B_bias"][:2]), "B_bias"
    yield with_(C_bias=good["C_bias"][..., :3]), "C_bias"
    yield with_(D=good["D"][:3]), "D"
    yield with_(z=good["z"][:, :3]), "z"
    yield with_(mimo_x=mimo["mimo_x"]), "mimo_x"
    yield with_(base=mimo, mimo_x=None), "mimo_x"
    yield with_(base=mimo, mimo_z=None), "mimo_z"
    yield with_(base=mimo, mimo_o=mimo["mimo_o"][:, :1]), "mimo_o"
    yield with_(rotary="complex"), "rotary"
    yield with_(d_state_odd_halves=None), "rotary"
    yield with_(chunk_size=0), "chunk_size"
    yield with_(chunk_size=2.0), "chunk_size"
    yield with_(initial_state=state[1]), "initial_state"
    yield with_(initial_state=Mamba3State(state.angle, state.ssm[:1], state.k, state.v)), "initial_state.ssm"
    yield with_(initial_state=Mamba3State(state.angle, state.ssm, mimo["initial_state"].k, state.v)), "initial_state.k"
    yield with_(segments=Segments.from_lengths([[4, 5], [9]], 9)), "initial_state.angle"  # 3 documents, 2 states
    yield with_(segments=Segments.from_lengths([[4, 4], [8]], 8)), "segments"
    yield with_(segments=good["x"]), "segments"
    yield with_(output_final_state=1), "output_final_state"
    yield with_(D=good["D"].to("meta")), "D"


@pytest.mark.parametrize("call,arg", list(_bad_calls()), ids=[a for _, a in _bad_calls()])
def test_bad_arguments_give_value_errors(call, arg):
    if "d_state_odd_halves" in call:
        call = make_inputs(d_state=7, n_angles=3)
        call["rotary"] = "halves"
    with pytest.raises(ValueError, match=arg) as info:
        mamba3(**call)
    assert "mamba3" in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_triton_kernels_compile_for_hopper(dtype):
    # Every kernel (see compile_for_hopper).
    pytest.importorskip("triton")
    from ssmzoo.ops.mamba3 import triton as kernels

    consts = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_P": 32, "PRECISION": "ieee"}
    for fn in (kernels._intra_fwd, kernels._intra_bwd_rows, kernels._intra_bwd_cols):
        compile_for_hopper(fn, consts, dtype)
