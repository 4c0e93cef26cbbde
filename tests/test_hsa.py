"""Hierarchical sparse attention: the reference against a per-query loop written from the equations,
its stated properties (grouped heads, causality, gradients through the chunk weights, ties), every CPU
backend against the reference (forward and backward, awkward shapes), the decoding form against the full
forward, and the argument checks."""

from __future__ import annotations

import math

import pytest
import torch
from einops import repeat

from ssmzoo.ops.dispatch import Request
from ssmzoo.ops.hsa import HSAInputs, chunked, dispatch, hsa, routing, select_chunks
from ssmzoo.ops.hsa import hsa_reference as reference_of_bundle
from triton_checks import check_under_interpreter

CPU_BACKENDS = [n for n, b in dispatch.backends.items() if n != "reference" and "cpu" in b.devices]


def make_inputs(batch=2, length=13, hq=4, hk=2, d=3, chunk_size=3, d_sel=None, hs=None, keys=None,
                dtype=torch.float64, seed=0):
    """q (batch, length, hq, d), k/v (batch, keys, hk, d), landmarks (batch, ceil(keys / S), hk, d_sel),
    and selection_q (batch, length, hs, d_sel) when hs is given."""
    g = torch.Generator().manual_seed(seed)
    keys = length if keys is None else keys
    d_sel = d if d_sel is None else d_sel

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    args = {"q": rnd(batch, length, hq, d), "k": rnd(batch, keys, hk, d), "v": rnd(batch, keys, hk, d),
            "landmarks": rnd(batch, -(-keys // chunk_size), hk, d_sel)}
    if hs is not None:
        args["selection_q"] = rnd(batch, length, hs, d_sel)
    return args


def loop_hsa(q, k, v, landmarks, chunk_size, top_k, combine, scale=None, offset=0, selection_q=None):
    """HSA straight from the equations, one (batch, position, head) at a time (arXiv 2504.16795, reference.py)."""
    S = chunk_size
    batch, length, hq, d = q.shape
    hk = k.shape[2]
    sq = q if selection_q is None else selection_q
    hs, d_sel = sq.shape[2], sq.shape[3]
    scale = 1 / math.sqrt(d) if scale is None else scale
    rows = []
    for b in range(batch):
        for t in range(length):
            for h in range(hq):
                p = offset + t
                s_head = h // (hq // hs)
                g_sel, g = s_head // (hs // hk), h // (hq // hk)
                past = [i for i in range(landmarks.shape[1]) if (i + 1) * S <= p]
                # Copies: BLAS's dot may sum in an order that depends on the operands' alignment (MKL on
                # AMD CPUs does), which would break the equal scores of the tie test unequally.
                score = {i: sq[b, t, s_head].clone() @ landmarks[b, i, g_sel].clone() / math.sqrt(d_sel) for i in past}
                chosen = sorted(past, key=lambda i: (-float(score[i].detach()), -i))[:top_k]  # ties: more recent
                order = sorted(chosen, reverse=True)  # stick-breaking starts at the most recent chunk
                if combine == "softmax" and order:
                    weight = dict(zip(order, torch.softmax(torch.stack([score[i] for i in order]), 0)))
                else:
                    weight, left = {}, 1.0
                    for i in order:
                        weight[i] = torch.sigmoid(score[i]) * left
                        left = left * (1 - torch.sigmoid(score[i]))
                o = torch.zeros(d, dtype=q.dtype)
                for i in order:
                    keys, values = k[b, i * S:(i + 1) * S, g], v[b, i * S:(i + 1) * S, g]
                    o = o + weight[i] * torch.softmax(keys @ q[b, t, h] * scale, 0) @ values
                rows.append(o)
    return torch.stack(rows).view(batch, length, hq, d)


def keyword_form(backend_fn):
    """A backend function (which takes HSAInputs) called like the public op, with keyword arguments."""
    return lambda q, k, v, landmarks, **kw: backend_fn(HSAInputs(q, k, v, landmarks, **kw))


hsa_reference = keyword_form(reference_of_bundle)


def outputs_and_grads(fn, args, seed=123, **kwargs):
    leaves = {n: t.detach().clone().requires_grad_() for n, t in args.items()}
    out = fn(**leaves, **kwargs)
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device, out.dtype)
    grads = torch.autograd.grad((out * weights).sum(), list(leaves.values()), allow_unused=True)
    return out, {n: torch.zeros_like(leaves[n]) if gr is None else gr for n, gr in zip(leaves, grads)}


def assert_same(got, want, rtol, atol):
    (o1, g1), (o0, g0) = got, want
    torch.testing.assert_close(o1, o0, rtol=rtol, atol=atol)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=rtol, atol=atol,
                                   msg=lambda m, name=name: f"grad {name}: {m}")


# -- the reference against the equations ----------------------------------------------------------
LOOP_CASES = [
    dict(combine="stick_breaking", top_k=2),
    dict(combine="softmax", top_k=2),
    dict(combine="stick_breaking", top_k=9),  # more than any query has
    dict(combine="softmax", top_k=1, scale=0.7),
    dict(combine="stick_breaking", top_k=2, hs=2, d_sel=5),  # one selection query per KV head
    dict(combine="softmax", top_k=3, hs=4, hk=1, d_sel=2),  # per-head selection with a separate query
    dict(combine="stick_breaking", top_k=2, offset=7, keys=19),  # a later segment against a longer cache
]


@pytest.mark.parametrize("case", LOOP_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_reference_matches_per_query_loop(case):
    case = dict(case)
    kw = {n: case.pop(n) for n in ("combine", "top_k", "scale", "offset") if n in case}
    args = make_inputs(**case)
    want = outputs_and_grads(lambda **a: loop_hsa(**a, chunk_size=3, **kw), args)
    got = outputs_and_grads(lambda **a: hsa_reference(**a, chunk_size=3, **kw), args)
    assert want[0].abs().sum() > 0
    assert_same(got, want, rtol=1e-10, atol=1e-12)


def test_one_chunk_stick_breaking_is_sigmoid_times_softmax():
    # With K = 1 the softmax weight is 1 and the stick-breaking weight σ(s) of the one chosen chunk.
    args = make_inputs(length=20, chunk_size=4)
    sb = hsa_reference(**args, chunk_size=4, top_k=1, combine="stick_breaking")
    sm = hsa_reference(**args, chunk_size=4, top_k=1, combine="softmax")
    idx, valid, _ = select_chunks(args["q"], args["landmarks"], 4, 1, 0)
    lmk = repeat(args["landmarks"], "b n h e -> b n (h r) e", r=2)
    chosen = torch.gather(lmk, 1, repeat(idx[..., 0], "b t h -> b t h e", e=3))
    s = (args["q"] * chosen).sum(-1) / math.sqrt(3)
    torch.testing.assert_close(sb, torch.where(valid[..., 0], torch.sigmoid(s), 0.0)[..., None] * sm)
    assert valid[:, 4:].all() and not valid[:, :4].any()


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
def test_grouped_heads_equal_repeated_kv_heads(backend):
    args = make_inputs(length=17, hq=6, hk=2, chunk_size=4)
    grouped = hsa(**args, chunk_size=4, top_k=2, backend=backend)
    repeated = {n: repeat(t, "b l h e -> b l (h g) e", g=3) if n != "q" else t for n, t in args.items()}
    torch.testing.assert_close(grouped, hsa(**repeated, chunk_size=4, top_k=2, backend=backend))


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
@pytest.mark.parametrize("cut", [9, 12, 13])
def test_outputs_never_depend_on_the_future(backend, cut):
    S = 4
    args = make_inputs(length=24, chunk_size=S)
    before = hsa(**args, chunk_size=S, top_k=2, backend=backend)
    # Nothing at position >= cut, and no chunk still incomplete at position cut - 1, may reach o[:, :cut].
    first_hidden = (cut - 1) // S  # the chunk holding position cut - 1: not past for any query before cut
    changed = {n: t.clone() for n, t in args.items()}
    changed["q"][:, cut:] += 5.0
    changed["k"][:, first_hidden * S:] += 5.0
    changed["v"][:, first_hidden * S:] -= 3.0
    changed["landmarks"][:, first_hidden:] *= -4.0
    after = hsa(**changed, chunk_size=S, top_k=2, backend=backend)
    torch.testing.assert_close(after[:, :cut], before[:, :cut], rtol=0, atol=0)
    assert not torch.allclose(after[:, cut:], before[:, cut:])  # the change is visible later: the test can fail


def _score_gap(args, S, K):
    """Smallest distance between a query's K-th and (K+1)-th past-chunk score (how far from a tie)."""
    sq, lmk = args["q"], repeat(args["landmarks"], "b n h e -> b n (h r) e", r=2)
    scores = torch.einsum("bthe,bnhe->bthn", sq, lmk) / math.sqrt(sq.shape[-1])
    gap = math.inf
    for t in range(sq.shape[1]):
        n = t // S
        if n > K:
            top = scores[:, t, :, :n].sort(-1, descending=True).values
            gap = min(gap, float((top[..., K - 1] - top[..., K]).min()))
    return gap


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
@pytest.mark.parametrize("combine", ["stick_breaking", "softmax"])
def test_gradient_reaches_q_and_landmarks_through_the_weights(backend, combine):
    S, K = 3, 2
    args = make_inputs(batch=1, length=14, hq=2, hk=1, d=2, chunk_size=S, seed=3)
    assert _score_gap(args, S, K) > 1e-3  # top-K is locally constant: finite differences are valid
    k, v = args["k"], args["v"]
    kw = dict(chunk_size=S, top_k=K, combine=combine, backend=backend)
    # A separate leaf equal to q as selection_q: its gradient is the part of dq that flows through the
    # chunk scores (selection and weights), the landmarks' gradient all of theirs.
    q, lmk, sq = (args[n].clone().requires_grad_() for n in ("q", "landmarks", "q"))
    out_w = torch.randn(1, 14, 2, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    dq_attn, dsq, dlmk = torch.autograd.grad((hsa(q, k, v, lmk, selection_q=sq, **kw) * out_w).sum(), [q, sq, lmk])
    (dq,) = torch.autograd.grad((hsa(q, k, v, lmk, **kw) * out_w).sum(), [q])
    assert dsq.abs().sum() > 0 and dlmk.abs().sum() > 0
    assert (dlmk[:, -1] == 0).all()  # the last chunk is incomplete: never past, never scored
    torch.testing.assert_close(dq, dq_attn + dsq)
    assert torch.autograd.gradcheck(lambda q, lmk: hsa(q, k, v, lmk, **kw), (q, lmk), eps=1e-6, atol=1e-7)


def test_ties_go_to_the_more_recent_chunk():
    S, K = 2, 3
    args = make_inputs(batch=1, length=15, hq=2, hk=1, chunk_size=S)
    args["landmarks"] = args["landmarks"][:, :1].expand_as(args["landmarks"]).clone()  # every score ties
    idx, valid, _ = select_chunks(args["q"], args["landmarks"], S, K, 0)
    for t in range(15):
        n = t // S
        want = list(range(n - 1, max(n - K, 0) - 1, -1))  # the most recent past chunks, newest first
        assert idx[0, t, 0, :len(want)].tolist() == want and valid[0, t, 0].sum() == len(want)
    want = loop_hsa(**args, chunk_size=S, top_k=K, combine="stick_breaking")
    for backend in ["reference"] + CPU_BACKENDS:
        torch.testing.assert_close(hsa(**args, chunk_size=S, top_k=K, backend=backend), want)


# -- every fast backend against the reference -------------------------------------------------------
CASES = [
    dict(length=1, chunk_size=4, top_k=2),
    dict(length=3, chunk_size=4, top_k=2),  # L < S: no query has a past chunk
    dict(length=13, chunk_size=4, top_k=2),  # L not a multiple of S
    dict(length=16, chunk_size=4, top_k=8, combine="softmax"),  # K more than the chunks
    dict(length=29, chunk_size=3, top_k=3, hq=6, hk=1),  # one KV head for all
    dict(length=21, chunk_size=5, top_k=1, hq=3, hk=3, combine="softmax"),
    dict(length=40, chunk_size=1, top_k=4),  # chunks of one token
    dict(length=26, chunk_size=4, top_k=2, hs=2, d_sel=6),  # shared selection per KV head
    dict(length=9, chunk_size=4, top_k=3, offset=11, keys=23),  # a later segment
]


def _split(case):
    case = dict(case)
    kw = {n: case.pop(n) for n in ("top_k", "combine", "offset") if n in case}
    return case, {"chunk_size": case["chunk_size"], **kw}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_backend_matches_reference_float64(backend, case):
    shape, kw = _split(case)
    args = make_inputs(**shape)
    want = outputs_and_grads(lambda **a: hsa(**a, **kw, backend="reference"), args)
    got = outputs_and_grads(lambda **a: hsa(**a, **kw, backend=backend), args)
    assert_same(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backend_matches_reference_lower_precision(backend, dtype):
    # Both compute in float32 from the same rounded inputs: only summation order differs.
    args = make_inputs(batch=2, length=70, hq=4, hk=2, d=16, chunk_size=8, dtype=dtype)
    kw = dict(chunk_size=8, top_k=3, combine="stick_breaking")
    want = outputs_and_grads(lambda **a: hsa(**a, **kw, backend="reference"), args)
    got = outputs_and_grads(lambda **a: hsa(**a, **kw, backend=backend), args)
    assert got[0].dtype == dtype
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=1e-2)
    assert_same(got, want, **tol)


def test_chunked_blocks_and_padding_do_not_matter(monkeypatch):
    # Tiny query blocks, selection blocks and row blocks: many blocks, most rows in padded row blocks.
    args = make_inputs(batch=2, length=45, hq=4, hk=2, chunk_size=4)
    kw = dict(chunk_size=4, top_k=3)
    want = outputs_and_grads(lambda **a: hsa(**a, **kw, backend="reference"), args)
    monkeypatch.setattr(chunked, "ROWS_PER_BLOCK", 50)
    monkeypatch.setattr(chunked, "ROW_BLOCK", (2, 4))
    monkeypatch.setattr(routing, "SCORES_PER_BLOCK", 100)
    assert_same(outputs_and_grads(lambda **a: hsa(**a, **kw, backend="chunked"), args), want, 1e-10, 1e-12)


# -- decoding ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
@pytest.mark.parametrize("combine", ["stick_breaking", "softmax"])
def test_decoding_steps_equal_the_full_forward(backend, combine):
    S, L = 4, 23
    args = make_inputs(length=L, chunk_size=S, hs=2)
    kw = dict(chunk_size=S, top_k=2, combine=combine, backend=backend)
    full = hsa(**args, **kw)
    for t in range(L):
        c = t // S  # complete chunks in the cache at position t
        step = hsa(args["q"][:, t:t + 1], args["k"][:, :c * S], args["v"][:, :c * S], args["landmarks"][:, :c],
                   selection_q=args["selection_q"][:, t:t + 1], offset=t, **kw)
        torch.testing.assert_close(step[:, 0], full[:, t], rtol=1e-12, atol=1e-12, msg=lambda m, t=t: f"t={t}: {m}")
    # A later segment (chunked prefill) against the keys so far, incomplete chunk included.
    seg = hsa(args["q"][:, 10:], args["k"], args["v"], args["landmarks"],
              selection_q=args["selection_q"][:, 10:], offset=10, **kw)
    torch.testing.assert_close(seg, full[:, 10:], rtol=1e-12, atol=1e-12)


# -- dispatch and arguments -------------------------------------------------------------------------
def test_auto_prefers_the_cpu_kernel_and_takes_the_reference_only_when_small():
    cpu = torch.device("cpu")
    expected = "cpu" if dispatch.usable("cpu", cpu) else "chunked"
    assert dispatch.choose("auto", Request(cpu, torch.float32, grad=True, size=10)).name == expected
    assert dispatch.choose("auto", Request(cpu, torch.bfloat16, size=1 << 30)).name == expected
    dispatch.reset()
    usable = dispatch.names("cpu")  # probes every CPU backend against the reference
    assert set(usable) >= {"chunked", "reference"} and usable[-1] == "reference"
    caps = dispatch.backends["reference"].capabilities
    assert caps.max_size is not None and not caps.initial_state and not caps.final_state
    with pytest.MonkeyPatch.context() as mp:  # without the fast backends, auto still serves small calls only
        mp.setattr(dispatch, "backends", {"reference": dispatch.backends["reference"]})
        assert dispatch.choose("auto", Request(cpu, torch.float32, size=caps.max_size)).name == "reference"
        with pytest.raises(ValueError, match="no backend can serve"):
            dispatch.choose("auto", Request(cpu, torch.float32, size=caps.max_size + 1))


def test_the_op_follows_the_template():
    # The shape test_dispatch.py checks for every op: reference.py's function is the dispatch's
    # reference and its "reference" backend; backend is keyword-only.
    import inspect

    from ssmzoo.ops.hsa import reference

    assert dispatch.reference is reference.hsa_reference is dispatch.backends["reference"].fn
    params = inspect.signature(hsa).parameters
    for name in ("chunk_size", "top_k", "combine", "scale", "offset", "selection_q", "backend"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name


def test_bad_arguments_raise_value_error():
    args = make_inputs(length=10, chunk_size=4)
    kw = dict(chunk_size=4, top_k=2)
    bad = [
        ({"q": args["q"][0]}, kw, "q must have 4 dims"),
        ({"q": args["q"][:, :0]}, kw, "q must have length"),
        ({"k": args["k"][..., :2]}, kw, "k must be"),
        ({"k": repeat(args["k"], "b l h e -> b l (h g) e", g=3)}, kw, "k must be"),  # 6 KV heads for 4
        ({"v": args["v"][:, :9]}, kw, "v must have"),
        ({"landmarks": args["landmarks"][:, :2]}, kw, r"landmarks must be .*ceil\(Lk / chunk_size\)=3"),
        ({"landmarks": args["landmarks"].float()}, kw, "share one dtype"),
        ({"q": args["q"].to(torch.int64)}, kw, "q must be a floating"),
        ({"k": args["k"][:, :3], "v": args["v"][:, :3], "landmarks": args["landmarks"][:, :1]}, kw, "k holds 3 keys"),
        ({}, dict(chunk_size=0, top_k=2), "chunk_size must be a positive int"),
        ({}, dict(chunk_size=4, top_k=0), "top_k must be a positive int"),
        ({}, dict(chunk_size=4.0, top_k=2), "chunk_size must be a positive int"),
        ({}, dict(kw, combine="max"), "combine must be one of"),
        ({}, dict(kw, scale=-1.0), "scale must be"),
        ({}, dict(kw, offset=-1), "offset must be"),
        ({}, dict(kw, selection_q=torch.zeros(2, 10, 3, 3, dtype=torch.float64)), "selection_q must be"),
        ({}, dict(kw, backend="nope"), "unknown backend"),
    ]
    for change, kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            hsa(**{**args, **change}, **kwargs)


TRITON_CHECK = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
import torch
from ssmzoo.ops.hsa.triton import hsa_triton
from test_hsa import CASES, _split, make_inputs, outputs_and_grads, assert_same, hsa_reference, keyword_form
hsa_triton = keyword_form(hsa_triton)
for case in CASES + [dict(length=30, chunk_size=4, top_k=2, hq=4, hk=2, d=20)]:
    shape, kw = _split(case)
    args = make_inputs(**shape)
    assert_same(outputs_and_grads(lambda **a: hsa_triton(**a, **kw), args),
                outputs_and_grads(lambda **a: hsa_reference(**a, **kw), args), 1e-10, 1e-12)
args = make_inputs(length=37, chunk_size=6, d=8, dtype=torch.float32)
kw = dict(chunk_size=6, top_k=3, combine="softmax")
assert_same(outputs_and_grads(lambda **a: hsa_triton(**a, **kw), args),
            outputs_and_grads(lambda **a: hsa_reference(**a, **kw), args), 1e-4, 1e-5)
print("triton interpreter: all match")
"""


def test_triton_matches_reference_under_interpreter():
    check_under_interpreter(TRITON_CHECK, timeout=600)


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_triton_matches_reference_on_gpu(case):
    if not torch.cuda.is_available() or not dispatch.usable("triton", torch.device("cuda")):
        pytest.skip("no CUDA device with triton")
    shape, kw = _split(case)
    for dtype, tol in ((torch.float64, (1e-10, 1e-12)), (torch.float32, (1e-4, 1e-5))):
        args = {n: t.cuda() for n, t in make_inputs(**shape, dtype=dtype).items()}
        assert_same(outputs_and_grads(lambda **a: hsa(**a, **kw, backend="triton"), args),
                    outputs_and_grads(lambda **a: hsa(**a, **kw, backend="reference"), args), *tol)
