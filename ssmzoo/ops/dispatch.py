"""One dispatch for every op: a readable reference plus fast backends, chosen per call.

Each op package (``ssmzoo/ops/<op>/``) makes one :class:`Dispatcher` holding its reference and a
tiny probe case, and registers its backends on it in preference order, each with the device types
it runs on and what it can do (:class:`Capabilities`: initial state, final state, gradients,
dtypes, and an optional size limit for ``auto``). A call describes what it needs in a
:class:`Request`; :meth:`Dispatcher.choose` then returns

- for ``backend="auto"``: the first backend in preference order that runs on the input's device,
  is available (importable / compiled), has passed the shared probe against the reference on that
  device type, and can do everything the call asks. A call that needs a final state or a gradient
  is never routed to a backend that would drop it;
- for a backend's name: that backend, or a ``ValueError`` saying why it cannot serve this call;
- for ``None``: the backend named by ``$SSMZOO_BACKEND`` when this op has it and it can serve the
  call, else ``auto``. One variable therefore steers every op that has a backend of that name;
- on the ``meta`` device, whatever was asked: the reference, which infers output shapes.

The probe (:func:`probe_against_reference`) runs a backend on the op's tiny case, forward and
backward, under ``torch.enable_grad()`` and outside inference mode and autocast whatever the caller's mode,
and compares it with the reference; an importable but broken backend costs one warning and is never chosen.

Every op lists itself in the index of ops with one line in its package, on its public entry::

    @register_op(dispatch)
    def my_op(x, ..., *, backend=None): ...

and :func:`ssmzoo.ops.index` imports every op package and returns their dispatchers by name, so the
dispatch tests enumerate the ops (a new op is tested without editing a list anywhere).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor

ENV_VAR = "SSMZOO_BACKEND"
# Old backend names that still select the backend now named by the value.
LEGACY_NAMES = {"cpp": "cpu"}
REAL_DTYPES = (torch.float32, torch.float64)
HALF_DTYPES = (torch.float16, torch.bfloat16)
COMPLEX_DTYPES = (torch.complex64, torch.complex128)


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    try:
        return torch.autocast(device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know (meta)
        return contextlib.nullcontext()


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast computes in on ``device``'s type, or None where it is off (or unknown: meta)."""
    try:
        return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
    except (RuntimeError, TypeError):
        return None


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast switched off on ``device``'s type while an op whose backends choose their own precision runs
    (a no-op where it is off already)."""
    return _no_autocast(device) if autocast_dtype(device) is not None else contextlib.nullcontext()


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do. ``segments``: it honours packed documents (``ssmzoo.ops.segments``); ops
    without segments never ask for it. ``max_size``: ``auto`` considers the backend only for problems of
    at most this size (the op defines size, e.g. the number of entries a reference materialises)."""

    initial_state: bool = True
    final_state: bool = True
    grad: bool = True
    segments: bool = False
    dtypes: tuple[torch.dtype, ...] = REAL_DTYPES
    max_size: int | None = None


@dataclass(frozen=True)
class Request:
    """What one call needs from a backend."""

    device: torch.device
    dtype: torch.dtype
    initial_state: bool = False
    final_state: bool = False
    grad: bool = False
    segments: bool = False  # packed documents (more than one in some row)
    size: int = 0
    # Op-specific facts a backend's ``accepts`` may check (e.g. the state size a kernel supports).
    facts: tuple[tuple[str, Any], ...] = ()

    def fact(self, name: str, default: Any = None) -> Any:
        return dict(self.facts).get(name, default)


@dataclass
class Backend:
    name: str
    fn: Callable
    devices: tuple[str, ...]
    capabilities: Capabilities
    available: Callable[[], bool]
    # Op-specific limits: None when the backend can serve the request, else the reason it cannot.
    accepts: Callable[[Request], str | None] | None
    probe: bool

    def why_not(self, request: Request) -> str | None:
        """None when this backend can serve ``request`` (ignoring availability), else the reason."""
        caps = self.capabilities
        if request.device.type not in self.devices:
            return f"it runs on {', '.join(self.devices)} only, not {request.device.type}"
        if request.dtype not in caps.dtypes:
            names = ", ".join(str(d).removeprefix("torch.") for d in caps.dtypes)
            return f"it supports dtypes {names}, not {str(request.dtype).removeprefix('torch.')}"
        if request.initial_state and not caps.initial_state:
            return "it cannot take an initial state"
        if request.final_state and not caps.final_state:
            return "it cannot return a final state"
        if request.grad and not caps.grad:
            return "it has no backward pass"
        if request.segments and not caps.segments:
            return "it cannot take packed documents (segments)"
        return self.accepts(request) if self.accepts is not None else None


