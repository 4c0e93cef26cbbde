"""S4: the Cauchy/Woodbury kernel equals the dense recurrence, inputs longer than l_max get the
doubled kernel functionally (C̄ kept, parameters never written, differentiable), both recurrent modes
equal the convolution, backends agree, options and errors."""

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


def _snapshot(layer: S4) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in layer.state_dict().items()}


def _assert_unchanged(layer: S4, before: dict[str, torch.Tensor]) -> None:
    after = layer.state_dict()
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(after[k], before[k]), f"{k} changed"


@pytest.mark.parametrize("init", INITS)
def test_kernel_equals_dense_recurrence(init):
    layer = _layer(init=init, bidirectional=True, channels=2, l_max=4)
    before = _snapshot(layer)
    for length in (1, 6, 13):  # within l_max, then doubled to 8 and to 16, out of place
        k, _ = layer.kernel(length)
        assert k.shape == (4, 3, length)
        torch.testing.assert_close(k, _dense_kernel(layer, length), rtol=1e-9, atol=1e-9)
    _assert_unchanged(layer, before)


def test_longer_inputs_double_the_kernel_functionally():
    """C̃_2L = C̃_L (I + Ā^L) gives C̄ (I - Ā^20) for an input of 17 on l_max = 5, computed here directly
    from C̄ and Ā^20; the forward pass writes no parameter, so replicas fed different lengths stay equal."""
    layer, replica = _layer(l_max=5), _layer(l_max=5)
    before = _snapshot(layer)
    c_tilde, length = layer.c_tilde(17)
    assert length == 20
    a_bar, _ = layer._dense()
    c_bar = ops.row_to_real(layer.output_matrix().to(torch.complex128))
    eye = torch.eye(a_bar.shape[-1], dtype=a_bar.dtype)
    want = ops.row_from_real(torch.einsum("khi,hij->khj", c_bar, eye - torch.linalg.matrix_power(a_bar, 20)))
    torch.testing.assert_close(c_tilde, want, rtol=1e-9, atol=1e-9)
    layer.train()(torch.randn(2, 17, 3, dtype=torch.float64)).sum().backward()
    replica.train()(torch.randn(2, 4, 3, dtype=torch.float64)).sum().backward()
    _assert_unchanged(layer, before)
    _assert_unchanged(replica, before)
    torch.testing.assert_close(layer.output_matrix(), replica.output_matrix(), rtol=0, atol=0)


def test_doubled_kernel_gradients():
    """The doubling is differentiable: gradcheck of the layer on 13 tokens (l_max = 4) in C̃ and log_dt."""
    layer = _layer(d_model=1, d_state=4, l_max=4, init="legt", output="linear", activation="identity")
    x = torch.randn(1, 13, 1, dtype=torch.float64)
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def forward(c, log_dt):
        return torch.func.functional_call(layer, {**params, "C": c, "log_dt": log_dt}, (x,))

    leaves = (params["C"].clone().requires_grad_(), params["log_dt"].clone().requires_grad_())
    assert torch.autograd.gradcheck(forward, leaves)


@pytest.mark.parametrize("step_mode", ["dplr", "dense"])
def test_step_matches_forward_beyond_l_max(step_mode):
    layer = _layer(init="legt", l_max=8, step_mode=step_mode)
    x = torch.randn(2, 30, 3, dtype=torch.float64)
    torch.testing.assert_close(_stream(layer, x), layer(x), rtol=1e-9, atol=1e-9)


def test_old_checkpoints_load_only_with_their_kernel_length():
    """Before l_max, C̃ was set at the first input and its length kept in a ``kernel_length`` buffer."""
    sd = dict(_layer(l_max=8).state_dict(), kernel_length=torch.tensor(8))
    _layer(seed=1, l_max=8).load_state_dict(sd)
    with pytest.raises(RuntimeError, match="l_max=8"):
        _layer(seed=1, l_max=16).load_state_dict(sd)


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


@pytest.mark.parametrize("backend", ["chunked", "cpu"])
def test_backends_agree_in_the_layer(backend):
    if backend == "cpu" and not cauchy.cpu.available():
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
    with pytest.raises(ValueError, match="l_max"):
        S4(d_model=4, l_max=0)


def test_step_cache_follows_parameter_updates():
    x = torch.randn(1, 6, 3, dtype=torch.float64)
    a, b = _layer(seed=0), _layer(seed=1)
    _stream(a, x)  # fills a's step cache
    a.load_state_dict(b.state_dict())  # in-place copies: the cache must notice
    torch.testing.assert_close(_stream(a, x), _stream(b, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("init", ["legs", "legt", "fout", "diag-inv"])
def test_float32_kernel_is_close_to_float64(init):
    torch.manual_seed(0)
    single = S4(d_model=4, d_state=16, init=init, l_max=512)
    double = S4(d_model=4, d_state=16, init=init, l_max=512).double()
    k32, _ = single.kernel(512)
    double.load_state_dict(single.state_dict())  # same C̃
    k64, _ = double.kernel(512)
    assert (k32.double() - k64).abs().max() < 1e-4 * k64.abs().max()  # measured <= 4e-5 (fout)
