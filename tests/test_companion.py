"""The companion kernel k_l = cᵀAˡb three ways (matrix powers, Krylov squaring, FFT/Sherman–Morrison)
against each other and against independent closed forms, forward and backward, in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssmzoo.layers.spacetime import ClosedLoopCompanionSSM, capped_a
from ssmzoo.ops import companion
from ssmzoo.ops.companion import (
    CompanionInputs,
    c_tilde,
    companion_final_state,
    companion_kernel,
    companion_kernel_from_c_tilde,
    companion_matrix,
)


def _bundled(backend_fn):
    """A backend function (which takes CompanionInputs) called as fn(a, b, c, length)."""
    return lambda a, b, c, length: backend_fn(CompanionInputs(a, b, c, length))


companion_kernel_reference = _bundled(companion.companion_kernel_reference)
companion_kernel_krylov = _bundled(companion.companion_kernel_krylov)
companion_kernel_fft = _bundled(companion.companion_kernel_fft)


@pytest.fixture(autouse=True)
def one_thread():
    # tiny shapes on shared cores: one intra-op thread is many times faster than two contended ones
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SHAPES = [(1, 1), (1, 9), (3, 1), (4, 2), (5, 7), (16, 5), (8, 64), (33, 100), (12, 13)]


def rand(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=torch.float64)


def test_companion_matrix_is_shift_plus_last_column():
    a = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    expected = torch.tensor([[0, 0, 0.1], [1, 0, 0.2], [0, 1, 0.3]], dtype=torch.float64)
    torch.testing.assert_close(companion_matrix(a), expected)


def test_reference_matches_a_plain_recurrence():
    # x_t = A x_{t−1} + b δ_t, y_t = cᵀx_t is the impulse response: simulate it element by element
    d, length = 4, 11
    a, b, c = rand(d, seed=1, scale=0.4), rand(d, seed=2), rand(d, seed=3)
    x = np.zeros(d)
    out = []
    for t in range(length):
        new = np.zeros(d)
        new[1:] = x[:-1]
        new += a.numpy() * x[-1] + (b.numpy() if t == 0 else 0)
        x = new
        out.append(c.numpy() @ x)
    torch.testing.assert_close(companion_kernel_reference(a, b, c, length), torch.tensor(out), rtol=1e-12, atol=1e-12)


def test_scalar_case_is_geometric():
    a, b, c = (torch.tensor([v], dtype=torch.float64) for v in (0.7, 2.0, 3.0))
    expected = 6.0 * 0.7 ** torch.arange(10, dtype=torch.float64)
    for method in ("reference", "krylov", "fft"):
        torch.testing.assert_close(companion_kernel(a, b, c, 10, backend=method), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d,length", SHAPES)
def test_three_ways_agree(d, length):
    a = capped_a(rand(3, d, seed=d), 0.99)
    b, c = rand(3, d, seed=d + 1), rand(2, 1, d, seed=d + 2)  # broadcast c over a's batch
    ref = companion_kernel_reference(a, b, c, length)
    assert ref.shape == (2, 3, length)
    torch.testing.assert_close(companion_kernel_krylov(a, b, c, length), ref, rtol=0, atol=1e-8)
    torch.testing.assert_close(companion_kernel(a, b, c, length, backend="fft"), ref, rtol=0, atol=1e-8)


def test_unnormalised_a_still_agrees():
    d, length = 6, 20
    a, b, c = rand(d, seed=5), rand(d, seed=6), rand(d, seed=7)  # ||a||_1 > 1: growing kernels
    ref = companion_kernel_reference(a, b, c, length)
    torch.testing.assert_close(companion_kernel(a, b, c, length), ref, rtol=1e-8, atol=1e-8)


def test_learned_c_tilde_form():
    # the FFT algorithm takes c̃; feeding c̃ = c − (A^ℓ)ᵀc reproduces cᵀAˡb, feeding c itself does not
    d, length = 5, 8
    a, b, c = rand(d, seed=8, scale=0.3), rand(d, seed=9), rand(d, seed=10)
    ref = companion_kernel_reference(a, b, c, length)
    torch.testing.assert_close(companion_kernel_from_c_tilde(a, b, c_tilde(a, c, length), length), ref, rtol=0,
                               atol=1e-10)
    assert (companion_kernel_from_c_tilde(a, b, c, length) - ref).abs().max() > 1e-3
    torch.testing.assert_close(companion_kernel_fft(a, b, c, length), ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", ["krylov", "fft"])
def test_gradients_agree(method):
    d, length = 7, 19
    params = [capped_a(rand(2, d, seed=11), 0.9), rand(2, d, seed=12), rand(2, d, seed=13)]
    weights = rand(2, length, seed=14)
    grads = []
    for m in ("reference", method):
        leaves = [p.clone().requires_grad_() for p in params]
        (companion_kernel(*leaves, length, backend=m) * weights).sum().backward()
        grads.append([leaf.grad for leaf in leaves])
    for g_ref, g in zip(*grads):
        torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-8)


def test_bad_arguments():
    a = rand(4)
    with pytest.raises(ValueError, match="state size"):
        companion_kernel(a, rand(5), rand(4), 3)
    with pytest.raises(ValueError, match="length"):
        companion_kernel(a, a, a, 0)
    with pytest.raises(ValueError, match="unknown backend .magic."):
        companion_kernel(a, a, a, 3, backend="magic")


@pytest.mark.parametrize("d,length", [(1, 1), (4, 1), (4, 3), (5, 9), (8, 30)])
def test_final_state_matches_the_recurrence(d, length):
    a, b = rand(2, d, seed=20, scale=0.3), rand(2, d, seed=21)
    u, s = rand(3, 2, length, seed=22), rand(3, 2, d, seed=23)
    A = companion_matrix(a)
    x, ws = s.clone(), []
    for t in range(length):
        x = (A @ x[..., None])[..., 0] + b * u[..., t : t + 1]
        ws.append(x[..., -1])
    torch.testing.assert_close(companion_final_state(a, b, u, torch.stack(ws, -1), s), x, rtol=1e-10, atol=1e-10)


def test_capped_a_keeps_eigenvalues_inside_the_unit_disk():
    a = capped_a(rand(50, 8, seed=30, scale=3.0), 0.99)
    assert (a.abs().sum(-1) <= 0.99 + 1e-12).all()
    assert torch.linalg.eigvals(companion_matrix(a)).abs().max() < 1
    small = rand(8, seed=31, scale=0.01)
    torch.testing.assert_close(capped_a(small, 0.99), small)  # already inside: untouched


def test_closed_loop_rollout_matches_explicit_recurrence():
    torch.manual_seed(0)
    dec = ClosedLoopCompanionSSM(d_model=3, d_state=5, horizon=7).double()
    with torch.no_grad():
        dec.k.mul_(30)  # make the feedback matter
    u = rand(2, 9, 3, seed=40)
    out = dec(u)
    a = capped_a(dec.a, dec.max_a_norm).detach()
    A = companion_matrix(a)
    b, c, k = dec.b.detach(), dec.c.detach(), dec.k.detach()
    x = torch.zeros(2, 3, 5, dtype=torch.float64)
    for t in range(9):  # open loop over the lag
        x = torch.einsum("hij,bhj->bhi", A, x) + b * u[:, t, :, None]
        torch.testing.assert_close(out.lag_output[:, t], (c * x).sum(-1), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(out.input_prediction[:, t], (k * x).sum(-1), rtol=1e-9, atol=1e-9)
    for h in range(7):  # closed loop: the next input is kᵀx
        torch.testing.assert_close(out.forecast[:, h], (c * x).sum(-1), rtol=1e-9, atol=1e-9)
        x = torch.einsum("hij,bhj->bhi", A, x) + b * (k * x).sum(-1, keepdim=True)


def test_closed_loop_companion_represents_any_ar_process():
    # a = 0, b = e_1 makes the state the last d inputs; c = k = φ then rolls the AR(p) recursion
    phi = torch.tensor([0.5, -0.3, 0.2, 0.25], dtype=torch.float64)
    p, horizon = 4, 12
    dec = ClosedLoopCompanionSSM(d_model=1, d_state=p, horizon=horizon, max_a_norm=None).double()
    with torch.no_grad():
        dec.a.zero_()
        dec.b.zero_()
        dec.b[0, 0] = 1
        dec.c.copy_(phi[None])
        dec.k.copy_(phi[None])
    history = rand(1, 10, 1, seed=50)
    series = history[0, :, 0].tolist()
    for _ in range(horizon):
        series.append(float(phi @ torch.tensor(series[-1 : -p - 1 : -1], dtype=torch.float64)))
    torch.testing.assert_close(dec(history).forecast[0, :, 0], torch.tensor(series[10:], dtype=torch.float64))


@pytest.mark.parametrize("d,length", [(1, 3), (4, 6), (5, 30)])
def test_final_state_reads_only_the_last_d_plus_1_positions(d, length):
    """The closed-loop decoder passes only these tails (it computes w there alone)."""
    a, b = rand(2, d, seed=60, scale=0.3), rand(2, d, seed=61)
    u, w = rand(3, 2, length, seed=62), rand(3, 2, length, seed=63)
    full = companion_final_state(a, b, u, w, None)
    torch.testing.assert_close(companion_final_state(a, b, u[..., -d - 1 :], w[..., -d - 1 :], None), full,
                               rtol=1e-12, atol=1e-12)
    # one position fewer loses w_{L−1−d}, which the state still reads
    assert not torch.allclose(companion_final_state(a, b, u[..., -d:], w[..., -d:], None), full)


@pytest.mark.parametrize("lag", [1, 4, 5, 6, 7, 8, 23])
def test_closed_loop_forward_and_gradients_match_the_recurrence(lag):
    """d_state 5: lags up to d + 1 take the full three-kernel convolution, longer ones compute the state
    coordinate w over the last d + 1 positions only; both against a step-by-step loop, values and gradients."""
    torch.manual_seed(1)
    dec = ClosedLoopCompanionSSM(d_model=3, d_state=5, horizon=6).double()
    with torch.no_grad():
        dec.k.mul_(30)  # make the feedback matter
    u = rand(2, lag, 3, seed=70).requires_grad_()
    weights = [rand(2, n, 3, seed=71 + i) for i, n in enumerate((6, lag, lag))]

    def loss(out):
        return sum((w_ * t).sum() for w_, t in zip(weights, (out.forecast, out.lag_output, out.input_prediction)))

    params = [u, dec.a, dec.b, dec.c, dec.k]
    fast = dec(u)
    fast_grads = torch.autograd.grad(loss(fast), params)

    A = companion_matrix(capped_a(dec.a, dec.max_a_norm))
    x = torch.zeros(2, 3, 5, dtype=torch.float64)
    lag_out, pred, forecast = [], [], []
    for t in range(lag):
        x = torch.einsum("hij,bhj->bhi", A, x) + dec.b * u[:, t, :, None]
        lag_out.append((dec.c * x).sum(-1))
        pred.append((dec.k * x).sum(-1))
    for _ in range(6):
        forecast.append((dec.c * x).sum(-1))
        x = torch.einsum("hij,bhj->bhi", A, x) + dec.b * (dec.k * x).sum(-1, keepdim=True)
    loop = [torch.stack(t, 1) for t in (forecast, lag_out, pred)]
    for got, want in zip((fast.forecast, fast.lag_output, fast.input_prediction), loop):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    loop_grads = torch.autograd.grad(sum((w_ * t).sum() for w_, t in zip(weights, loop)), params)
    for got, want in zip(fast_grads, loop_grads):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8)


def test_matrix_power_of_a_symbolic_length_equals_linalg():
    """Compiled with a dynamic length, A^ℓ is squared through a fixed 31 bits of ℓ (one graph for every length):
    it equals torch.linalg.matrix_power, values and gradients, for ℓ = 2 (one bit) to a long 1,000 (ℓ = 1 gets a
    graph of its own: Dynamo specialises sizes 0 and 1)."""
    from torch._dynamo.testing import CompileCounter

    from ssmzoo.ops.companion.fft import matrix_power

    torch.manual_seed(0)
    A = (torch.randn(3, 5, 5, dtype=torch.float64) * 0.25).requires_grad_()
    counter = CompileCounter()
    f = torch.compile(lambda A, x: matrix_power(A, x.shape[0]), backend=counter, fullgraph=True)
    for n in (2, 3, 7, 64, 1000):
        x = torch.zeros(n)
        torch._dynamo.mark_dynamic(x, 0)
        got, want = f(A, x), torch.linalg.matrix_power(A, n)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        g = torch.randn_like(want)
        torch.testing.assert_close(torch.autograd.grad((got * g).sum(), A)[0],
                                   torch.autograd.grad((want * g).sum(), A)[0], rtol=1e-9, atol=1e-12)
    assert counter.frame_count == 1
    torch._dynamo.reset()
