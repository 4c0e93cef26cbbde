"""S4D and its Vandermonde kernel against brute-force definitions (PAPERS.md, S4D)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ssmzoo import S4D
from ssmzoo.ops import vandermonde as vandermonde_op
from ssmzoo.ops.vandermonde import TransposeInputs, VandermondeInputs, vandermonde, vandermonde_transpose


def vandermonde_reference(v, w, length):
    return vandermonde_op.vandermonde_reference(VandermondeInputs(v, w, length))


def vandermonde_chunked(v, w, length, chunk=1024):
    return vandermonde_op.vandermonde_chunked(VandermondeInputs(v, w, length), chunk)


def vandermonde_blocks(v, w, length, block=None):
    return vandermonde_op.vandermonde_blocks(VandermondeInputs(v, w, length), block)


def vandermonde_transpose_reference(u, w):
    return vandermonde_op.vandermonde_transpose_reference(TransposeInputs(u, w))


def vandermonde_transpose_chunked(u, w, chunk=1024):
    return vandermonde_op.vandermonde_transpose_chunked(TransposeInputs(u, w), chunk)


def vandermonde_transpose_blocks(u, w, block=None):
    return vandermonde_op.vandermonde_transpose_blocks(TransposeInputs(u, w), block)


def brute_force_kernel(layer: S4D, length: int) -> torch.Tensor:
    """K_l = 2 Re Σ_n C_n B̄_n Ā_n^l with Ā^l built by repeated multiplication, from the
    continuous parameters discretised here independently of the layer's code."""
    dt = torch.exp(layer.log_dt.detach().double())[:, None]
    a = torch.complex(-torch.exp(layer.log_A_real.detach().double()), layer.A_imag.detach().double())
    b = torch.view_as_complex(layer.B.detach().double().contiguous())
    c = torch.view_as_complex(layer.C.detach().double().contiguous())
    if layer.discretization == "zoh":
        a_bar = torch.exp(dt * a)
        b_bar = (a_bar - 1) / a * b
    else:
        a_bar = (1 + dt * a / 2) / (1 - dt * a / 2)
        b_bar = dt * b / (1 - dt * a / 2)
    power = torch.ones_like(a_bar)
    ks = []
    for _ in range(length):
        ks.append(2 * (c * b_bar * power).sum(-1).real)
        power = power * a_bar
    return torch.stack(ks, -1)


@pytest.mark.parametrize("init", ["legs", "inv", "lin", "real"])
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_kernel_matches_brute_force(init, disc):
    torch.manual_seed(0)
    layer = S4D(6, d_state=10, channels=2, init=init, discretization=disc).double()
    for length in (1, 37, 300):
        torch.testing.assert_close(layer.kernel(length), brute_force_kernel(layer, length), rtol=1e-9, atol=1e-10)


FAST_VANDERMONDE = {"chunked": vandermonde_chunked, "blocks": vandermonde_blocks}


