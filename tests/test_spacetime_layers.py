"""SpaceTime's fixed preprocessing layers and the SpaceTime network (the layer contract itself is
covered by test_conformance.py through the registry)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssmzoo import layers
from ssmzoo.models import SpaceTime


@pytest.fixture(autouse=True)
def one_thread():
    # tiny shapes on shared cores: one intra-op thread is many times faster than two contended ones
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_differencing_matches_numpy():
    x = torch.randn(2, 12, 3, dtype=torch.float64)
    layer = layers.build("differencing", d_model=3, orders=[0, 1, 2]).double()
    y = layer(x)
    padded = np.concatenate([np.zeros((2, 2, 3)), x.numpy()], axis=1)  # zeros before the start
    torch.testing.assert_close(y[..., 0], x[..., 0])
    torch.testing.assert_close(y[..., 1], torch.from_numpy(np.diff(padded[..., 1], n=1, axis=1)[:, 1:]))
    torch.testing.assert_close(y[..., 2], torch.from_numpy(np.diff(padded[..., 2], n=2, axis=1)))


def test_moving_average_residual_matches_a_loop():
    x = torch.randn(1, 10, 2, dtype=torch.float64)
    y = layers.build("moving_average_residual", d_model=2, windows=[3, 2]).double()(x)
    for h, w in enumerate([3, 2]):
        for t in range(10):
            window = x[0, max(0, t - w + 1) : t + 1, h]
            torch.testing.assert_close(y[0, t, h], x[0, t, h] - window.sum() / w)


@pytest.mark.parametrize("name,arg,bad", [("differencing", "orders", [-1]), ("moving_average_residual", "windows", [1]),
                                          ("differencing", "orders", []), ("differencing", "d_model", 0),
                                          ("moving_average_residual", "d_model", 0)])
def test_preprocessing_rejects_bad_arguments(name, arg, bad):
    args = {"d_model": 4, arg: bad}
    with pytest.raises(ValueError, match=arg):
        layers.build(name, **args)


def test_preprocessing_state_is_the_last_inputs_and_its_width_is_checked():
    """State (batch, d_model, W − 1): the last W − 1 inputs. A state of another width used to
    return a shorter sequence silently."""
    layer = layers.build("moving_average_residual", d_model=2, windows=[3, 5]).double()
    x = torch.randn(1, 7, 2, dtype=torch.float64)
    _, state = layer(x, return_state=True)
    torch.testing.assert_close(state, x[:, -4:].transpose(1, 2))
    with pytest.raises(ValueError, match=r"moving_average_residual: state must be a float64 tensor of shape "
                                         r"\(1, 2, 4\) like init_state\(1\), got float64 \(1, 2, 2\)"):
        layer(x, state=torch.zeros(1, 2, 2, dtype=torch.float64))


def test_companion_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kernel_repeat"):
        layers.build("companion", d_model=6, kernel_repeat=4)
    with pytest.raises(ValueError, match="max_a_norm"):
        layers.build("companion", d_model=6, max_a_norm=1.5)


def test_companion_backends_give_the_same_layer():
    torch.manual_seed(0)
    x = torch.randn(2, 30, 4, dtype=torch.float64)
    outs = []
    for method in ("fft", "krylov", "reference"):
        torch.manual_seed(1)
        outs.append(layers.build("companion", d_model=4, d_state=6, companion_backend=method).double()(x))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(outs[2], outs[0], rtol=1e-9, atol=1e-9)


def test_spacetime_network_shapes_loss_and_gradients():
    torch.manual_seed(0)
    model = SpaceTime(n_inputs=3, n_outputs=1, lookback=20, horizon=7, d_model=8, d_state=4, n_blocks=2)
    x, y = torch.randn(4, 20, 3), torch.randn(4, 7, 1)
    assert model(x).shape == (4, 7, 1)
    loss = model.loss(x, y)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    # the lag and input-prediction terms add to the horizon MSE
    plain = SpaceTime(3, 1, 20, 7, d_model=8, d_state=4, n_blocks=2, lag_weight=0.0, input_weight=0.0)
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(plain.loss(x, y), F.mse_loss(model(x), y))
    assert loss > plain.loss(x, y)
    with pytest.raises(ValueError, match="lookback=20"):
        model(torch.randn(4, 19, 3))
