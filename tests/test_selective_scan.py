"""The selective scan: the reference against closed forms, every CPU backend against the reference
(output, final state and all gradients), and the argument checks."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ssmzoo.ops.dispatch import Request
from ssmzoo.ops.selective_scan import cpu as cpu_backend
from ssmzoo.ops.segments import Segments
from ssmzoo.ops.selective_scan import ScanInputs, dispatch, selective_scan
from triton_checks import check_under_interpreter

ROOT = Path(__file__).resolve().parents[1]
CPU_BACKENDS = [name for name in dispatch.backends if name != "reference" and "cpu" in dispatch.backends[name].devices]
GPU_BACKENDS = [name for name in dispatch.backends if "cuda" in dispatch.backends[name].devices]


def reference(**kwargs):
    """The reference backend called like the public op (keyword arguments)."""
    return selective_scan(**kwargs, backend="reference")


def keyword_form(backend_fn, **options):
    """A backend function (which takes ScanInputs) called like the public op."""

    def call(output_final_state=False, **kwargs):
        return backend_fn(ScanInputs(**kwargs), output_final_state=output_final_state, **options)

    return call


def make_inputs(batch=2, d_inner=4, d_state=3, length=7, bc="time", groups=2, dtype=torch.float64,
                seed=0, with_all=True):
    """Random inputs of the given layout; bc in "const" (D, N), "time" (batch, N, L), "group" (batch, G, N, L)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale)

    shapes = {"const": (d_inner, d_state), "time": (batch, d_state, length),
              "group": (batch, groups, d_state, length)}
    args = {
        "u": rnd(batch, d_inner, length),
        "delta": rnd(batch, d_inner, length, scale=0.5),
        "A": -torch.rand(d_inner, d_state, generator=g, dtype=dtype) * 2 - 0.1,
        "B": rnd(*shapes[bc]),
        "C": rnd(*shapes[bc]),
    }
    if with_all:
        args.update(D=rnd(d_inner), z=rnd(batch, d_inner, length), delta_bias=rnd(d_inner, scale=0.3),
                    initial_state=rnd(batch, d_inner, d_state))
    return args


def test_reference_matches_convolution_closed_form():
    # Time-invariant B, C and a constant Δ make the scan an LTI system: y = K * u with
    # K_l = Σ_n C_n exp(l Δ A_n) Δ B_n (S4's kernel), independent of the recurrence in reference.py.
    d_inner, d_state, length = 3, 4, 9
    args = make_inputs(1, d_inner, d_state, length, bc="const", with_all=False)
    dt = 0.3
    delta = torch.full((1, d_inner, length), dt, dtype=torch.float64)
    y = reference(u=args["u"], delta=delta, A=args["A"], B=args["B"], C=args["C"])
    ell = torch.arange(length, dtype=torch.float64)
    K = torch.einsum("dn,dnl->dl", args["C"] * dt * args["B"], torch.exp(dt * args["A"][..., None] * ell))
    want = torch.stack([sum(K[:, s] * args["u"][0, :, t - s] for s in range(t + 1)) for t in range(length)], -1)
    torch.testing.assert_close(y[0], want)


def test_reference_gate_skip_and_state_split():
    args = make_inputs(length=8)
    full, h_full = reference(**args, delta_softplus=True, output_final_state=True)
    # Splitting the sequence and passing the state gives the same output and final state.
    part = {k: v[..., :5] if k in ("u", "delta", "z", "B", "C") else v for k, v in args.items()}
    rest = {k: v[..., 5:] if k in ("u", "delta", "z", "B", "C") else v for k, v in args.items()}
    y1, h1 = reference(**part, delta_softplus=True, output_final_state=True)
    rest["initial_state"] = h1
    y2, h2 = reference(**rest, delta_softplus=True, output_final_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], -1), full)
    torch.testing.assert_close(h2, h_full)
    # D and z act as y = (scan + D u) * silu(z).
    plain = reference(**{**args, "D": None, "z": None}, delta_softplus=True)
    torch.testing.assert_close(full, (plain + args["D"][:, None] * args["u"]) * F.silu(args["z"]))


def run_and_grads(fn_kwargs, backend, with_state=True):
    """Output, final state and the gradients of a random projection of both, for one backend
    (a dispatch name, or a function with selective_scan's keyword arguments). Without state: no
    initial state in and no final state out (the path mamba-ssm's own kernel takes)."""
    fn = functools.partial(selective_scan, backend=backend) if isinstance(backend, str) else backend
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in fn_kwargs.items()
              if with_state or k != "initial_state"}
    g = torch.Generator().manual_seed(123)
    if with_state:
        y, h = fn(**leaves, delta_softplus=True, output_final_state=True)
        loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype).to(y.device)).sum()
        loss = loss + (h * torch.randn(h.shape, generator=g, dtype=h.dtype).to(h.device)).sum()
    else:
        y, h = fn(**leaves, delta_softplus=True), None
        loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype).to(y.device)).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return y, h, dict(zip(leaves, grads))


