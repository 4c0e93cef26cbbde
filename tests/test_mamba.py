"""Mamba layer: initialisation from the paper, parameter tags, and long-stream step == forward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssmzoo import Mamba
from ssmzoo.layers import build
from ssmzoo.optim import param_groups


def test_registered_and_defaults():
    layer = build("mamba", d_model=40)
    assert isinstance(layer, Mamba)
    assert layer.d_inner == 80 and layer.d_state == 16 and layer.d_conv == 4
    assert layer.dt_rank == math.ceil(40 / 16) == 3
    assert layer.x_proj.weight.shape == (3 + 2 * 16, 80)
    assert layer.conv1d.weight.shape == (80, 1, 4)
    assert layer.in_proj.bias is None and layer.conv1d.bias is not None


def test_init_follows_the_paper():
    torch.manual_seed(0)
    dt_min, dt_max = 2e-3, 5e-2
    layer = Mamba(d_model=64, d_state=8, dt_min=dt_min, dt_max=dt_max)
    # A = -(1..N) in every channel
    A = -torch.exp(layer.A_log)
    torch.testing.assert_close(A, -torch.arange(1.0, 9.0).expand(128, 8))
    torch.testing.assert_close(layer.D, torch.ones(128))
    # softplus(dt bias) is log-uniform in [dt_min, dt_max]: inside the range, and spread across it
    dt = F.softplus(layer.dt_proj.bias.detach())
    assert dt.min() >= dt_min * (1 - 1e-5) and dt.max() <= dt_max * (1 + 1e-5)
    log_dt = torch.log(dt)
    mid = (math.log(dt_min) + math.log(dt_max)) / 2
    assert abs(log_dt.mean().item() - mid) < 0.3  # uniform in log space, not in linear space
    assert (log_dt < mid).float().mean().item() == pytest.approx(0.5, abs=0.15)


def test_ssm_params_get_no_weight_decay():
    layer = Mamba(d_model=16, d_state=4, bidirectional=True)
    groups = param_groups(layer, lr=1e-3, weight_decay=0.1)
    no_decay = {n for g in groups if g["weight_decay"] == 0.0 for n in g["names"]}
    decay = {n for g in groups if g["weight_decay"] > 0 for n in g["names"]}
    for prefix in ("", "reverse."):
        for name in ("A_log", "D", "dt_proj.bias"):
            assert prefix + name in no_decay
            assert layer.get_parameter(prefix + name)._optim == {"weight_decay": 0.0}
    assert {"in_proj.weight", "x_proj.weight", "dt_proj.weight", "out_proj.weight"} <= decay


def test_state_shapes():
    layer = Mamba(d_model=8, d_state=5, d_conv=4, expand=3)
    conv_state, ssm_state = layer.init_state(2)
    assert conv_state.shape == (2, 24, 3) and ssm_state.shape == (2, 24, 5)
    _, (conv_state, ssm_state) = layer(torch.randn(2, 7, 8), return_state=True)
    assert conv_state.shape == (2, 24, 3) and ssm_state.shape == (2, 24, 5)


def test_step_matches_forward_over_1000_tokens_float32():
    torch.manual_seed(0)
    layer = Mamba(d_model=8, d_state=16).eval()
    x = torch.randn(1, 1000, 8)
    with torch.no_grad():
        y = layer(x)
        state = layer.init_state(1)
        outs = []
        for t in range(x.shape[1]):
            y_t, state = layer.step(x[:, t], state)
            outs.append(y_t)
    diff = (torch.stack(outs, 1) - y).abs().max().item()
    assert diff < 1e-5, diff


@pytest.mark.parametrize(
    "args,what",
    [
        (dict(d_state=0), "d_state"),
        (dict(d_conv=0), "d_conv"),
        (dict(expand=1.5), "expand"),
        (dict(dt_rank=0), "dt_rank"),
        (dict(dt_rank="full"), "dt_rank"),
        (dict(dt_min=0.1, dt_max=0.01), "dt_min"),
        (dict(dt_init="normal"), "dt_init"),
        (dict(dt_init_floor=0.0), "dt_init_floor"),
    ],
)
def test_bad_arguments(args, what):
    with pytest.raises(ValueError, match=what):
        Mamba(d_model=8, **args)


def test_checkpoints_that_name_the_reverse_direction_backward_still_load():
    torch.manual_seed(0)
    saved = Mamba(d_model=16, d_state=4, bidirectional=True)
    assert "backward" not in dict(saved.named_children()) and "reverse" in dict(saved.named_children())
    old = {k.replace("reverse.", "backward.", 1): v for k, v in saved.state_dict().items()}  # the name until 0.1.0
    assert any(k.startswith("backward.") for k in old)
    loaded = Mamba(d_model=16, d_state=4, bidirectional=True)
    loaded.load_state_dict(old)
    for name, value in saved.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    x = torch.randn(2, 9, 16)
    torch.testing.assert_close(loaded(x), saved(x))


def test_A_init_range_sets_the_initial_decay_and_defaults_to_s4d_real():
    torch.manual_seed(0)
    default = Mamba(8, d_state=4, bidirectional=True)
    torch.testing.assert_close(torch.exp(default.A_log), torch.arange(1.0, 5.0).repeat(16, 1))
    ranged = Mamba(8, d_state=4, bidirectional=True, A_init_range=(0.01, 0.1))
    for module in (ranged, ranged.reverse):
        minus_a = torch.exp(module.A_log)
        assert minus_a.min() >= 0.01 and minus_a.max() <= 0.1 and minus_a.std() > 0
    for bad in ((0.0, 1.0), (2.0, 1.0), (1.0,), (1.0, float("inf"))):
        with pytest.raises(ValueError, match="Mamba: A_init_range must be"):
            Mamba(8, A_init_range=bad)
