"""RMSNorm (plain, grouped, gated in both orders) and MLP/GLU against plain written-out references,
forward and backward in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssmzoo.modules import MLP, RMSNorm

F64 = torch.float64


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def norm_reference(x, weight, eps, group_size, z=None, norm_before_gate=False):
    """Row by row and group by group, with the root mean square as ‖x_g‖ / sqrt(group_size)."""
    if z is not None and not norm_before_gate:
        x = x * z * torch.sigmoid(z)
    rows = x.reshape(-1, x.shape[-1])
    out = torch.empty_like(rows)
    for i, row in enumerate(rows):
        for start in range(0, row.shape[0], group_size):
            g = row[start : start + group_size]
            rms = torch.sqrt(torch.linalg.vector_norm(g) ** 2 / group_size + eps)
            out[i, start : start + group_size] = g / rms
    out = out.reshape(x.shape) * weight
    if z is not None and norm_before_gate:
        out = out * z * torch.sigmoid(z)
    return out


def test_plain_rmsnorm_equals_torch_rms_norm():
    norm = RMSNorm(6, eps=1e-5).double()
    with torch.no_grad():
        norm.weight.copy_(rand(6, seed=1))
    x = rand(2, 3, 6)
    torch.testing.assert_close(norm(x), F.rms_norm(x, (6,), norm.weight, eps=1e-5))
    torch.testing.assert_close(norm(x), norm_reference(x, norm.weight, 1e-5, 6))
    assert list(dict(norm.named_parameters())) == ["weight"]  # nn.RMSNorm's and mamba-ssm's name


@pytest.mark.parametrize("group_size", [None, 2, 3])
@pytest.mark.parametrize("gate", [None, "before", "after"])
def test_rmsnorm_forms_equal_the_reference_forward_and_backward(group_size, gate):
    norm = RMSNorm(6, eps=1e-3, group_size=group_size, norm_before_gate=gate == "after").double()
    with torch.no_grad():
        norm.weight.copy_(rand(6, seed=1))
    x, z = rand(2, 5, 6, seed=2).requires_grad_(), rand(2, 5, 6, seed=3).requires_grad_()
    gate_arg = None if gate is None else z
    y = norm(x, gate_arg)
    want = norm_reference(x, norm.weight, 1e-3, group_size or 6, gate_arg, gate == "after")
    torch.testing.assert_close(y, want)
    probe = rand(2, 5, 6, seed=4)
    leaves = [x, norm.weight] + ([z] if gate else [])
    got = torch.autograd.grad((y * probe).sum(), leaves)
    exp = torch.autograd.grad((want * probe).sum(), leaves)
    for a, b in zip(got, exp):
        torch.testing.assert_close(a, b)


def test_gate_order_matters():
    x, z = rand(3, 4), rand(3, 4, seed=1)
    before, after = RMSNorm(4).double(), RMSNorm(4, norm_before_gate=True).double()
    assert not torch.allclose(before(x, z), after(x, z))


def test_half_inputs_are_normalised_in_float32():
    norm = RMSNorm(8)
    x = 300 * torch.randn(4, 8)  # x² overflows float16 (max 65504)
    y = norm(x.half())
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), norm(x), rtol=2e-3, atol=2e-3)


def test_rmsnorm_bad_arguments():
    with pytest.raises(ValueError, match="group_size"):
        RMSNorm(6, group_size=4)
    with pytest.raises(ValueError, match="dim"):
        RMSNorm(0)
    with pytest.raises(ValueError, match="eps"):
        RMSNorm(4, eps=-1.0)
    with pytest.raises(ValueError, match=r"dim=4"):
        RMSNorm(4)(torch.randn(2, 5))
    with pytest.raises(ValueError, match="gate z"):
        RMSNorm(4)(torch.randn(2, 4), torch.randn(2, 3))


def test_mlp_plain_and_gated_forms():
    x = rand(2, 3, 4)
    plain = MLP(4, 6, activation="gelu").double()
    want = F.linear(F.gelu(F.linear(x, plain.up.weight, plain.up.bias)), plain.down.weight, plain.down.bias)
    torch.testing.assert_close(plain(x), want)
    # activation "sigmoid", gated: nn.GLU (first half times sigmoid of the second), the old FeedForward "glu"
    glu = MLP(4, 6, activation="sigmoid", gated=True).double()
    want = glu.down(torch.nn.GLU(dim=-1)(glu.up(x)))
    torch.testing.assert_close(glu(x), want)
    swiglu = MLP(4, 6, activation="silu", gated=True, bias=False).double()
    a, g = F.linear(x, swiglu.up.weight).chunk(2, -1)
    torch.testing.assert_close(swiglu(x), F.linear(a * F.silu(g), swiglu.down.weight))
    assert swiglu.up.bias is None and swiglu.up.weight.shape == (12, 4)


def test_mlp_bad_arguments():
    for args, match in [(dict(hidden=0), "hidden"), (dict(activation="tanh"), "activation"),
                        (dict(dropout=1.0), "dropout"), (dict(gated="yes"), "gated")]:
        with pytest.raises(ValueError, match=match):
            MLP(**{"d_model": 4, "hidden": 8, **args})