CASES = [
    {"length": 1},
    {"length": 7},
    {"length": 37, "bc": "group", "groups": 2},
    {"length": 20, "bc": "const"},
    {"length": 13, "bc": "group", "groups": 4, "d_inner": 8},
    {"length": 150, "batch": 1, "d_inner": 3, "bc": "time"},  # several checkpoint chunks, the last one partial
]


def compare(backend, kwargs, dtype, rtol, atol, with_all=True, device="cpu", with_state=True):
    args = {k: v.to(device) for k, v in make_inputs(**kwargs, dtype=dtype, with_all=with_all).items()}
    y0, h0, g0 = run_and_grads(args, "reference", with_state)
    y1, h1, g1 = run_and_grads(args, backend, with_state)
    torch.testing.assert_close(y1, y0, rtol=rtol, atol=atol)
    if with_state:
        torch.testing.assert_close(h1, h0, rtol=rtol, atol=atol)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=rtol, atol=atol, msg=lambda m, name=name: f"grad {name}: {m}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_backend_matches_reference_float64(backend, case):
    compare(backend, case, torch.float64, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backend_matches_reference_float32(backend):
    # mamba-ssm's fp32 tolerances for the selective scan.
    compare(backend, {"batch": 2, "d_inner": 6, "d_state": 16, "length": 70, "bc": "group", "groups": 3}, torch.float32,
            rtol=6e-4, atol=2e-3)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backend_without_optional_arguments(backend):
    compare(backend, {"length": 9}, torch.float64, rtol=1e-9, atol=1e-9, with_all=False)
    compare(backend, {"length": 9}, torch.float64, rtol=1e-9, atol=1e-9, with_state=False)


def test_bad_arguments_raise_value_error():
    args = make_inputs()
    with pytest.raises(ValueError, match="delta"):
        selective_scan(**{**args, "delta": args["delta"][..., :3]})
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(**{**args, "A": args["A"][:2]})
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(**{**args, "B": torch.zeros(2, 3, 3, 7, dtype=torch.float64)})  # G=3 does not divide D=4
    with pytest.raises(ValueError, match="initial_state"):
        selective_scan(**{**args, "initial_state": torch.zeros(2, 4, 5, dtype=torch.float64)})
    with pytest.raises(ValueError, match="unknown backend"):
        selective_scan(**args, backend="nope")


def test_cuda_source_compiles_with_nvcc(tmp_path):
    # The CUDA kernel is torch-free behind C launchers, so plain nvcc checks it on any machine.
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH")
    csrc = ROOT / "ssmzoo" / "csrc"
    cmd = [nvcc, "-c", "-arch=sm_90", "-I", str(csrc), str(csrc / "selective_scan_cuda.cu"),
           "-o", str(tmp_path / "selective_scan_cuda.o")]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert done.returncode == 0, f"nvcc failed:\n{done.stderr}"
    assert (tmp_path / "selective_scan_cuda.o").stat().st_size > 0


TRITON_CHECK = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
import functools, torch
from ssmzoo.ops.selective_scan.triton import selective_scan_triton
from test_selective_scan import compare, keyword_form
fn = keyword_form(selective_scan_triton, chunk=4)  # several chunks, the last one partial
compare(fn, dict(length=7, bc="group", groups=2), torch.float64, rtol=1e-9, atol=1e-9)
compare(fn, dict(length=1), torch.float64, rtol=1e-9, atol=1e-9)
compare(fn, dict(length=6, bc="const", d_inner=3), torch.float64, rtol=1e-9, atol=1e-9)
compare(fn, dict(length=5), torch.float64, rtol=1e-9, atol=1e-9, with_all=False)
compare(fn, dict(length=9, d_state=5, bc="group", groups=2), torch.float32, rtol=6e-4, atol=2e-3)
print("triton interpreter: all match")
"""


def test_triton_matches_reference_under_interpreter():
    check_under_interpreter(TRITON_CHECK, timeout=600)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", [b for b in GPU_BACKENDS if b != "reference"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_gpu_backend_matches_reference(backend, case):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if not dispatch.usable(backend, torch.device("cuda")):
        pytest.skip(f"backend {backend} is not available on this machine")
    compare(backend, case, torch.float32, rtol=6e-4, atol=2e-3, device="cuda")
    compare(backend, case, torch.float32, rtol=6e-4, atol=2e-3, device="cuda", with_state=False)
    if backend != "mamba_ssm":  # mamba-ssm is float32/16 only
        compare(backend, case, torch.float64, rtol=1e-9, atol=1e-9, device="cuda")


def test_auto_prefers_the_cpu_kernel_when_it_builds():
    cpu = torch.device("cpu")
    expected = "cpu" if dispatch.usable("cpu", cpu) else "chunked"
    plain = Request(cpu, torch.float32, final_state=True, grad=True, facts=(("d_state", 16),))
    assert dispatch.choose("auto", plain).name == expected
    # the kernel keeps the state on the stack: a larger one goes to the chunked scan
    huge = Request(cpu, torch.float32, facts=(("d_state", cpu_backend.MAX_STATE + 1),))
    assert dispatch.choose("auto", huge).name == "chunked"
    with pytest.raises(ValueError, match="d_state <= 256"):
        dispatch.choose("cpu", huge)


# -- packed documents: the state restarts at every document start ---------------------------------
PACKED = [  # (document lengths per row, B/C layout): a document of length 1, one spanning a whole row, documents
    # starting on and next to the chunked backend's chunk (16) and the kernel's checkpoint chunk (64) boundaries
    ([[1, 6], [7]], "time"),
    ([[16, 1, 20], [3, 34]], "group"),
    ([[64, 1, 85], [150]], "const"),
    ([[2, 62, 1, 1, 84], [63, 87]], "time"),
]


def packed_inputs(lengths, bc, with_state=True, dtype=torch.float64):
    segments = Segments.from_lengths(lengths, sum(lengths[0]))
    args = make_inputs(batch=len(lengths), d_inner=4, d_state=3, length=segments.length, bc=bc, groups=2, dtype=dtype)
    states = torch.randn(segments.num_docs, 4, 3, generator=torch.Generator().manual_seed(9), dtype=dtype)
    args["initial_state"] = states if with_state else None
    return args, segments


def packed_run(args, segments, backend):
    """Output, per-document final states and the gradients of a random projection of both."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in args.items() if v is not None}
    y, h = selective_scan(**leaves, delta_softplus=True, output_final_state=True, segments=segments, backend=backend)
    g = torch.Generator().manual_seed(5)
    loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum() + (h * torch.randn(h.shape, generator=g,
                                                                                             dtype=h.dtype)).sum()
    return y, h, dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))


