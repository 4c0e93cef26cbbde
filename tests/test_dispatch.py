"""The one dispatch every op uses: choice by capability and device, probes against the reference
(whatever the caller's grad mode), $SSMZOO_BACKEND, names validated by layers at construction, and
every op package on the same template."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import sys
import types

import pytest
import torch

import ssmzoo.ops
from ssmzoo import layers
from ssmzoo.ops import causal_conv1d, cauchy, mamba_inner, selective_scan
from ssmzoo.ops.dispatch import ENV_VAR, Capabilities, Dispatcher, Request, register_op

CPU = torch.device("cpu")
OPS = ssmzoo.ops.index()  # every op, found by walking ssmzoo/ops: nothing here lists them


def double(x: torch.Tensor, *, initial_state=None, output_final_state=False):
    """A toy op: y = 2x (+ initial state); final state = y's last entry."""
    y = 2 * x if initial_state is None else 2 * x + initial_state
    return (y, y[..., -1]) if output_final_state else y


def toy(**capabilities) -> Dispatcher:
    def case(device, caps):
        x = torch.randn(3, device=device, requires_grad=True)
        return (x,), {"initial_state": torch.ones(3, device=device) if caps.initial_state else None,
                      "output_final_state": caps.final_state}

    d = Dispatcher("toy", double, case)
    d.register("fast", double, ("cpu",), Capabilities(**capabilities))
    d.register("reference", double, ("cpu", "cuda"))
    return d


def test_auto_takes_the_first_backend_that_can_serve_the_call():
    d = toy(final_state=False, initial_state=False, grad=False, dtypes=(torch.float32,))
    plain = Request(CPU, torch.float32)
    assert d.choose("auto", plain).name == "fast"
    for needs in ({"final_state": True}, {"initial_state": True}, {"grad": True}, {"dtype": torch.float64}):
        request = Request(**{"device": CPU, "dtype": torch.float32, **needs})
        assert d.choose("auto", request).name == "reference", needs
        with pytest.raises(ValueError, match="'fast' cannot serve"):
            d.choose("fast", request)  # an explicit request is never silently rerouted
    with pytest.raises(ValueError, match="runs on cpu only"):
        d.choose("fast", Request(torch.device("cuda"), torch.float32))


def test_max_size_limits_auto_only():
    d = toy(max_size=10)
    assert d.choose("auto", Request(CPU, torch.float32, size=10)).name == "fast"
    assert d.choose("auto", Request(CPU, torch.float32, size=11)).name == "reference"
    assert d.choose("fast", Request(CPU, torch.float32, size=11)).name == "fast"


def test_a_wrong_or_broken_backend_is_never_chosen():
    d = toy()

    def off_by_a_bit(x, **kw):  # importable, runs, but wrong
        y, final = double(x, **kw)
        return y + 1e-2, final
    d.backends["fast"].fn = off_by_a_bit
    with pytest.warns(UserWarning, match="'fast' failed its probe"):
        assert d.choose("auto", Request(CPU, torch.float32)).name == "reference"
    with pytest.raises(ValueError, match="failed its probe"):
        d.choose("fast", Request(CPU, torch.float32))
    d.reset()

    def wrong_gradient(x, **kw):  # right values, but no gradient reaches x
        y, final = double(x.detach(), **kw)
        return y + 0 * x, final
    d.backends["fast"].fn = wrong_gradient
    with pytest.warns(UserWarning, match="gradient disagrees"):
        assert not d.usable("fast", CPU)
    d.reset()
    d.backends["fast"].available = lambda: False
    assert d.names("cpu") == ["reference"]


def test_probe_runs_with_autograd_even_under_no_grad():
    d = toy()
    with torch.no_grad():
        assert d.choose("auto", Request(CPU, torch.float32)).name == "fast"
    assert d.usable("fast", CPU)


def test_a_first_use_under_autocast_keeps_the_fast_backends():
    # The probe compares float32 outputs: under autocast the backend's would be bfloat16 and fail it, marking a
    # good backend broken for the whole process (this happened when a bf16 test first touched the conv).
    from ssmzoo.ops import causal_conv1d

    causal_conv1d.dispatch.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert causal_conv1d.dispatch.usable("conv", CPU)
    causal_conv1d.dispatch.reset()


@pytest.mark.parametrize("name", ["cpu", "keops"])
def test_cauchy_backends_survive_a_first_use_under_no_grad(name):
    if name not in cauchy.dispatch.names("cpu"):
        pytest.skip(f"the cauchy {name} backend is not usable here")  # probe warns only when broken
    cauchy.dispatch.reset()
    with torch.no_grad():
        v = torch.randn(4, 3, dtype=torch.complex64)
        cauchy.cauchy(v, torch.randn(5, dtype=torch.complex64), v - 2, backend=name)
    assert cauchy.dispatch.usable(name, CPU)


