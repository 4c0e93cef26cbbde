"""S5 and the LRU beyond the conformance suite: S5's initialisation and discretisation against the dense
continuous-time system they diagonalise, the LRU's ring initialisation and equations, and the optimiser
tags of both papers' recipes."""

from __future__ import annotations

import math

import pytest
import torch

from ssmzoo import LRU, S5
from ssmzoo.layers.s5 import hippo_n_eig
from ssmzoo.ops.hippo import legs
from ssmzoo.optim import param_groups


def hippo_n(n):
    a, _ = legs(n)
    p = torch.sqrt(torch.arange(n, dtype=torch.float64) + 0.5)
    return a + p[:, None] * p[None, :]


@pytest.mark.parametrize("n", [2, 8, 16])
def test_hippo_n_eig_diagonalises_hippo_n(n):
    lam, v = hippo_n_eig(n)
    v_full, lam_full = torch.cat([v, v.conj()], 1), torch.cat([lam, lam.conj()])
    torch.testing.assert_close(v_full @ torch.diag(lam_full) @ v_full.conj().T, hippo_n(n).to(torch.complex128))
    torch.testing.assert_close(lam.real, torch.full_like(lam.real, -0.5))
    assert (lam.imag < 0).all()  # the half S5's code keeps


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_s5_is_the_discretised_block_diagonal_hippo_n_system(discretization):
    # With one timescale Δ for every state and real B, C, S5's diagonal, conjugate-symmetric recurrence must
    # equal the dense real system (A = J copies of HiPPO-N) discretised directly, computed here with a matrix
    # exponential in the original basis.
    torch.manual_seed(0)
    h, p, blocks, dt = 3, 8, 2, 0.07
    layer = S5(h, d_state=p, blocks=blocks, discretization=discretization).double()
    layer.out = torch.nn.Identity()  # compare the SSM's output y itself
    lam, v = hippo_n_eig(p // blocks)
    v_bd = torch.block_diag(*[v] * blocks)  # (P, P/2)
    B, C = torch.randn(p, h, dtype=torch.float64), torch.randn(h, p, dtype=torch.float64)
    with torch.no_grad():
        layer.B.copy_(torch.view_as_real(v_bd.conj().T @ B.to(torch.complex128)))
        layer.C[0].copy_(torch.view_as_real(C.to(torch.complex128) @ v_bd))
        layer.log_step.fill_(math.log(dt))
        layer.Lambda_re.copy_(lam.real.repeat(blocks))  # the float64 eigenvalues (parameters start as float32)
        layer.Lambda_im.copy_(lam.imag.repeat(blocks))
    a = torch.block_diag(*[hippo_n(p // blocks)] * blocks)
    eye = torch.eye(p, dtype=torch.float64)
    if discretization == "zoh":
        a_bar = torch.linalg.matrix_exp(a * dt)
        b_bar = torch.linalg.solve(a, a_bar - eye) @ B
    else:
        inv = torch.linalg.inv(eye - dt / 2 * a)
        a_bar, b_bar = inv @ (eye + dt / 2 * a), inv @ B * dt
    x = torch.randn(2, 9, h, dtype=torch.float64)
    state = torch.zeros(2, p, dtype=torch.float64)
    want = []
    for t in range(x.shape[1]):
        state = state @ a_bar.T + x[:, t] @ b_bar.T
        want.append(state @ C.T + layer.D * x[:, t])
    torch.testing.assert_close(layer(x), torch.stack(want, 1), rtol=1e-9, atol=1e-9)


def test_s5_bidirectional_adds_the_anticausal_scan():
    torch.manual_seed(1)
    layer = S5(4, d_state=6, bidirectional=True).double()
    layer.out = torch.nn.Identity()
    forward_only = S5(4, d_state=6).double()
    forward_only.out = torch.nn.Identity()
    forward_only.load_state_dict({k: (v[:1] if k == "C" else v) for k, v in layer.state_dict().items()})
    backward_only = S5(4, d_state=6).double()
    backward_only.out = torch.nn.Identity()
    backward_only.load_state_dict({k: (v[1:] if k == "C" else v) for k, v in layer.state_dict().items()})
    x = torch.randn(2, 7, 4, dtype=torch.float64)
    # the backward scan is the causal scan of the time-reversed input, reversed; D u is counted once
    want = forward_only(x) + backward_only(x.flip(1)).flip(1) - layer.D * x
    torch.testing.assert_close(layer(x), want)


def test_lru_ring_initialisation():
    torch.manual_seed(0)
    r_min, r_max, max_phase = 0.4, 0.9, math.pi / 10
    layer = LRU(4, d_state=4000, r_min=r_min, r_max=r_max, max_phase=max_phase).double()
    lam, b = layer._discrete(torch.complex128)
    modulus, phase = lam.abs(), lam.angle()
    assert modulus.min() >= r_min and modulus.max() <= r_max
    assert phase.min() >= 0 and phase.max() <= max_phase
    # |λ|² is uniform on [r_min², r_max²] (λ uniform in area on the ring): its mean within 4 standard errors
    mean, sd = (r_min ** 2 + r_max ** 2) / 2, (r_max ** 2 - r_min ** 2) / math.sqrt(12)
    assert abs((modulus ** 2).mean().item() - mean) < 4 * sd / math.sqrt(4000)
    # γ normalisation: γ = sqrt(1 - |λ|²) at init
    torch.testing.assert_close(torch.exp(layer.gamma_log.double()), torch.sqrt(1 - modulus ** 2), rtol=1e-6, atol=1e-6)


def test_lru_follows_its_equations():
    torch.manual_seed(2)
    layer = LRU(3, d_state=5, r_min=0.5, r_max=0.99).double()
    layer.out = torch.nn.Identity()
    nu, theta, gamma = (torch.exp(t) for t in (layer.nu_log, layer.theta_log, layer.gamma_log))
    lam = torch.exp(-nu + 1j * theta)
    B = torch.view_as_complex(layer.B) * gamma[:, None]
    C = torch.view_as_complex(layer.C[0])
    x = torch.randn(2, 8, 3, dtype=torch.float64)
    state = torch.zeros(2, 5, dtype=torch.complex128)
    want = []
    for t in range(8):
        state = lam * state + x[:, t].to(torch.complex128) @ B.T
        want.append((state @ C.T).real + layer.D * x[:, t])
    torch.testing.assert_close(layer(x), torch.stack(want, 1).detach())


def _group_of(model, lr=0.01, weight_decay=0.05):
    return {name: (g["lr"], g["weight_decay"]) for g in param_groups(model, lr, weight_decay) for name in g["names"]}


def test_s5_optimiser_configs():
    standard = _group_of(S5(8, d_state=8, lr=1e-3))
    for name in ("Lambda_re", "Lambda_im", "log_step", "B"):
        assert standard[name] == (1e-3, 0.0), name
    assert standard["C"] == (0.01, 0.05)
    fast = _group_of(S5(8, d_state=8, lr=1e-3, opt_config="BfastandCdecay", dt_global=True))
    assert fast["B"] == (0.01, 0.05) and fast["Lambda_re"] == (1e-3, 0.0) and fast["log_step"] == (0.01, 0.0)
    decay = _group_of(S5(8, d_state=8, lr=1e-3, opt_config="BandCdecay"))
    assert decay["B"] == (1e-3, 0.05)


def test_lru_optimiser_tags():
    groups = _group_of(LRU(8, d_state=8, lr=0.002))
    for name in ("nu_log", "theta_log", "gamma_log", "B"):
        assert groups[name] == (0.002, 0.0), name
    assert groups["C"] == (0.01, 0.05)


@pytest.mark.parametrize("bad, message", [
    (dict(d_state=7), "d_state must be an even int"),
    (dict(d_state=8, blocks=3), "blocks must divide"),
    (dict(d_state=12, blocks=4), "blocks must divide"),  # blocks of 3: odd
    (dict(dt_min=0.2, dt_max=0.1), "need 0 < dt_min <= dt_max"),
    (dict(opt_config="fast"), "opt_config must be one of"),
])
def test_s5_rejects_bad_arguments(bad, message):
    with pytest.raises(ValueError, match=f"S5: {message}"):
        S5(8, **bad)


@pytest.mark.parametrize("bad, message", [
    (dict(r_min=0.9, r_max=0.5), "r_min < r_max"),
    (dict(r_max=1.5), "r_max <= 1"),
    (dict(max_phase=0.0), "max_phase must be"),
])
def test_lru_rejects_bad_arguments(bad, message):
    with pytest.raises(ValueError, match=f"LRU: .*{message}"):
        LRU(8, **bad)


@pytest.mark.parametrize("cls", [S5, LRU])
def test_runs_under_bfloat16_autocast(cls):
    # complex numbers have no bfloat16 form: the recurrence must run outside autocast (this raised before)
    torch.manual_seed(0)
    layer = cls(8, d_state=8, bidirectional=True)
    x = torch.randn(2, 9, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    torch.testing.assert_close(y.float(), layer(x), rtol=0.05, atol=0.05)
