"""S4: the Cauchy/Woodbury kernel equals the dense recurrence, C̃ length doubling keeps C̄, both
recurrent modes equal the convolution, backends agree, options and errors."""

from __future__ import annotations

import pytest
import torch

from ssmzoo import S4, optim
from ssmzoo.layers.s4 import INITS
from ssmzoo.ops import dplr as ops
from ssmzoo.ops import cauchy


def _layer(seed=0, **args):
    torch.manual_seed(seed)
    return S4(**{"d_model": 3, "d_state": 8, **args}).double().eval()


def _dense_kernel(layer: S4, length: int) -> torch.Tensor:
    """K_l = C̄ Ā^l B̄ by explicit matrix powers in real coordinates: the readable definition."""
    a_bar, b_bar = layer._dense()
    c = ops.row_to_real(layer.output_matrix())
    out, x = [], b_bar
    for _ in range(length):
        out.append(torch.einsum("khn,hn->kh", c, x))
        x = torch.einsum("hij,hj->hi", a_bar, x)
    return torch.stack(out, -1)


@pytest.mark.parametrize("init", INITS)
def test_kernel_equals_dense_recurrence(init):
    layer = _layer(init=init, bidirectional=True, channels=2)
    for length in (1, 6, 13):  # longer inputs double the length: C̃ is updated, C̄ is not
        k, _ = layer.kernel(length)
        assert k.shape == (4, 3, length)
        torch.testing.assert_close(k, _dense_kernel(layer, length), rtol=1e-9, atol=1e-9)
    assert int(layer.kernel_length) == 16  # 1, then doubled to 8 for 6, to 16 for 13


def test_length_doubling_keeps_the_output_matrix():
    layer = _layer()
    layer(torch.randn(1, 5, 3, dtype=torch.float64))
    c_before, c_tilde_before = layer.output_matrix(), layer.C.detach().clone()
    layer(torch.randn(1, 17, 3, dtype=torch.float64))
    assert int(layer.kernel_length) == 20
    assert not torch.allclose(layer.C.detach(), c_tilde_before)
    torch.testing.assert_close(layer.output_matrix(), c_before, rtol=1e-9, atol=1e-9)


def test_state_contribution_equals_dense():
    layer = _layer(init="legt")
    s = torch.randn(2, 3, 4, dtype=torch.complex128)
    _, k_state = layer.kernel(9, s)
    a_bar, _ = layer._dense()
    c = ops.row_to_real(layer.output_matrix())
    x, out = ops.to_real(s), []
    for _ in range(9):
        x = torch.einsum("hij,bhj->bhi", a_bar, x)
        out.append(torch.einsum("khn,bhn->bkh", c, x))
    torch.testing.assert_close(k_state, torch.stack(out, -1), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", ["chunked", "cpp"])
def test_backends_agree_in_the_layer(backend):
    if backend == "cpp" and not cauchy.cpu.available():
        pytest.skip("no C++ extension")
    x = torch.randn(2, 11, 3, dtype=torch.float64)
    grads = []
    for b in ("reference", backend):
        layer = _layer(cauchy_backend=b, init="legt")
        y = layer(x)
        (y ** 2).sum().backward()
        grads.append((y, [p.grad for p in layer.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-9, atol=1e-9)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


def _stream(layer: S4, x: torch.Tensor) -> torch.Tensor:
    state = layer.init_state(x.shape[0])
    out = []
    with torch.no_grad():
        for t in range(x.shape[1]):
            y, state = layer.step(x[:, t], state)
            out.append(y)
    return torch.stack(out, 1)


@pytest.mark.parametrize("step_mode", ["dplr", "dense"])
def test_4096_steps_match_the_convolution_float32(step_mode):
    torch.manual_seed(0)
    layer = S4(d_model=2, d_state=8, step_mode=step_mode, output="linear", activation="identity").eval()
    x = torch.randn(1, 4096, 2)
    with torch.no_grad():
        y = layer(x)
    assert (_stream(layer, x) - y).abs().max() < 1e-4


def test_step_modes_agree_float64():
    x = torch.randn(2, 50, 3, dtype=torch.float64)
    ys = [_stream(_layer(init="legt", step_mode=m), x) for m in ("dplr", "dense")]
    torch.testing.assert_close(ys[0], ys[1], rtol=1e-10, atol=1e-10)


@pytest.mark.slow
def test_100k_step_stream_is_stable():
    torch.manual_seed(0)
    layer = S4(d_model=2, d_state=8, output="linear", activation="identity").eval()
    x = torch.randn(1, 100_000, 2)
    y = _stream(layer, x)
    assert torch.isfinite(y).all()
    first, last = y[:, 1000:11000].abs().max(), y[:, -10000:].abs().max()
    assert last < 2 * first, f"output grows: {first} -> {last}"


def test_optimizer_tags():
    layer = S4(d_model=4, d_state=8, lr=1e-3, init="legs")
    groups = optim.param_groups(layer, lr=1e-2, weight_decay=0.05)
    ssm = [g for g in groups if g["lr"] == 1e-3]
    assert len(ssm) == 1 and ssm[0]["weight_decay"] == 0.0
    assert sorted(ssm[0]["names"]) == ["A_imag", "B", "P", "log_A_real", "log_dt"]
    assert S4(d_model=4, d_state=8, init="diag-inv").P is None


def test_channels_and_bidirectional_shapes():
    x = torch.randn(2, 10, 3, dtype=torch.float64)
    layer = _layer(channels=3, bidirectional=True)
    assert layer(x).shape == x.shape and layer.C.shape[0] == 6 and layer.D.shape == (3, 3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="d_state"):
        S4(d_model=4, d_state=7)
    with pytest.raises(ValueError, match="init"):
        S4(d_model=4, init="legx")
    with pytest.raises(ValueError, match="step_mode"):
        S4(d_model=4, step_mode="fast")
    with pytest.raises(ValueError, match="cauchy_backend"):
        S4(d_model=4, cauchy_backend="triton")
    with pytest.raises(ValueError, match="dt_min"):
        S4(d_model=4, dt_min=0.1, dt_max=0.01)


def test_step_cache_follows_parameter_updates():
    x = torch.randn(1, 6, 3, dtype=torch.float64)
    a, b = _layer(seed=0), _layer(seed=1)
    _stream(a, x)  # fills a's step cache
    a.load_state_dict(b.state_dict())  # in-place copies: the cache must notice
    torch.testing.assert_close(_stream(a, x), _stream(b, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("init", ["legs", "legt", "fout", "diag-inv"])
def test_float32_kernel_is_close_to_float64(init):
    torch.manual_seed(0)
    single = S4(d_model=4, d_state=16, init=init)
    double = S4(d_model=4, d_state=16, init=init).double()
    k32, _ = single.kernel(512)
    double.load_state_dict(single.state_dict())  # same C̃ and kernel length
    k64, _ = double.kernel(512)
    assert (k32.double() - k64).abs().max() < 1e-4 * k64.abs().max()  # measured <= 4e-5 (fout)