@pytest.mark.parametrize("backend", sorted(FAST_VANDERMONDE))
@pytest.mark.parametrize("length,chunk", [(1, 4), (7, 4), (64, 16), (101, 32), (101, 10), (2, 1)])
def test_fast_vandermonde_matches_reference(backend, length, chunk):
    # chunk: the chunked backend's chunk, the blocks backend's block (a non-divisor of L included)
    g = torch.Generator().manual_seed(length)
    v = torch.randn(2, 3, 5, dtype=torch.complex128, generator=g).requires_grad_()
    w = (-torch.rand(3, 5, dtype=torch.float64, generator=g) * 0.1
         + 1j * torch.randn(3, 5, dtype=torch.float64, generator=g)).requires_grad_()
    ref = vandermonde_reference(v, w, length)
    out = FAST_VANDERMONDE[backend](v, w, length, chunk)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    gout = torch.randn_like(ref)
    gv_ref, gw_ref = torch.autograd.grad(ref, (v, w), gout)
    gv, gw = torch.autograd.grad(out, (v, w), gout)
    torch.testing.assert_close(gv, gv_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", sorted(FAST_VANDERMONDE))
def test_fast_vandermonde_gradcheck(backend):
    g = torch.Generator().manual_seed(3)
    v = torch.randn(2, 3, dtype=torch.complex128, generator=g).requires_grad_()
    w = (-0.1 + 1j * torch.randn(2, 3, dtype=torch.float64, generator=g)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: FAST_VANDERMONDE[backend](a, b, 11, 4), (v, w))


@pytest.mark.parametrize("length", [1, 5, 300, 4099])
def test_blocks_vandermonde_float32_as_accurate_as_reference(length):
    # Against a float64 oracle, the blocks kernel in float32 may not be much worse than the reference's.
    g = torch.Generator().manual_seed(length)
    v = torch.randn(4, 8, dtype=torch.complex128, generator=g)
    w = -torch.rand(4, 8, dtype=torch.float64, generator=g) * 0.01 + 1j * torch.randn(4, 8, dtype=torch.float64,
                                                                                          generator=g) * 0.1
    exact = vandermonde_reference(v, w, length)
    v32, w32 = v.to(torch.complex64), w.to(torch.complex64)
    err_ref = (vandermonde_reference(v32, w32, length).double() - exact).abs().max()
    err_blocks = (vandermonde_blocks(v32, w32, length).double() - exact).abs().max()
    assert err_blocks <= 2 * err_ref + 1e-5 * exact.abs().max()


def test_vandermonde_transpose_is_the_state():
    g = torch.Generator().manual_seed(4)
    u = torch.randn(2, 3, 29, dtype=torch.float64, generator=g)
    w = -0.05 + 1j * torch.randn(3, 4, dtype=torch.float64, generator=g)
    z = torch.exp(w)
    state = torch.zeros(2, 3, 4, dtype=torch.complex128)
    for t in range(29):
        state = z * state + u[..., t, None]
    for got in (vandermonde_transpose_chunked(u, w, chunk=8), vandermonde_transpose_reference(u, w),
                vandermonde_transpose_blocks(u, w, block=8), vandermonde_transpose_blocks(u, w),
                vandermonde_transpose_blocks(u.to(torch.complex128), w, block=5), vandermonde_transpose(u, w)):
        torch.testing.assert_close(got, state, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("length,block", [(1, 1), (29, 8), (30, 6), (7, 3)])
def test_vandermonde_transpose_blocks_gradients(length, block):
    g = torch.Generator().manual_seed(length)
    u = torch.randn(2, 3, length, dtype=torch.float64, generator=g).requires_grad_()
    w = (-0.05 + 1j * torch.randn(3, 4, dtype=torch.float64, generator=g)).requires_grad_()
    ref = vandermonde_transpose_reference(u, w)
    out = vandermonde_transpose_blocks(u, w, block=block)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    gout = torch.randn_like(ref)
    for got, want in zip(torch.autograd.grad(out, (u, w), gout), torch.autograd.grad(ref, (u, w), gout)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_auto_backend_prefers_blocks_then_switches_to_chunked_for_long_kernels(monkeypatch):
    import ssmzoo.ops.vandermonde as vmod

    v = torch.randn(4, 8, dtype=torch.complex64)
    w = -0.1 + 1j * torch.randn(4, 8)
    request = vmod.Request(torch.device("cpu"), torch.complex64, grad=True, size=10**9)
    assert vmod.dispatch.choose("auto", request).name == "blocks"
    # Without the blocks backend, auto materialises below the limit and goes chunked above it.
    monkeypatch.setitem(vmod.dispatch._probed, ("blocks", "cpu"), False)
    calls = []
    monkeypatch.setattr(vmod.dispatch.backends["reference"], "capabilities",
                        dataclasses.replace(vmod.dispatch.backends["reference"].capabilities, max_size=100))
    orig = vmod.dispatch.backends["chunked"].fn
    monkeypatch.setattr(vmod.dispatch.backends["chunked"], "fn", lambda *a: calls.append(1) or orig(*a))
    vandermonde(v, w, 64)
    assert calls, "auto did not pick the chunked backend above the limit"
    with pytest.raises(ValueError, match="complex"):
        vandermonde(v.real, w, 4)
    with pytest.raises(ValueError, match="unknown backend"):
        vandermonde(v, w, 4, backend="nope")


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_step_matches_convolution_over_1000_steps(dtype, tol):
    torch.manual_seed(0)
    layer = S4D(4, d_state=16, output="none", activation="identity").to(dtype)
    x = torch.randn(2, 1000, 4, dtype=dtype)
    y = layer(x)
    state = layer.init_state(2)
    outs = []
    with torch.no_grad():
        for t in range(1000):
            y_t, state = layer.step(x[:, t], state)
            outs.append(y_t)
    err = (torch.stack(outs, 1) - y).abs().max().item()
    assert err < tol, f"step vs convolution differ by {err:.3g} (tolerance {tol})"


def test_reals_stay_stable_under_any_parameter_value():
    layer = S4D(3, d_state=4)
    with torch.no_grad():
        layer.log_A_real.fill_(5.0)
        layer.A_imag.fill_(-3.0)
    log_a, _ = layer._discrete()
    assert (log_a.real < 0).all()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(d_model=0), "d_model"),
        (dict(d_model=4, d_state=3), "even"),
        (dict(d_model=4, init="hippo"), "init"),
        (dict(d_model=4, discretization="euler"), "discretization"),
        (dict(d_model=4, dt_min=0.1, dt_max=0.01), "dt_min"),
        (dict(d_model=4, channels=0), "channels"),
        (dict(d_model=4, dropout=1.5), "dropout"),
        (dict(d_model=4, channels=2, output="none"), "channels"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        S4D(**kwargs)
