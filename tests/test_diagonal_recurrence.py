"""The diagonal recurrence op: the reference against a closed form, every backend against the reference
(states, final states and the gradients of x, decay and the initial state; both directions; packed
documents), the argument checks, and the op's place in the dispatch."""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch

from ssmzoo.ops import diagonal_recurrence as op
from ssmzoo.ops.diagonal_recurrence import diagonal_recurrence, dispatch
from ssmzoo.ops.dispatch import Request
from ssmzoo.ops.segments import Segments
from triton_checks import check_under_interpreter

CPU_BACKENDS = [n for n, b in dispatch.backends.items() if n != "reference" and "cpu" in b.devices]
REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64}


def make(batch=2, length=7, dim=5, dtype=torch.complex128, per_step=False, h0=True, docs=None, seed=0):
    """Random inputs; |decay| in (0.3, 1) so states neither vanish nor blow up. ``docs``: per-row document
    lengths (segments), else one sequence per row."""
    g = torch.Generator().manual_seed(seed)
    real = REAL.get(dtype, dtype)

    def rnd(*shape):
        if dtype.is_complex:
            return torch.complex(torch.randn(*shape, generator=g, dtype=real), torch.randn(*shape, generator=g, dtype=real))
        return torch.randn(*shape, generator=g, dtype=real)

    shape = (batch, length, dim) if per_step else (dim,)
    mag = torch.rand(*shape, generator=g, dtype=real) * 0.7 + 0.3
    if dtype.is_complex:
        decay = torch.polar(mag, torch.randn(*shape, generator=g, dtype=real) * 2)
    else:
        decay = mag * torch.where(torch.rand(*shape, generator=g) < 0.3, -1.0, 1.0).to(real)
    segments = Segments.from_lengths(docs, length) if docs is not None else None
    states = batch if segments is None else segments.num_docs
    return {"x": rnd(batch, length, dim), "decay": decay, "initial_state": rnd(states, dim) if h0 else None,
            "segments": segments}


def run(backend, args, reverse=False, final=True):
    return diagonal_recurrence(**args, reverse=reverse, output_final_state=final, backend=backend)