def state_at_most(limit: int) -> Callable[[Request], str | None]:
    """A backend's ``accepts`` for kernels that hold the state in a fixed-size array: the request's
    ``d_state`` fact must not exceed ``limit``."""
    def accepts(request: Request) -> str | None:
        n = request.fact("d_state", 0)
        return None if n <= limit else f"it supports d_state <= {limit}, got {n}"

    return accepts


def grad_needed(*tensors: Any) -> bool:
    """True when autograd will need gradients through a call on these tensors (nested tuples ok)."""
    if not torch.is_grad_enabled():
        return False
    return any(t.requires_grad for t in _flat_tensors(tensors))


def _flat_tensors(x: Any) -> Iterable[Tensor]:
    if isinstance(x, Tensor):
        yield x
    elif isinstance(x, (tuple, list)):
        for item in x:
            yield from _flat_tensors(item)


def probe_against_reference(
    fn: Callable,
    reference: Callable,
    case: tuple[tuple, dict[str, Any]],
    grad: bool,
    rtol: float,
    atol: float,
) -> None:
    """Run ``fn`` and ``reference`` on ``case`` = (args, kwargs); raise unless outputs (and, with
    ``grad``, the gradients of every floating input that requires grad) agree. Always runs with
    autograd on, so a first use under ``torch.no_grad()`` cannot mark a good backend broken."""
    args, kwargs = case
    with torch.enable_grad():
        got, want = list(_flat_tensors(fn(*args, **kwargs))), list(_flat_tensors(reference(*args, **kwargs)))
        if len(got) != len(want):
            raise RuntimeError(f"returned {len(got)} tensors, the reference {len(want)}")
        for g, w in zip(got, want):
            if g.shape != w.shape or not torch.allclose(g, w, rtol=rtol, atol=atol):
                raise RuntimeError("output disagrees with the reference")
        if not grad:
            return
        leaves = [t for t in _flat_tensors((args, tuple(kwargs.values()))) if t.requires_grad]
        if not leaves:
            return
        gen = torch.Generator().manual_seed(1)
        weights = [torch.randn(w.shape, generator=gen, dtype=w.real.dtype).to(w.device) for w in want]

        def loss(outs: list[Tensor]) -> Tensor:
            return sum((o.real * wt).sum() + (o.imag * wt).sum() if o.is_complex() else (o * wt).sum()
                       for o, wt in zip(outs, weights))

        got_grads = torch.autograd.grad(loss(got), leaves, allow_unused=True)
        want_grads = torch.autograd.grad(loss(want), leaves, allow_unused=True)
        for g, w in zip(got_grads, want_grads):
            g = torch.zeros_like(w) if g is None and w is not None else g
            w = torch.zeros_like(g) if w is None and g is not None else w
            if g is not None and not torch.allclose(g, w, rtol=rtol, atol=atol):
                raise RuntimeError("gradient disagrees with the reference")


