"""HiPPO matrices: closed forms, their DPLR decompositions, and a functional check of LegT
(its state reconstructs the recent window of a signal through the Legendre expansion)."""

from __future__ import annotations

import math

import pytest
import torch

from ssmzoo.ops.hippo import MEASURES, diagonal_init, dplr_dense, legt, nplr, transition


def test_small_matrices_by_hand():
    s3 = math.sqrt(3)
    a, b = transition("legs", 2)
    torch.testing.assert_close(a, torch.tensor([[-1.0, 0.0], [-s3, -2.0]], dtype=torch.float64))
    torch.testing.assert_close(b, torch.tensor([1.0, s3], dtype=torch.float64))
    a, b = transition("legt", 2)
    torch.testing.assert_close(a, torch.tensor([[-1.0, s3], [-s3, -3.0]], dtype=torch.float64))
    a, b = transition("lagt", 2)
    torch.testing.assert_close(a, torch.tensor([[-0.5, 0.0], [-1.0, -0.5]], dtype=torch.float64))
    torch.testing.assert_close(b, torch.ones(2, dtype=torch.float64))
    a, b = transition("fout", 4)
    r2 = math.sqrt(2)
    torch.testing.assert_close(b, torch.tensor([1.0, 0.0, r2, 0.0], dtype=torch.float64))
    expected = -b[:, None] * b[None, :]
    expected[2, 3], expected[3, 2] = -math.pi, math.pi  # frequency-1 rotation of the (cos, sin) pair
    torch.testing.assert_close(a, expected)


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("n", [2, 8, 64, 256])
def test_dplr_reconstructs_the_dense_matrix(measure, n):
    a, b = transition(measure, n)
    d = nplr(measure, n)
    assert d.lam.shape == (n // 2,) and d.v.shape == (n, n // 2) and d.b.shape == (n // 2,)
    rebuilt = dplr_dense(d.lam, d.p, d.v)
    assert (rebuilt - a).abs().max() < 1e-8
    v_full = torch.cat([d.v, d.v.conj()], 1)
    assert (v_full.conj().T @ v_full - torch.eye(n)).abs().max() < 1e-8, "V is not unitary"
    assert (v_full @ torch.cat([d.b, d.b.conj()]) - b).abs().max() < 1e-8
    # the normal part is a multiple of I plus skew: one real part for every eigenvalue
    assert (d.lam.real - d.lam.real[0]).abs().max() < 1e-10
    assert d.p.shape[0] == (2 if measure == "legt" else 1)


def test_dplr_rejects_bad_sizes():
    with pytest.raises(ValueError, match="even"):
        nplr("legs", 7)
    with pytest.raises(ValueError, match="measure"):
        transition("legx", 4)


def test_s4d_legs_init_is_the_dplr_diagonal():
    d = nplr("legs", 16)
    torch.testing.assert_close(torch.sort(d.lam.imag).values, diagonal_init("legs", 16).imag)


def _legendre(n: int, x: torch.Tensor) -> torch.Tensor:
    """P_0..P_{n-1} at x, by Bonnet's recursion: (k+1) P_{k+1} = (2k+1) x P_k - k P_{k-1}."""
    out = [torch.ones_like(x), x]
    for k in range(1, n - 1):
        out.append(((2 * k + 1) * x * out[k] - k * out[k - 1]) / (k + 1))
    return torch.stack(out[:n])


def _legt_window_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Read f(t) = sin 3t + cos(7t)/2 for t in [0, 3] with the bilinear recurrence (Δ = 1e-3), then
    evaluate Σ_n x_n sqrt(2n+1) P_n(2s - 1) against f(2 + s), s in [0, 1] (the last window θ = 1)."""
    n, dt, steps = a.shape[0], 1e-3, 3000
    eye = torch.eye(n, dtype=torch.float64)
    a_bar = torch.linalg.solve(eye - dt / 2 * a, eye + dt / 2 * a)
    b_bar = torch.linalg.solve(eye - dt / 2 * a, dt * b)
    f = lambda t: torch.sin(3 * t) + 0.5 * torch.cos(7 * t)
    u = f((torch.arange(steps, dtype=torch.float64) + 0.5) * dt)
    x = torch.zeros(n, dtype=torch.float64)
    for t in range(steps):
        x = a_bar @ x + b_bar * u[t]
    s = torch.linspace(0, 1, 201, dtype=torch.float64)
    basis = _legendre(n, 2 * s - 1) * torch.sqrt(2 * torch.arange(n, dtype=torch.float64) + 1)[:, None]
    return float((x @ basis - f(2 + s)).abs().max())


def test_legt_state_reconstructs_the_recent_window():
    a, b = legt(32)
    assert _legt_window_error(a, b) < 1e-3  # measured 1.2e-5
    # the DPLR pieces define the same memory
    d = nplr("legt", 32)
    v_full = torch.cat([d.v, d.v.conj()], 1)
    a2 = dplr_dense(d.lam, d.p, d.v).real
    b2 = (v_full @ torch.cat([d.b, d.b.conj()])).real
    assert _legt_window_error(a2, b2) < 1e-3


@pytest.mark.parametrize("perturb", ["entry", "sign", "legs"])
def test_window_reconstruction_fails_with_a_wrong_matrix(perturb):
    a, b = legt(32)
    if perturb == "entry":
        a = a.clone()
        a[3, 1] *= 1.05
    elif perturb == "sign":  # the (-1)^(n-k) above the diagonal dropped
        q = torch.sqrt(2 * torch.arange(32, dtype=torch.float64) + 1)
        a = -q[:, None] * q[None, :]
    else:
        a, b = transition("legs", 32)
    assert _legt_window_error(a, b) > 1e-2
