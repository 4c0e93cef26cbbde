"""The Mamba3 layer beyond the conformance suite (which runs its SISO configuration): mamba-ssm's state-dict layout
loads by name and gives the output of mamba-ssm's module forward (transcribed below, with the op's reference for
its kernels), and the MIMO and output-norm variants keep the layer contract (step == forward, continuation,
packed documents, gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from ssmzoo import Mamba3, Segments
from ssmzoo.ops.mamba3 import Mamba3Inputs, mamba3_reference

D_MODEL = 8
VARIANTS = {
    "siso": dict(),
    "siso-outproj_norm": dict(is_outproj_norm=True),
    "mimo": dict(is_mimo=True, mimo_rank=2),
    "mimo-outproj_norm": dict(is_mimo=True, mimo_rank=3, is_outproj_norm=True),
    "siso-full-rope": dict(rope_fraction=1.0, ngroups=1),
}
SMALL = dict(d_state=8, expand=2, headdim=4, ngroups=2, chunk_size=4)


def make(variant: str, dtype=torch.float64, seed=0) -> Mamba3:
    torch.manual_seed(seed)
    layer = Mamba3(D_MODEL, **{**SMALL, **VARIANTS[variant]}).to(dtype)
    with torch.no_grad():  # move every parameter off its initial value (ones, zeros) so each one matters
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer


def rand(b, length, dtype=torch.float64, seed=1):
    return torch.randn(b, length, D_MODEL, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# -- mamba-ssm's layout -----------------------------------------------------------------------------
def mamba_ssm_state_dict(d_model, d_state, expand, headdim, ngroups, rope_fraction=0.5, is_mimo=False, mimo_rank=4,
                         is_outproj_norm=False, seed=0) -> dict[str, torch.Tensor]:
    """A random state dict with the names and shapes of mamba_ssm.modules.mamba3.Mamba3's parameters (read from
    its __init__; mamba-ssm does not install without CUDA, so it is built by hand)."""
    g = torch.Generator().manual_seed(seed)
    d_inner = expand * d_model
    nheads = d_inner // headdim
    R = mimo_rank if is_mimo else 1
    split = int(d_state * rope_fraction)
    split -= split % 2
    n_angles = split // 2
    d_in_proj = 2 * d_inner + 2 * d_state * ngroups * R + 3 * nheads + n_angles

    def rnd(*shape, scale=0.5, offset=0.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale + offset

    sd = {"in_proj.weight": rnd(d_in_proj, d_model), "dt_bias": rnd(nheads), "B_bias": rnd(nheads, R, d_state, offset=1),
          "C_bias": rnd(nheads, R, d_state, offset=1), "B_norm.weight": rnd(d_state, offset=1),
          "C_norm.weight": rnd(d_state, offset=1)}
    if is_mimo:
        sd.update({name: rnd(nheads, R, headdim, offset=1.0 / R) for name in ("mimo_x", "mimo_z", "mimo_o")})
    sd["D"] = rnd(nheads, offset=1)
    if is_outproj_norm:
        sd["norm.weight"] = rnd(d_inner, offset=1)
    sd["out_proj.weight"] = rnd(d_model, d_inner)
    return sd


def _rms(x, weight, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def mamba_ssm_forward(sd, u, d_state, expand, headdim, ngroups, rope_fraction=0.5, is_mimo=False, mimo_rank=4,
                      is_outproj_norm=False, A_floor=1e-4):
    """mamba_ssm.modules.mamba3.Mamba3.forward transcribed (no inference cache), its fused kernels
    (mamba3_siso_combined / mamba3_mimo) computed by the op's reference in their argument convention:
    ADT = A·DT and DT as (batch, nheads, length), Trap raw, Q = C, K = B, V = x, Q_bias = C_bias, K_bias = B_bias."""
    batch, seqlen, d_model = u.shape
    d_inner = expand * d_model
    nheads = d_inner // headdim
    R = mimo_rank if is_mimo else 1
    split = int(d_state * rope_fraction)
    split -= split % 2
    n_angles = split // 2
    out = u @ sd["in_proj.weight"].T
    z, x, B, C, dd_dt, dd_A, trap, angles = torch.split(
        out, [d_inner, d_inner, d_state * ngroups * R, d_state * ngroups * R, nheads, nheads, nheads, n_angles], dim=-1)
    z = rearrange(z, "b l (h p) -> b l h p", p=headdim)
    x = rearrange(x, "b l (h p) -> b l h p", p=headdim)
    B = rearrange(B, "b l (r g n) -> b l r g n", r=R, g=ngroups)
    C = rearrange(C, "b l (r g n) -> b l r g n", r=R, g=ngroups)
    trap = rearrange(trap, "b l h -> b h l")
    neg, pos = dd_A.clamp_max(0), dd_A.clamp_min(0)
    _A = torch.clamp(-(pos + torch.reciprocal(1 - neg)), max=-A_floor)
    DT = F.softplus(dd_dt + sd["dt_bias"])
    ADT = rearrange(_A * DT, "b l n -> b n l")
    DT = rearrange(DT, "b l n -> b n l")
    angles = angles.unsqueeze(-2).expand(-1, -1, nheads, -1)
    B = _rms(B, sd["B_norm.weight"])
    C = _rms(C, sd["C_norm.weight"])

    def kernel(Q, K, V, Q_bias, K_bias, Z, MIMO_V=None, MIMO_Z=None, MIMO_Out=None):
        inputs = Mamba3Inputs(V, rearrange(DT, "b h l -> b l h"), rearrange(ADT / DT, "b h l -> b l h"), K, Q,
                              rearrange(trap, "b h l -> b l h"), angles, K_bias, Q_bias, sd["D"], Z, MIMO_V, MIMO_Z,
                              MIMO_Out)
        return mamba3_reference(inputs)

    if is_mimo:
        outproj_in_kernel = not is_outproj_norm
        y = kernel(C, B, x, sd["C_bias"], sd["B_bias"], z if outproj_in_kernel else None, sd["mimo_x"],
                   sd["mimo_z"] if outproj_in_kernel else None, sd["mimo_o"] if outproj_in_kernel else None)
        if is_outproj_norm:
            zr = torch.einsum("blhp,hrp->blrhp", z, sd["mimo_z"])
            y = _rms(y, rearrange(sd["norm.weight"], "(h p) -> h p", p=headdim)) * F.silu(zr)
            y = torch.einsum("blrhp,hrp->blhp", y, sd["mimo_o"])
        y = rearrange(y, "b l h p -> b l (h p)")
    else:
        y = kernel(C.squeeze(2), B.squeeze(2), x, sd["C_bias"].squeeze(1), sd["B_bias"].squeeze(1),
                   z if not is_outproj_norm else None)
        if is_outproj_norm:  # RMSNormGated(d_inner, group_size=headdim, norm_before_gate=True)
            y = _rms(y, rearrange(sd["norm.weight"], "(h p) -> h p", p=headdim)) * F.silu(z)
        y = rearrange(y, "b l h p -> b l (h p)")
    return y @ sd["out_proj.weight"].T


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_mamba_ssm_state_dict_loads_by_name_and_gives_its_output(variant):
    config = {**SMALL, **VARIANTS[variant]}
    config.pop("chunk_size")
    layer = Mamba3(D_MODEL, **config, chunk_size=3).double()
    sd = mamba_ssm_state_dict(D_MODEL, **config)
    assert set(layer.state_dict()) == set(sd)
    layer.load_state_dict(sd, strict=True)
    u = rand(2, 11)
    torch.testing.assert_close(layer(u), mamba_ssm_forward(sd, u, **config), rtol=1e-10, atol=1e-10)
    # and the same token by token (the decode path)
    state, outs = layer.init_state(2), []
    for t in range(u.shape[1]):
        y_t, state = layer.step(u[:, t], state)
        outs.append(y_t)
    torch.testing.assert_close(torch.stack(outs, 1), mamba_ssm_forward(sd, u, **config), rtol=1e-10, atol=1e-10)


def test_initial_parameters_are_mamba_ssms():
    torch.manual_seed(0)
    layer = Mamba3(16, d_state=8, headdim=8, is_mimo=True, mimo_rank=2)
    assert torch.equal(layer.B_bias, torch.ones(4, 2, 8)) and torch.equal(layer.C_bias, torch.ones(4, 2, 8))
    assert torch.equal(layer.mimo_x, torch.full((4, 2, 8), 0.5)) and torch.equal(layer.mimo_o, layer.mimo_x)
    assert torch.equal(layer.mimo_z, torch.ones(4, 2, 8)) and torch.equal(layer.D, torch.ones(4))
    dt = F.softplus(layer.dt_bias)
    assert bool(((dt >= 1e-3 - 1e-7) & (dt <= 0.1 + 1e-7)).all())
    assert layer.num_rope_angles == 2 and layer.in_proj.weight.shape == (2 * 32 + 2 * 8 * 2 + 3 * 4 + 2, 16)


# -- the contract for the variants the conformance suite does not build ----------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_step_and_continuation_equal_forward(variant):
    layer = make(variant)
    x = rand(2, 19)
    y, final = layer(x, return_state=True)
    state, outs = layer.init_state(2), []
    for t in range(x.shape[1]):
        y_t, state = layer.step(x[:, t], state)
        outs.append(y_t)
    torch.testing.assert_close(torch.stack(outs, 1), y, rtol=1e-9, atol=1e-9)
    y1, s1 = layer(x[:, :7], return_state=True)
    y2, s2 = layer(x[:, 7:], state=s1, return_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-9, atol=1e-9)
    for a, b, c in zip(state, s2, final):
        torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(b, c, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_packed_documents_equal_each_alone(variant):
    layer = make(variant)
    segments = Segments.from_lengths([[5, 1, 9], [15]], 15)
    x = rand(2, 15).requires_grad_()
    with torch.no_grad():
        states = [layer(rand(1, 3, seed=10 + k), return_state=True)[1] for k in range(segments.num_docs)]
    stacked = type(states[0])(*(torch.cat(parts) for parts in zip(*states)))
    y, final = layer(x, state=stacked, segments=segments, return_state=True)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=y.dtype)
    (gx,) = torch.autograd.grad((y * weights).sum(), x)
    xa = x.detach().clone().requires_grad_()
    loss = 0
    for k, s in enumerate(segments.spans):
        y_k, final_k = layer(xa[s.row:s.row + 1, s.start:s.stop], state=states[k], return_state=True)
        torch.testing.assert_close(y[s.row:s.row + 1, s.start:s.stop], y_k, rtol=1e-9, atol=1e-9)
        for a, b in zip(final, final_k):
            torch.testing.assert_close(a[k:k + 1], b, rtol=1e-9, atol=1e-9)
        loss = loss + (y_k * weights[s.row:s.row + 1, s.start:s.stop]).sum()
    (ga,) = torch.autograd.grad(loss, xa)
    torch.testing.assert_close(gx, ga, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradients_reach_every_parameter(variant):
    layer = make(variant)
    y = layer(rand(2, 9))
    (y * torch.randn_like(y)).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_mimo_close_to_float32(dtype):
    layer = make("mimo-outproj_norm", dtype=torch.float32)
    x = rand(2, 12, torch.float32)
    want = layer(x)
    got = layer.to(dtype)(x.to(dtype))
    assert got.dtype == dtype and layer.init_state(2, dtype=dtype).ssm.dtype == torch.float32
    torch.testing.assert_close(got.float(), want, rtol=0.1, atol=0.1)


def test_constructor_errors_name_the_argument():
    for kwargs, arg in [(dict(rope_fraction=0.25), "rope_fraction"), (dict(headdim=5), "headdim"),
                        (dict(ngroups=3), "ngroups"), (dict(d_state=1), "d_state"), (dict(dt_min=0.5), "dt_min"),
                        (dict(mamba3_backend="nope"), "mamba3_backend"), (dict(A_floor=-1.0), "A_floor")]:
        with pytest.raises(ValueError, match=arg):
            Mamba3(D_MODEL, **{**SMALL, **kwargs})
