"""ssd_step, SSD's one-token step behind a dispatch: the C++ backend equals the reference (ssd_update's formulas)
on awkward shapes, both dtypes, every option; the dispatch takes it only where no gradient is needed; and a Mamba2
layer generating through it (no grad) steps exactly as its forward."""

from __future__ import annotations

import pytest
import torch

from ssmzoo import Mamba2
from ssmzoo.ops.ssd_step import SsdStepInputs, dispatch, ssd_step, ssd_step_cpu, ssd_step_reference
from ssmzoo.ops.dispatch import Request

pytestmark = pytest.mark.skipif(not dispatch.usable("cpu", "cpu"), reason="the C++ extension did not build")


def case(batch, heads, p, groups, n, dtype, D, z, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    D_t = {"none": None, "head": t(heads), "channel": t(heads, p)}[D]
    return SsdStepInputs(t(batch, heads, p), t(batch, heads), -t(heads).abs() - 0.1, t(batch, groups, n),
                         t(batch, groups, n), t(batch, heads, p, n), D=D_t, z=t(batch, heads, p) if z else None,
                         dt_bias=t(heads), dt_softplus=True, dt_limit=(0.05, 1.5))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-4)])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1), (3, 4, 5, 2, 7), (2, 6, 3, 3, 17), (1, 8, 64, 1, 128)])
@pytest.mark.parametrize("D", ["none", "head", "channel"])
@pytest.mark.parametrize("z", [False, True])
def test_cpp_equals_the_reference(dtype, tol, shape, D, z):
    inputs = case(*shape, dtype, D, z)
    y, state = ssd_step_cpu(inputs)
    y_ref, state_ref = ssd_step_reference(inputs)
    assert y.dtype == y_ref.dtype and state.dtype == state_ref.dtype and y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(state, state_ref, rtol=tol, atol=tol)


def test_half_inputs_and_a_strided_state():
    """bf16 inputs compute in float32 (the state's dtype), as the reference does; a non-contiguous state is read
    as it is."""
    inputs = case(2, 4, 3, 2, 5, torch.float32, "head", True)
    state = torch.randn(2, 4, 5, 3).transpose(2, 3)  # (batch, heads, p, n), strided
    half = inputs._replace(x=inputs.x.bfloat16(), z=inputs.z.bfloat16(), state=state)
    for got, want in zip(ssd_step_cpu(half), ssd_step_reference(half)):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(ssd_step_cpu(inputs._replace(state=state))[1],
                               ssd_step_reference(inputs._replace(state=state))[1])


def test_the_dispatch_takes_the_kernel_only_without_a_gradient():
    assert dispatch.choose("auto", Request(torch.device("cpu"), torch.float32)).name == "cpu"
    assert dispatch.choose("auto", Request(torch.device("cpu"), torch.float32, grad=True)).name == "reference"
    inputs = case(2, 4, 3, 2, 5, torch.float64, "head", True)
    x = inputs.x.clone().requires_grad_()
    y, _ = ssd_step(x, *inputs[1:6], D=inputs.D, z=inputs.z, dt_bias=inputs.dt_bias, dt_softplus=True)
    y.sum().backward()  # the reference served it: a gradient reaches x
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="ssd_update: state"):
        ssd_step(*inputs[:5], inputs.state[..., :2])


def test_a_mamba2_layer_steps_through_it_exactly():
    layer = Mamba2(16, d_state=8, headdim=4, ngroups=2, chunk_size=4).double().eval()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    with torch.no_grad():
        y = layer(x)
        state = layer.init_state(2)
        outs = []
        for t in range(9):
            y_t, state = layer.step(x[:, t], state)
            outs.append(y_t)
    torch.testing.assert_close(torch.stack(outs, 1), y, rtol=1e-10, atol=1e-10)
