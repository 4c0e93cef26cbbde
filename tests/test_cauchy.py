"""Every Cauchy backend against the reference, values and gradients, complex128 and complex64."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from ssmzoo.ops import cauchy as cauchy_mod
from ssmzoo.ops.cauchy import CauchyInputs, cauchy, cauchy_chunked
from ssmzoo.ops.dispatch import Request

TOL = {torch.complex128: 1e-10, torch.complex64: 2e-4}


def _inputs(shape_v, shape_w, length, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(*shape_v, dtype=dtype, generator=g).requires_grad_()
    # poles in the left half-plane, nodes z = 2(1-ω)/(1+ω) on the imaginary axis, as in S4
    w = torch.complex(-torch.rand(*shape_w, generator=g) - 0.1, 3 * torch.randn(*shape_w, generator=g)).to(dtype)
    w.requires_grad_()
    z = (1j * 4 * torch.randn(length, generator=g, dtype=torch.float64)).to(dtype)
    return v, z, w


def cauchy_reference(v, z, w):
    return cauchy(v, z, w, backend="reference")


def bundle_form(backend_fn, **options):
    """A backend function (which takes CauchyInputs of (M, N) v and w) called as fn(v, z, w)."""
    return lambda v, z, w: backend_fn(CauchyInputs(v, z, w), **options)


def _compare(fn, v, z, w, dtype):
    ref = cauchy_reference(v, z, w)
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad((ref * g.conj()).real.sum(), [v, w])
    out = fn(v, z, w)
    grads = torch.autograd.grad((out * g.conj()).real.sum(), [v, w])
    scale = float(ref.detach().abs().max())
    torch.testing.assert_close(out, ref, rtol=TOL[dtype], atol=TOL[dtype] * scale)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=TOL[dtype], atol=TOL[dtype] * float(b.abs().max()))


def test_reference_is_the_full_conjugate_sum():
    v, z, w = _inputs((5,), (5,), 4, torch.complex128)
    v_full, w_full = torch.cat([v, v.conj()]), torch.cat([w, w.conj()])
    direct = torch.stack([(v_full / (zl - w_full)).sum() for zl in z])
    torch.testing.assert_close(cauchy_reference(v, z, w), direct)


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
@pytest.mark.parametrize("m,n,length,chunk", [(1, 1, 1, 4), (3, 5, 7, 3), (4, 16, 33, 8), (2, 3, 8, 8)])
def test_chunked(dtype, m, n, length, chunk):
    v, z, w = _inputs((m, n), (m, n), length, dtype)
    _compare(bundle_form(cauchy_chunked, chunk=chunk), v, z, w, dtype)


@pytest.fixture(scope="module")
def cpu_available():
    if not cauchy_mod.cpu.available():
        pytest.skip("the C++ extension could not be built here (needs g++ and ninja)")


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
@pytest.mark.parametrize("m,n,length", [(1, 1, 1), (3, 5, 7), (4, 16, 33)])
def test_cpu(cpu_available, dtype, m, n, length):
    v, z, w = _inputs((m, n), (m, n), length, dtype)
    _compare(bundle_form(cauchy_mod.cpu.cauchy_cpu), v, z, w, dtype)


@pytest.mark.skipif(importlib.util.find_spec("pykeops") is None, reason="pykeops is not installed (the [keops] extra)")
@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
def test_keops(dtype):
    if not cauchy_mod.dispatch.usable("keops", torch.device("cpu")):
        pytest.skip("pykeops is installed but failed its probe here")
    v, z, w = _inputs((3, 5), (3, 5), 7, dtype)
    _compare(bundle_form(cauchy_mod.keops.cauchy_keops), v, z, w, dtype)


@pytest.mark.parametrize("backend", ["reference", "chunked", "cpu"])
def test_public_entry_broadcasts(backend):
    if backend == "cpu" and not cauchy_mod.cpu.available():
        pytest.skip("no C++ extension")
    v, z, w = _inputs((2, 3, 4), (3, 4), 5, torch.complex128)
    out = cauchy(v, z, w, backend=backend)
    assert out.shape == (2, 3, 5)
    want = torch.stack([cauchy(v[i], z, w, backend="reference") for i in range(2)])  # the broadcast by hand
    torch.testing.assert_close(out, want)


def test_a_broken_backend_is_never_chosen(monkeypatch):
    """Whatever is installed here: a backend whose build is broken warns once and auto moves on."""
    def broken(x):
        raise RuntimeError("simulated broken build")

    cpu = torch.device("cpu")
    for name in ("keops", "cpu"):
        monkeypatch.setattr(cauchy_mod.dispatch.backends[name], "fn", broken)
        monkeypatch.setattr(cauchy_mod.dispatch.backends[name], "available", lambda: True)
    monkeypatch.setattr(cauchy_mod.dispatch, "_probed", {})
    big = Request(cpu, torch.complex64, size=10**9)
    with pytest.warns(UserWarning, match="failed its probe") as record:
        assert cauchy_mod.dispatch.choose("auto", big).name == "chunked"
    assert {str(w.message).split("'")[1] for w in record} == {"keops", "cpu"}
    small = Request(cpu, torch.complex64, size=10)
    assert cauchy_mod.dispatch.choose("auto", small).name == "reference"
    with pytest.raises(ValueError, match="'cpu' cannot serve.*failed its probe"):
        cauchy(*_inputs((2,), (2,), 3, torch.complex64), backend="cpu")
    cauchy_mod.dispatch.reset()


def test_bad_inputs():
    v, z, w = _inputs((2, 3), (2, 3), 4, torch.complex64)
    with pytest.raises(ValueError, match="complex"):
        cauchy(v.real, z, w)
    with pytest.raises(ValueError, match="one dtype"):
        cauchy(v, z.to(torch.complex128), w)
    with pytest.raises(ValueError, match="z must have shape"):
        cauchy(v, z[None], w)
    with pytest.raises(ValueError, match="broadcast"):
        cauchy(v, z, w[:, :2])
    with pytest.raises(ValueError, match="unknown backend"):
        cauchy(v, z, w, backend="nope")
