"""ssd_update, SSD's one-token step: stepping through a sequence equals the ssd reference (outputs and final
state) in every configuration the op has, its dtypes are the op's, and bad arguments are named."""

from __future__ import annotations

import pytest
import torch

from ssmzoo.ops.ssd import ssd, ssd_update


def inputs(batch=2, length=9, heads=4, headdim=3, groups=2, d_state=5, dtype=torch.float64, seed=0, D_per_channel=False):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, offset=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + offset).to(dtype)

    return dict(
        x=rnd(batch, length, heads, headdim), dt=rnd(batch, length, heads, scale=0.5, offset=-0.5),
        A=-(torch.rand(heads, generator=g, dtype=torch.float64) * 1.5 + 0.1).to(dtype),
        B=rnd(batch, length, groups, d_state), C=rnd(batch, length, groups, d_state),
        D=rnd(heads, headdim) if D_per_channel else rnd(heads), z=rnd(batch, length, heads, headdim),
        dt_bias=rnd(heads, scale=0.3), initial_state=rnd(batch, heads, headdim, d_state),
    )


def step_through(a, dt_softplus, dt_limit, gate=True):
    state, ys = a["initial_state"], []
    for t in range(a["x"].shape[1]):
        y, state = ssd_update(a["x"][:, t], a["dt"][:, t], a["A"], a["B"][:, t], a["C"][:, t], state, D=a["D"],
                              z=a["z"][:, t] if gate else None, dt_bias=a["dt_bias"], dt_softplus=dt_softplus,
                              dt_limit=dt_limit)
        ys.append(y)
    return torch.stack(ys, 1), state


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("D_per_channel", [False, True])
@pytest.mark.parametrize("dt_softplus,dt_limit", [(True, (0.0, float("inf"))), (True, (0.05, 0.4)), (False, (0.0, 2.0))])
def test_steps_equal_the_reference(groups, D_per_channel, dt_softplus, dt_limit):
    a = inputs(groups=groups, D_per_channel=D_per_channel)
    for gate in (True, False):
        y, state = step_through(a, dt_softplus, dt_limit, gate)
        expected, final = ssd(**{**a, "z": a["z"] if gate else None}, dt_softplus=dt_softplus, dt_limit=dt_limit,
                              output_final_state=True, backend="reference")
        torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(state, final, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes_are_the_ops(dtype):
    """y in x's dtype, the state in float32 (as ssd's final states), and the same numbers as the reference."""
    a = inputs(dtype=dtype, length=5)
    a["initial_state"] = a["initial_state"].float()
    y, state = step_through(a, True, (0.0, float("inf")))
    assert y.dtype == dtype and state.dtype == torch.float32
    expected, final = ssd(**a, dt_softplus=True, output_final_state=True, backend="reference")
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(y.float(), expected.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(state, final, rtol=tol, atol=tol)


def test_bad_arguments_are_named():
    a = {k: v[:, 0] if k in ("x", "dt", "B", "C", "z") else v for k, v in inputs().items()}
    state = a.pop("initial_state")
    cases = {
        "x": a["x"][0], "dt": a["dt"][:, :2], "A": a["A"][:2], "B": a["B"][:, :1, :3], "C": a["C"][:, :, :2],
        "D": a["D"][:3], "z": a["z"][:, :2], "dt_bias": a["dt_bias"][:1],
    }
    for name, bad in cases.items():
        with pytest.raises(ValueError, match=name):
            ssd_update(**{**a, name: bad}, state=state)
    with pytest.raises(ValueError, match="state"):
        ssd_update(**a, state=state[..., :2])
    with pytest.raises(ValueError, match="B must be .* groups dividing heads"):
        ssd_update(**{**a, "B": a["B"][:, :1].expand(-1, 3, -1), "C": a["C"][:, :1].expand(-1, 3, -1)}, state=state)
    with pytest.raises(ValueError, match="x must be a real floating tensor"):
        ssd_update(**{**a, "x": a["x"].long()}, state=state)
    with pytest.raises(ValueError, match="dt must be on x's device"):
        ssd_update(**{**a, "dt": a["dt"].to("meta")}, state=state)
