"""ShortConvolution: equals a depthwise nn.Conv1d with left padding (forward and backward), continues
a stream exactly across calls and one token at a time, fixed taps, nn.Conv1d's init and names."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from ssmzoo.modules import ShortConvolution

F64 = torch.float64


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def conv1d_reference(conv: ShortConvolution, x: torch.Tensor) -> torch.Tensor:
    """nn.Conv1d's depthwise convolution with W − 1 zeros on the left, then the activation."""
    y = F.conv1d(rearrange(x, "b l d -> b d l"), conv.weight, conv.bias, padding=conv.width - 1,
                 groups=conv.channels)[..., : x.shape[1]]
    y = F.silu(y) if conv.activation == "silu" else y
    return rearrange(y, "b d l -> b l d")


@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("bias,activation", [(True, "silu"), (False, None)])
@pytest.mark.parametrize("backend", ["conv", "reference"])
def test_equals_depthwise_conv1d_forward_and_backward(width, bias, activation, backend):
    torch.manual_seed(0)
    conv = ShortConvolution(3, width, bias=bias, activation=activation, causal_conv1d_backend=backend).double()
    x = rand(2, 7, 3).requires_grad_()
    y, want = conv(x), conv1d_reference(conv, x)
    torch.testing.assert_close(y, want)
    probe = rand(2, 7, 3, seed=1)
    leaves = [x, *conv.parameters()]
    for a, b in zip(torch.autograd.grad((y * probe).sum(), leaves), torch.autograd.grad((want * probe).sum(), leaves)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("width", [1, 3, 4])
def test_stream_continues_across_calls_and_steps(width):
    torch.manual_seed(0)
    conv = ShortConvolution(5, width, bias=True, activation="silu").double()
    x = rand(2, 11, 5)
    y, final = conv(x, return_state=True)
    torch.testing.assert_close(final, rearrange(x, "b l d -> b d l")[..., 11 - (width - 1) :])  # last W − 1 inputs
    y1, s = conv(x[:, :2], return_state=True)
    y2, s = conv(x[:, 2:6], s, return_state=True)
    outs, state = [y1, y2], s
    for t in range(6, 11):
        y_t, state = conv.step(x[:, t], state)
        outs.append(y_t[:, None])
    torch.testing.assert_close(torch.cat(outs, 1), y)
    torch.testing.assert_close(state, final)
    torch.testing.assert_close(conv(x, conv.init_state(2)), y)


def test_fixed_taps_are_a_buffer_outside_the_state_dict():
    taps = rand(3, 4)
    conv = ShortConvolution(3, 4, taps=taps).float()
    assert list(conv.parameters()) == [] and list(conv.state_dict()) == []
    x = rand(1, 6, 3).float()
    xp = F.pad(x, (0, 0, 3, 0))  # three zeros before the stream
    want = torch.stack([sum(taps[:, k].float() * xp[:, t + k] for k in range(4)) for t in range(6)], 1)
    torch.testing.assert_close(conv(x), want)
    assert conv.double().weight.dtype == F64  # follows .to() like any buffer


def test_init_and_names_are_nn_conv1d_s():
    torch.manual_seed(3)
    ours = ShortConvolution(6, 4, bias=True)
    torch.manual_seed(3)
    theirs = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3, bias=True)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for k, v in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=0, atol=0)


def test_bad_arguments_and_inputs():
    for args, match in [(dict(width=0), "width"), (dict(activation="gelu"), "activation"),
                        (dict(taps=torch.zeros(3, 2)), "taps"), (dict(causal_conv1d_backend="nope"), "backend"),
                        (dict(bias=1), "bias")]:
        with pytest.raises(ValueError, match=match):
            ShortConvolution(**{"channels": 4, "width": 3, **args})
    conv = ShortConvolution(4, 3)
    with pytest.raises(ValueError, match="channels=4"):
        conv(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="initial_state"):
        conv(torch.randn(2, 5, 4), torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match="dtype"):
        conv(torch.randn(2, 5, 4, dtype=F64))