@pytest.mark.parametrize("lengths,bc", PACKED[:2])
def test_packed_reference_runs_each_document_alone(lengths, bc):
    args, segments = packed_inputs(lengths, bc)
    y, h = reference(**args, delta_softplus=True, output_final_state=True, segments=segments)
    for k, (row, t0, t1) in enumerate(segments.spans):
        alone = {name: (v[row : row + 1, ..., t0:t1] if name in ("u", "delta", "z") or (name in ("B", "C") and v.dim() > 2)
                        else v) for name, v in args.items()}
        alone["initial_state"] = args["initial_state"][k : k + 1]
        y_doc, h_doc = reference(**alone, delta_softplus=True, output_final_state=True)
        torch.testing.assert_close(y[row : row + 1, :, t0:t1], y_doc, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(h[k : k + 1], h_doc, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if dispatch.backends[b].capabilities.segments])
@pytest.mark.parametrize("lengths,bc", PACKED)
@pytest.mark.parametrize("with_state", [True, False])
def test_packed_backend_matches_reference_float64(backend, lengths, bc, with_state):
    args, segments = packed_inputs(lengths, bc, with_state)
    want, got = packed_run(args, segments, "reference"), packed_run(args, segments, backend)
    for a, b in zip(got[:2], want[:2]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    for name in want[2]:
        torch.testing.assert_close(got[2][name], want[2][name], rtol=1e-9, atol=1e-9,
                                   msg=lambda m, name=name: f"grad {name}: {m}")


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if dispatch.backends[b].capabilities.segments])
def test_packed_backend_matches_reference_float32(backend):
    args, segments = packed_inputs([[16, 1, 20], [3, 34]], "group", dtype=torch.float32)
    want, got = packed_run(args, segments, "reference"), packed_run(args, segments, backend)
    for a, b in zip(got[:2], want[:2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for name in want[2]:
        torch.testing.assert_close(got[2][name], want[2][name], rtol=1e-4, atol=1e-4)


def test_packed_calls_never_reach_a_backend_without_segments():
    cpu = torch.device("cpu")
    packed = Request(cpu, torch.float32, segments=True, facts=(("d_state", 4),))
    assert dispatch.choose("auto", packed).capabilities.segments
    for name in ("mamba_ssm", "cuda", "triton"):
        with pytest.raises(ValueError, match="packed documents"):
            dispatch.choose(name, Request(torch.device("cuda"), torch.float32, segments=True))
    # One document per row is no packing: any backend serves it, with states per row.
    args = make_inputs(length=7)
    one_each = Segments.from_lengths([[7], [7]], 7)
    torch.testing.assert_close(selective_scan(**args, segments=one_each, output_final_state=True, backend="reference"),
                               selective_scan(**args, output_final_state=True, backend="reference"))
    with pytest.raises(ValueError, match=r"initial_state must be \(num_docs=3"):
        selective_scan(**args, segments=Segments.from_lengths([[3, 4], [7]], 7))
    with pytest.raises(ValueError, match="segments describe"):
        selective_scan(**{**args, "initial_state": None}, segments=Segments.from_lengths([[3], [3]], 3))