@dataclass
class Dispatcher:
    """The backends of one op, in preference order.

    Args:
        op: the op's name (used in messages).
        reference: the op's reference function; the probe compares every backend with it.
        probe_case: ``device -> (args, kwargs)``: a tiny call of the op (without ``backend``),
            whose floating inputs require grad; built anew for every probe.
        rtol, atol: the probe's tolerances.
        fake: ``fake_<op>(inputs, ...)``, with a backend's signature, returning empty tensors shaped and typed like
            the reference's outputs; needed by ops with opaque backends, which become PyTorch custom operators
            (``ops/custom.py``), as their fake (meta) implementation.
    """

    op: str
    reference: Callable
    probe_case: Callable[[torch.device, Capabilities], tuple[tuple, dict[str, Any]]]
    rtol: float = 1e-3
    atol: float = 1e-4
    fake: Callable | None = None
    backends: dict[str, Backend] = field(default_factory=dict)
    # The op's public entry (``register_op`` sets it): what users call, and the dispatch tests inspect.
    entry: Callable | None = None
    _probed: dict[tuple[str, str], bool] = field(default_factory=dict)

    def register(
        self,
        name: str,
        fn: Callable,
        devices: Sequence[str],
        capabilities: Capabilities = Capabilities(),
        available: Callable[[], bool] | None = None,
        accepts: Callable[[Request], str | None] | None = None,
        probe: bool = True,
        opaque: bool = False,
    ) -> Backend:
        """Add a backend (after those already registered, i.e. at lower preference). ``opaque``: the backend
        leaves PyTorch (a C++, CUDA or Triton kernel, a peer library), so torch.compile and torch.export cannot
        trace it: it is registered as the custom operator ``ssmzoo::<op>_<name>`` (``ops/custom.py``), which
        they call as one node."""
        if not name or not name.replace("_", "").isalnum() or name == "auto":
            raise ValueError(f"{self.op}: backend name must be an identifier other than 'auto', got {name!r}")
        if name in self.backends:
            raise ValueError(f"{self.op}: backend {name!r} is already registered")
        if opaque:
            from .custom import opaque_backend

            fn = opaque_backend(self.op, name, fn, self.fake, capabilities.grad)
        backend = Backend(name, fn, tuple(devices), capabilities, available or (lambda: True), accepts, probe)
        self.backends[name] = backend
        return backend

    # -- availability -------------------------------------------------------------------------
    def usable(self, name: str, device: torch.device | str) -> bool:
        """True when backend ``name`` runs on ``device``, is available and passed its probe there."""
        device = torch.device(device)
        name = self.canonical(name)
        b = self.backends.get(name)
        if b is None or device.type not in b.devices:
            return False
        key = (name, device.type)
        if key not in self._probed:
            ok = False
            try:
                ok = bool(b.available())
                if ok and b.probe and b.fn is not self.reference:
                    # Lightning evaluates under inference mode (no grad there), and a first use under autocast
                    # would make the backend's output half precision: the probe runs outside both.
                    with torch.inference_mode(False), autocast_off(device):
                        case = self.probe_case(device, b.capabilities)
                        probe_against_reference(b.fn, self.reference, case, b.capabilities.grad, self.rtol, self.atol)
            except Exception as e:  # an optional backend that is broken here costs one warning, nothing more
                warnings.warn(f"ssmzoo: {self.op} backend {name!r} failed its probe on {device.type} "
                              f"({type(e).__name__}: {e}); using another backend", stacklevel=3)
                ok = False
            self._probed[key] = ok
        return self._probed[key]

    def names(self, device: torch.device | str = "cpu") -> list[str]:
        """The backends usable on ``device`` (probing them if needed), in preference order."""
        return [n for n in self.backends if self.usable(n, device)]

    def reset(self) -> None:
        """Forget probe results (tests; or after installing a package mid-session)."""
        self._probed.clear()

    # -- choice -------------------------------------------------------------------------------
    def canonical(self, backend: str | None) -> str | None:
        """``backend`` under its current name: the C++ backends were called "cpp" until 0.1.0 and are "cpu" now
        (named after their files), so configs and $SSMZOO_BACKEND values that say "cpp" keep working."""
        if backend not in self.backends and backend in LEGACY_NAMES and LEGACY_NAMES[backend] in self.backends:
            return LEGACY_NAMES[backend]
        return backend

    def check_name(self, backend: str | None, owner: str, arg: str = "backend") -> None:
        """Raise a ValueError naming ``owner`` and ``arg`` unless ``backend`` is None, "auto" or one
        of this op's backends. Layers call this in their constructors."""
        backend = self.canonical(backend)
        if backend is None or backend == "auto" or backend in self.backends:
            return
        raise ValueError(f"{owner}: unknown {arg} {backend!r}; expected None, 'auto' or one of the {self.op} "
                         f"backends: {', '.join(map(repr, self.backends))}")

    def choose(self, backend: str | None, request: Request) -> Backend:
        """The backend that serves ``request`` (see the module docstring). While torch.compile or torch.export
        traces, the choice is made by running Python outside the graph and enters it as a constant (no graph
        break; probes run on real tensors)."""
        if torch.compiler.is_compiling():
            # Python constants only: a symbolic size or fact (a dynamic length) is compared here, in the traced
            # code, which guards on the outcome (a new length recompiles only where it changes the choice).
            facts = tuple((k, int(v) if isinstance(v, torch.SymInt) else v) for k, v in request.facts)
            too_big = tuple(name for name, b in self.backends.items()
                            if b.capabilities.max_size is not None and request.size > b.capabilities.max_size)
            return self.backends[_choose_constant(self, backend, request.device.type, request.device.index,
                                                  request.dtype, request.initial_state, request.final_state,
                                                  request.grad, request.segments, too_big, facts)]
        return self._choose(backend, request)

    def _choose(self, backend: str | None, request: Request, too_big: tuple[str, ...] | None = None) -> Backend:
        """``too_big``: the backends whose ``max_size`` the request exceeds (by default from ``request.size``)."""
        self.check_name(backend, self.op)
        backend = self.canonical(backend)
        if request.device.type == "meta":
            # Meta tensors carry shapes only (model surgery, size estimates): the reference infers them.
            return self.backends["reference"]
        if backend is None:
            env = self.canonical(os.environ.get(ENV_VAR, "auto"))
            b = self.backends.get(env)
            if b is not None and b.why_not(request) is None and self.usable(env, request.device):
                return b
            backend = "auto"
        if backend == "auto":
            for name, b in self.backends.items():  # insertion order is the preference order
                limit = b.capabilities.max_size
                if (name in too_big) if too_big is not None else (limit is not None and request.size > limit):
                    continue
                if b.why_not(request) is None and self.usable(name, request.device):
                    return b
            raise ValueError(f"{self.op}: no backend can serve this call ({self._describe(request)}): "
                             + "; ".join(f"{n}: {self._why(n, request)}" for n in self.backends))
        why = self._why(backend, request)
        if why is not None:
            raise ValueError(f"{self.op}: backend {backend!r} cannot serve this call ({self._describe(request)}): {why}")
        return self.backends[backend]

    def _why(self, name: str, request: Request) -> str | None:
        b = self.backends[name]
        why = b.why_not(request)
        if why is None and not self.usable(name, request.device):
            why = f"it is not available or failed its probe on {request.device.type}"
        return why

    @staticmethod
    def _describe(request: Request) -> str:
        needs = [n for n in ("initial_state", "final_state", "grad", "segments") if getattr(request, n)]
        dtype = str(request.dtype).removeprefix("torch.")
        return f"{request.device.type}, {dtype}" + (f", needs {', '.join(needs)}" if needs else "")