def test_environment_variable_steers_every_op(monkeypatch):
    d = toy()
    monkeypatch.setenv(ENV_VAR, "reference")
    assert d.choose(None, Request(CPU, torch.float32)).name == "reference"
    assert d.choose("fast", Request(CPU, torch.float32)).name == "fast"  # an explicit name wins
    monkeypatch.setenv(ENV_VAR, "no_such_backend")  # a name this op does not have: auto
    assert d.choose(None, Request(CPU, torch.float32)).name == "fast"
    # Every op honours it: force the reference everywhere and check the chosen backend.
    monkeypatch.setenv(ENV_VAR, "reference")
    for dispatch in OPS.values():
        assert dispatch.choose(None, Request(CPU, next(iter(_dtypes(dispatch))))).name == "reference"


def _dtypes(dispatch: Dispatcher) -> tuple[torch.dtype, ...]:
    return dispatch.backends["reference"].capabilities.dtypes


def test_unknown_names_are_rejected():
    d = toy()
    with pytest.raises(ValueError, match="unknown backend 'nope'.*'fast', 'reference'"):
        d.choose("nope", Request(CPU, torch.float32))
    with pytest.raises(ValueError, match="identifier"):
        d.register("auto", double, ("cpu",))
    with pytest.raises(ValueError, match="already registered"):
        d.register("fast", double, ("cpu",))


@pytest.mark.parametrize("name", layers.available())
def test_layers_validate_backend_names_at_construction(name):
    cls = layers.get(name)
    params = [p for p in inspect.signature(cls.__init__).parameters if p.endswith("_backend")]
    ops = set(OPS) | {_package(d).rsplit(".", 1)[-1] for d in OPS.values()}  # op names, and their packages'
    for param in params:
        op = param.removesuffix("_backend")
        assert op in ops, f"{cls.__name__}.{param} does not follow the '<op>_backend' rule"
        with pytest.raises(ValueError, match=f"{cls.__name__}: unknown {param} 'nope'"):
            layers.build(name, d_model=8, **{param: "nope"})
    for legacy in ("backend", "kernel_backend", "scan_backend", "conv_backend", "kernel_method"):
        assert legacy not in inspect.signature(cls.__init__).parameters


def _package(dispatch: Dispatcher) -> str:
    return dispatch.entry.__module__


def test_the_index_lists_every_op_package():
    """Every package under ssmzoo/ops registers at least one op (with ``register_op``), and only its own."""
    packages = {info.name for info in pkgutil.iter_modules(ssmzoo.ops.__path__, "ssmzoo.ops.") if info.ispkg}
    assert {_package(d) for d in OPS.values()} == packages
    assert len(OPS) >= 12
    for name, dispatch in OPS.items():
        assert dispatch.op == name and dispatch.entry is getattr(importlib.import_module(_package(dispatch)),
                                                                 dispatch.entry.__name__)
    with pytest.raises(ValueError, match="already registered"):
        register_op(Dispatcher("ssd", lambda x: x, lambda device, caps: ((), {})))(lambda x: x)


@pytest.mark.parametrize("op_name", list(OPS))
def test_every_op_has_the_same_shape(op_name):
    """A package with inputs.py (the op's bundle and its one check function) and reference.py, one public entry
    with keyword-only state/segments/backend arguments, a dispatch whose reference backend is the reference
    module's function, every backend named after the file it lives in, and backends that pass their probe
    here (or are unavailable)."""
    dispatch = OPS[op_name]
    package = _package(dispatch)
    reference = importlib.import_module(f"{package}.reference")
    inputs = importlib.import_module(f"{package}.inputs")
    assert dispatch.reference.__module__ == reference.__name__
    assert dispatch.backends["reference"].fn is dispatch.reference
    assert any(name.startswith("check_") for name in vars(inputs)), f"{package}.inputs has no check function"
    params = inspect.signature(dispatch.entry).parameters
    assert params["backend"].kind is inspect.Parameter.KEYWORD_ONLY
    for state_arg in ("initial_state", "output_final_state", "segments"):
        if state_arg in params:
            assert params[state_arg].kind is inspect.Parameter.KEYWORD_ONLY
    assert ("segments" in params) == any(b.capabilities.segments for b in dispatch.backends.values())
    for name, backend in dispatch.backends.items():
        # The backend's own file, or (for GPU backends imported on first use) a file of that name beside it.
        module = backend.fn.__module__
        assert module == f"{package}.{name}" or (importlib.util.find_spec(f"{package}.{name}") is not None
                                                 and name != "reference"), (
            f"{op_name} backend {name!r} lives in {module}, not {package}.{name}")
        if "cpu" in backend.devices and backend.available():
            assert dispatch.usable(name, CPU), f"{op_name} backend {name} fails its probe"