def grads(backend, args, reverse, final, seed=3):
    """Outputs and the gradients of every floating input of a random linear function of them."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in args.items() if isinstance(v, torch.Tensor)}
    call = dict(args, **leaves)
    out = run(backend, call, reverse, final)
    outs = list(out) if final else [out]
    g = torch.Generator().manual_seed(seed)
    loss = 0
    for o in outs:
        w = torch.randn(*o.shape, 2, generator=g, dtype=o.real.dtype)
        loss = loss + (o.real * w[..., 0]).sum() + ((o.imag * w[..., 1]).sum() if o.is_complex() else 0)
    names = list(leaves)
    got = torch.autograd.grad(loss, [leaves[n] for n in names])
    return [o.detach() for o in outs], dict(zip(names, got))


CASES = [
    dict(),
    dict(length=1),
    dict(length=13, dim=37),  # odd length; more channels than one work item of the kernels
    dict(per_step=True),
    dict(h0=False),
    dict(docs=[[3, 1, 5], [9]], length=9),  # a document of length 1, and one spanning a whole row
    dict(docs=[[1, 1, 2], [2, 2]], length=4, per_step=True),
    dict(docs=[[4, 1], [5]], length=5, h0=False),
]


def _id(case):
    return "-".join(f"{k}{v}" for k, v in case.items()) or "plain"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=_id)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.complex128, 1e-8), (torch.float64, 1e-8), (torch.complex64, 1e-4),
                                       (torch.float32, 1e-4)])
def test_backend_matches_reference(backend, case, reverse, dtype, tol):
    args = make(dtype=dtype, **case)
    for final in (True, False):
        want, want_g = grads("reference", args, reverse, final)
        got, got_g = grads(backend, args, reverse, final)
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)
        assert got_g.keys() == want_g.keys()
        for name in want_g:
            torch.testing.assert_close(got_g[name], want_g[name], rtol=tol, atol=tol, msg=f"gradient of {name}")


def test_reference_matches_closed_form():
    # Constant decay: h_t = sum_{s<=t} λ^(t-s) x_s + λ^(t+1) h0, computed without the recurrence.
    args = make(batch=1, length=6, dim=3)
    x, lam, h0 = args["x"][0], args["decay"], args["initial_state"][0]
    h, final = run("reference", args)
    for t in range(6):
        want = sum(lam ** (t - s) * x[s] for s in range(t + 1)) + lam ** (t + 1) * h0
        torch.testing.assert_close(h[0, t], want)
    torch.testing.assert_close(final[0], h[0, -1])
    # reverse: the same recurrence on the time-flipped input
    hr, final_r = run("reference", args, reverse=True)
    flipped, flipped_final = run("reference", dict(args, x=args["x"].flip(1)))
    torch.testing.assert_close(hr, flipped.flip(1))
    torch.testing.assert_close(final_r, flipped_final)


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
@pytest.mark.parametrize("reverse", [False, True])
def test_packed_equals_each_document_alone(backend, reverse):
    docs = [[3, 1, 5], [9]]
    args = make(length=9, docs=docs, per_step=True)
    h, finals = run(backend, args, reverse)
    for k, s in enumerate(args["segments"].spans):
        alone = {"x": args["x"][s.row:s.row + 1, s.start:s.stop], "segments": None,
                 "decay": args["decay"][s.row:s.row + 1, s.start:s.stop],
                 "initial_state": args["initial_state"][k:k + 1]}
        h1, f1 = run("reference", alone, reverse)
        torch.testing.assert_close(h[s.row:s.row + 1, s.start:s.stop], h1, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(finals[k:k + 1], f1, rtol=1e-12, atol=1e-12)


def test_splitting_a_sequence_passes_the_state():
    args = make(length=10, per_step=True)
    h, final = run("reference", args)
    first = dict(args, x=args["x"][:, :4], decay=args["decay"][:, :4])
    h1, s1 = run("cpu" if "cpu" in CPU_BACKENDS else "scan", first)
    rest = dict(args, x=args["x"][:, 4:], decay=args["decay"][:, 4:], initial_state=s1)
    h2, s2 = run("scan", rest)
    torch.testing.assert_close(torch.cat([h1, h2], 1), h)
    torch.testing.assert_close(s2, final)


def test_bad_arguments_name_the_argument():
    args = make(length=4)
    bad = [
        (dict(x=args["x"][0]), "x must be \\(batch, length, dim\\)"),
        (dict(x=args["x"].real.to(torch.float16)), "x must be float32"),
        (dict(decay=args["decay"][:2]), "decay must be \\(dim=5,\\)"),
        (dict(decay=args["decay"].to(torch.complex64)), "decay must have x's dtype"),
        (dict(initial_state=args["initial_state"][:1]), "initial_state must be \\(batch=2, dim=5\\)"),
        (dict(initial_state=args["initial_state"].to(torch.complex64)), "initial_state must have x's dtype"),
        (dict(segments=Segments.from_lengths([[4]], 4)), "segments describe"),
        (dict(segments=Segments.from_lengths([[2, 2], [4]], 4)), "initial_state must be \\(num_docs=3"),
    ]
    for change, message in bad:
        with pytest.raises(ValueError, match=f"diagonal_recurrence: {message}"):
            diagonal_recurrence(**dict(args, **change))
    with pytest.raises(ValueError, match="reverse must be True or False"):
        diagonal_recurrence(args["x"], args["decay"], reverse=1)
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        diagonal_recurrence(args["x"], args["decay"], backend="nope")


def test_the_op_has_the_template_shape():
    # As tests/test_dispatch.py checks every listed op (this one is not in its list yet).
    reference = importlib.import_module(f"{op.__name__}.reference")
    assert dispatch.reference.__module__ == reference.__name__
    assert dispatch.backends["reference"].fn is dispatch.reference
    params = inspect.signature(diagonal_recurrence).parameters
    for name in ("reverse", "initial_state", "output_final_state", "segments", "backend"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
    for name, backend in dispatch.backends.items():
        if "cpu" in backend.devices and backend.available():
            assert dispatch.usable(name, torch.device("cpu")), f"backend {name} fails its probe"


def test_auto_prefers_the_cpu_kernel_on_cpu():
    cpu = torch.device("cpu")
    expected = "cpu" if dispatch.usable("cpu", cpu) else "scan"
    for dtype in (torch.float32, torch.complex64, torch.complex128):
        request = Request(cpu, dtype, initial_state=True, final_state=True, grad=True)
        assert dispatch.choose("auto", request).name == expected


TRITON_CHECK = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
import torch
from ssmzoo.ops.diagonal_recurrence.triton import diagonal_recurrence_triton
from ssmzoo.ops.diagonal_recurrence import RecurrenceInputs, diagonal_recurrence_reference
from test_diagonal_recurrence import make

def outputs_and_grads(fn, args, reverse):
    leaves = {{k: v.detach().clone().requires_grad_() for k, v in args.items() if isinstance(v, torch.Tensor)}}
    inputs = RecurrenceInputs(leaves["x"], leaves["decay"], reverse, leaves.get("initial_state"), args["segments"])
    h, final = fn(inputs, True)
    g = torch.Generator().manual_seed(1)
    loss = sum((torch.view_as_real(o) if o.is_complex() else o).mul(
        torch.randn((torch.view_as_real(o) if o.is_complex() else o).shape, generator=g, dtype=o.real.dtype)).sum()
        for o in (h, final))
    return [h, final] + list(torch.autograd.grad(loss, list(leaves.values())))

for case in [dict(length=5), dict(length=1), dict(length=7, dim=3, per_step=True, h0=False),
             dict(length=6, docs=[[2, 1, 3], [6]]), dict(length=4, docs=[[1, 3], [2, 2]], per_step=True)]:
    for dtype, tol in ((torch.complex128, 1e-10), (torch.float64, 1e-10), (torch.complex64, 1e-4)):
        for reverse in (False, True):
            args = make(batch=2, dim=3 if "dim" not in case else case.pop("dim"), dtype=dtype, **case)
            got = outputs_and_grads(diagonal_recurrence_triton, args, reverse)
            want = outputs_and_grads(diagonal_recurrence_reference, args, reverse)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=tol, atol=tol)
print("triton interpreter: all match")
"""


def test_triton_matches_reference_under_interpreter():
    check_under_interpreter(TRITON_CHECK, timeout=600)