@torch.compiler.assume_constant_result
def _choose_constant(dispatch: Dispatcher, backend: str | None, device_type: str, device_index: int | None,
                     dtype: torch.dtype, initial_state: bool, final_state: bool, grad: bool, segments: bool,
                     too_big: tuple[str, ...], facts: tuple) -> str:
    """The name of the backend that :meth:`Dispatcher.choose` picks; torch.compile runs this at trace time."""
    device = torch.device(device_type, device_index) if device_index is not None else torch.device(device_type)
    request = Request(device, dtype, initial_state, final_state, grad, segments, 0, facts)
    # In a thread of its own: a first probe then runs the kernels on real tensors, outside whatever the tracer has
    # set in this thread (fake tensors, proxy modes, grad mode and autocast regions it would record).
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(dispatch._choose, backend, request, too_big).result().name


_INDEX: dict[str, Dispatcher] = {}


def register_op(dispatch: Dispatcher) -> Callable[[Callable], Callable]:
    """Decorator for an op's public entry: lists the op (its dispatcher, under ``dispatch.op``) in the index
    of ops that :func:`ssmzoo.ops.index` returns, and records the entry on the dispatcher. Returns the entry
    unchanged."""
    def add(entry: Callable) -> Callable:
        known = _INDEX.get(dispatch.op)
        if known is not None and known is not dispatch:
            raise ValueError(f"register_op: an op named {dispatch.op!r} is already registered")
        dispatch.entry = entry
        _INDEX[dispatch.op] = dispatch
        return entry

    return add


def registered_ops() -> dict[str, Dispatcher]:
    """The ops registered so far (those whose packages were imported); :func:`ssmzoo.ops.index` imports all."""
    return dict(_INDEX)