def test_probe_cases_run_on_every_reference():
    """Each op's probe case is a call of its reference (the bundle, and output_final_state where the op has state)."""
    for name, dispatch in OPS.items():
        args, kwargs = dispatch.probe_case(CPU, dispatch.backends["reference"].capabilities)
        assert type(args[0]).__module__.endswith(".inputs"), f"{name}'s probe case does not pass its bundle"
        dispatch.reference(*args, **kwargs)


# -- Mamba reaches the fused CUDA kernels when it does not need a state ---------------------------
@pytest.fixture
def fused_stand_ins(monkeypatch):
    """Stand-ins for mamba-ssm's selective_scan_fn and causal-conv1d's causal_conv1d_fn that record
    their calls, made visible to the dispatch on CPU. They compute with our references."""
    calls = []

    def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
        calls.append("selective_scan_fn")
        return selective_scan.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend="reference")

    def causal_conv1d_fn(x, weight, bias=None, activation=None):
        calls.append("causal_conv1d_fn")
        return causal_conv1d.causal_conv1d(x, weight, bias, activation, backend="reference")

    interface = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    interface.selective_scan_fn = selective_scan_fn
    package = types.ModuleType("causal_conv1d")
    package.causal_conv1d_fn = causal_conv1d_fn
    for module_name, module in (("mamba_ssm", types.ModuleType("mamba_ssm")),
                                ("mamba_ssm.ops", types.ModuleType("mamba_ssm.ops")),
                                ("mamba_ssm.ops.selective_scan_interface", interface), ("causal_conv1d", package)):
        monkeypatch.setitem(sys.modules, module_name, module)
    for op, name in ((selective_scan, "mamba_ssm"), (causal_conv1d, "causal_conv1d")):
        monkeypatch.setattr(op.dispatch.backends[name], "devices", ("cuda", "cpu"))
        monkeypatch.setattr(op.dispatch.backends[name], "available", lambda: True)
        monkeypatch.setattr(op.dispatch, "_probed", {})
        assert op.dispatch.usable(name, CPU)  # the stand-ins pass the probe against the reference
    # On CUDA the fused C++ CPU block of Mamba (mamba_inner's "cpu") does not run; here neither.
    monkeypatch.setattr(mamba_inner.dispatch.backends["cpu"], "devices", ())
    calls.clear()
    yield calls
    for op in (selective_scan, causal_conv1d):
        op.dispatch.reset()


def test_mamba_uses_fused_kernels_unless_a_state_is_needed(fused_stand_ins):
    torch.manual_seed(0)
    layer = layers.build("mamba", d_model=8, d_state=4)
    x = torch.randn(2, 7, 8)
    fused_stand_ins.clear()
    y = layer(x)
    y.sum().backward()  # training (gradients needed) still takes the fused kernels
    assert fused_stand_ins == ["causal_conv1d_fn", "selective_scan_fn"]
    fused_stand_ins.clear()
    y_state, state = layer(x, return_state=True)
    assert fused_stand_ins == [], "a call that needs the final state must not go to the fused kernels"
    torch.testing.assert_close(y_state, y)
    assert state[1].shape == (2, 16, 4)


def test_meta_tensors_go_to_the_reference():
    d = toy(max_size=1)
    meta = Request(torch.device("meta"), torch.float32, final_state=True, grad=True, size=10)
    assert d.choose("fast", meta).name == "reference"  # shape inference needs no kernel
    y, final = selective_scan.selective_scan(
        *(torch.empty(s, device="meta") for s in ((2, 4, 7), (2, 4, 7), (4, 3), (2, 3, 7), (2, 3, 7))),
        output_final_state=True)
    assert y.shape == (2, 4, 7) and final.shape == (2, 4, 3) and y.device.type == "meta"


def test_the_old_cpp_backend_name_still_selects_the_cpu_backend(monkeypatch):
    from ssmzoo.ops import selective_scan

    d = selective_scan.dispatch
    request = Request(torch.device("cpu"), torch.float32)
    assert d.choose("cpp", request) is d.backends["cpu"]
    d.check_name("cpp", "Mamba", "selective_scan_backend")  # configs that say cpp still build
    monkeypatch.setenv("SSMZOO_BACKEND", "cpp")
    assert d.choose(None, request) is d.backends["cpu"]
    with pytest.raises(ValueError, match="unknown backend 'cpx'"):
        d.check_name("cpx", "op")
