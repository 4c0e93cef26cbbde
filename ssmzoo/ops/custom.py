"""Opaque backends as PyTorch custom operators, so ``torch.compile`` and ``torch.export`` see one node per call.

A backend that leaves PyTorch (a C++ or CUDA extension, Triton, a peer library) is registered with
``Dispatcher.register(..., opaque=True)``; :func:`opaque_backend` then defines, once per backend, the custom
operator ``ssmzoo::<op>_<backend>`` (``torch.library.custom_op``) with

- the backend itself as its implementation,
- the op's fake function (``Dispatcher(fake=...)``: empty tensors shaped and typed like the reference's outputs)
  as its fake (meta) implementation, so the compiler knows output shapes without running the kernel, and
- a registered autograd formula: ``ssmzoo::<op>_<backend>_backward`` reruns the backend under autograd and
  differentiates it (the backend's own backward kernel), so gradients are the eager ones exactly; the price
  is one more forward of the op in a compiled backward pass.

In eager mode the wrapper calls the backend directly (nothing changes, nothing costs more); while compiling or
exporting it calls the custom operator. Every call of an op has one signature: ``(tensors: Tensor?[], spec:
str) -> Tensor[]``, where ``spec`` is a Python literal describing the call's arguments (the op's inputs bundle,
nested bundles, ints, floats, strings, packed documents), with ``...`` where a tensor of ``tensors`` goes. The spec
is a constant of the graph, so an exported program holds everything it needs to call the op again in a fresh
process.
"""

from __future__ import annotations

import ast
import contextlib
import math
import sys
from functools import lru_cache
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor

from .segments import Segments

NAMESPACE = "ssmzoo"
# Every custom operator defined here, by qualified name ("ssmzoo::selective_scan_cpu"): the tests run opcheck on each.
CUSTOM_OPS: dict[str, "OpaqueBackend"] = {}


# -- the spec: a call's arguments as a Python literal ---------------------------------------------------
def encode(value: Any, tensors: list[Optional[Tensor]]) -> str:
    """``value`` as a literal that :func:`decode` reads back, appending its tensors to ``tensors``. Written with
    operations that torch.compile traces as constants."""
    if isinstance(value, Tensor):
        tensors.append(value)
        return "..."
    if isinstance(value, Segments):  # packed documents: the start marks (a tensor) and the number of documents
        tensors.append(value.starts)
        return "{'__segments__': " + str(value.num_docs) + "}"
    if value is None or isinstance(value, (bool, str)):
        return repr(value)
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if math.isinf(value):
            return "1e999" if value > 0 else "-1e999"
        return repr(value)
    if isinstance(value, dict):
        return "{" + "".join(repr(k) + ": " + encode(v, tensors) + ", " for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + "".join(encode(v, tensors) + ", " for v in value) + "]"
    if isinstance(value, tuple):
        inner = "(" + "".join(encode(v, tensors) + ", " for v in value) + ")"
        if hasattr(value, "_fields"):  # a NamedTuple bundle: its class name, looked up again when decoding
            return "{'__bundle__': " + repr(type(value).__name__) + ", 'fields': " + inner + "}"
        return inner
    raise TypeError(f"ssmzoo custom ops: cannot pass a {type(value).__name__} to an opaque backend")


class PackedDocuments:
    """What a fake implementation sees of :class:`Segments`: the shape facts, no values."""

    def __init__(self, starts: Tensor, num_docs: int) -> None:
        self.starts, self.num_docs = starts, num_docs
        self.batch, self.length = starts.shape
        self.unpacked = num_docs == self.batch


@lru_cache(maxsize=4096)
def _parse(spec: str) -> Any:
    return ast.literal_eval(spec)


def decode(spec: str, tensors: list[Optional[Tensor]], fake: bool = False) -> Any:
    """The value that :func:`encode` wrote as ``spec`` (with ``fake``: packed documents as their shape facts)."""
    it = iter(tensors)

    def build(node: Any) -> Any:
        if node is Ellipsis:
            return next(it)
        if isinstance(node, dict) and "__segments__" in node:
            starts = next(it)
            return PackedDocuments(starts, node["__segments__"]) if fake else Segments(starts)
        if isinstance(node, dict) and "__bundle__" in node:
            return bundle(node["__bundle__"])(*(build(v) for v in node["fields"]))
        if isinstance(node, dict):
            return {k: build(v) for k, v in node.items()}
        if isinstance(node, list):
            return [build(v) for v in node]
        if isinstance(node, tuple):
            return tuple(build(v) for v in node)
        return node

    return build(_parse(spec))


def flatten(value: Any) -> list[Tensor]:
    """The tensors of a backend's output (a tensor, or nested tuples and lists of them), in order."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in flatten(v)]
    if value is None:
        return []
    raise TypeError(f"ssmzoo custom ops: a backend returned a {type(value).__name__}")


def restore(like: Any, tensors: Any) -> Any:
    """``like`` (the fake function's output) with its tensors replaced, in order, by those of ``tensors``."""
    if isinstance(like, Tensor):
        return next(tensors)
    if isinstance(like, tuple) and hasattr(like, "_fields"):
        return type(like)(*(restore(v, tensors) for v in like))
    if isinstance(like, (tuple, list)):
        return type(like)(restore(v, tensors) for v in like)
    return like


def _differentiable(t: Optional[Tensor]) -> bool:
    return t is not None and (t.is_floating_point() or t.is_complex())


_BUNDLES: dict[str, type] = {}


def bundle(name: str) -> type:
    """The NamedTuple bundle class ``name`` of the loaded ``ssmzoo.ops`` modules (names are unique there)."""
    if name not in _BUNDLES:
        for module_name, module in list(sys.modules.items()):
            if module_name.startswith(__package__ + ".") and module is not None:
                for value in vars(module).values():
                    if isinstance(value, type) and issubclass(value, tuple) and hasattr(value, "_fields"):
                        _BUNDLES.setdefault(value.__name__, value)
    return _BUNDLES[name]


@contextlib.contextmanager
def _autograd_recording() -> Iterator[None]:
    """Autograd records again inside a custom operator's implementation (which PyTorch runs with the autograd
    dispatch keys excluded: without this, ops there make outputs that do not require grad, and a gradient is lost)."""
    keys = (torch._C.DispatchKey.AutogradFunctionality, torch._C.DispatchKey.ADInplaceOrView)
    before = [torch._C._dispatch_tls_is_dispatch_key_excluded(k) for k in keys]
    for k in keys:
        torch._C._dispatch_tls_set_dispatch_key_excluded(k, False)
    try:
        yield
    finally:
        for k, excluded in zip(keys, before):
            torch._C._dispatch_tls_set_dispatch_key_excluded(k, excluded)


class OpaqueBackend:
    """One backend of one op as the custom operator ``ssmzoo::<op>_<backend>`` (see the module docstring)."""

    def __init__(self, op: str, backend: str, fn: Callable, fake: Callable, grad: bool) -> None:
        self.fn, self.fake_fn = fn, fake
        self.name = f"{op}_{backend}"
        self.qualname = f"{NAMESPACE}::{self.name}"
        self.op = torch.library.custom_op(self.qualname, self._impl, mutates_args=(),
                                          schema="(Tensor?[] tensors, str spec) -> Tensor[]")
        self.op.register_fake(self._fake)
        self.backward_op = None
        if grad:
            self.backward_op = torch.library.custom_op(
                self.qualname + "_backward", self._backward_impl, mutates_args=(),
                schema="(Tensor?[] tensors, str spec, Tensor?[] grads) -> Tensor[]")
            self.backward_op.register_fake(self._backward_fake)
            self.op.register_autograd(self._backward, setup_context=self._setup_context)
        CUSTOM_OPS[self.qualname] = self

    def arguments(self, tensors: list[Optional[Tensor]], spec: str, fake: bool = False) -> tuple[tuple, dict]:
        args, kwargs = decode(spec, tensors, fake)
        return args, kwargs

    # -- the operator -------------------------------------------------------------------------------
    def _impl(self, tensors: list[Optional[Tensor]], spec: str) -> list[Tensor]:
        args, kwargs = self.arguments(tensors, spec)
        out = flatten(self.fn(*args, **kwargs))
        # A custom operator's outputs may not alias its inputs (a backend may return an input unchanged), and are
        # laid out as the fake implementation says: contiguous, each in its own storage (not a slice of another).
        inputs = {t.untyped_storage().data_ptr() for t in tensors if t is not None and t.numel()}
        return [o.clone(memory_format=torch.contiguous_format)
                if o.storage_offset() or not o.is_contiguous() or (o.numel() and o.untyped_storage().data_ptr() in inputs)
                else o for o in out]

    def _fake(self, tensors: list[Optional[Tensor]], spec: str) -> list[Tensor]:
        args, kwargs = self.arguments(tensors, spec, fake=True)
        return flatten(self.fake_fn(*args, **kwargs))

    # -- its gradient: the backend's own backward, by autograd through an eager rerun -------------------------
    def _backward_impl(self, tensors: list[Optional[Tensor]], spec: str, grads: list[Optional[Tensor]]) -> list[Tensor]:
        leaves = [t.detach().requires_grad_() if _differentiable(t) else t for t in tensors]
        with torch.enable_grad(), _autograd_recording():
            args, kwargs = self.arguments(leaves, spec)
            outs = flatten(self.fn(*args, **kwargs))
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
        wanted = [t for t in leaves if _differentiable(t)]
        got = torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True) \
            if pairs else [None] * len(wanted)
        got = iter(got)
        result = []
        for t in leaves:
            if _differentiable(t):
                g = next(got)
                result.append(torch.zeros_like(t, memory_format=torch.contiguous_format) if g is None
                              else g.contiguous())
            else:
                result.append(torch.empty(0))
        return result

    def _backward_fake(self, tensors: list[Optional[Tensor]], spec: str, grads: list[Optional[Tensor]]) -> list[Tensor]:
        some = next(g for g in list(grads) + list(tensors) if g is not None)
        # contiguous, as the real gradients are: empty_like alone keeps a strided input's layout (a permuted q, say),
        # and Inductor then reads the real gradient with the wrong strides
        return [torch.empty_like(t, memory_format=torch.contiguous_format) if _differentiable(t)
                else some.new_empty(0, dtype=torch.float32, device="cpu") for t in tensors]

    def _setup_context(self, ctx: Any, inputs: tuple, output: Any) -> None:
        tensors, spec = inputs
        ctx.save_for_backward(*tensors)
        ctx.spec = spec

    def _backward(self, ctx: Any, grads: list[Optional[Tensor]]) -> tuple[list[Optional[Tensor]], None]:
        tensors = list(ctx.saved_tensors)
        got = self.backward_op(tensors, ctx.spec, list(grads))
        return [g if _differentiable(t) else None for g, t in zip(got, tensors)], None

    # -- what the dispatcher calls ---------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not torch.compiler.is_compiling():
            return self.fn(*args, **kwargs)
        tensors: list[Optional[Tensor]] = []
        spec = encode((args, kwargs), tensors)
        flat = self.op(tensors, spec)
        # The structure of the outputs (a tensor, a tuple, nested states): the fake function's; its empty
        # tensors are dead code in the graph.
        return restore(self.fake_fn(*args, **kwargs), iter(flat))


def opaque_backend(op: str, backend: str, fn: Callable, fake: Callable | None, grad: bool) -> OpaqueBackend:
    """``fn`` as the custom operator ``ssmzoo::<op>_<backend>`` (see the module docstring)."""
    if fake is None:
        raise ValueError(f"{op}: backend {backend!r} is opaque (it leaves PyTorch) and needs the op's fake function: "
                         f"Dispatcher({op!r}, ..., fake=fake_{op}) giving its outputs' shapes and dtypes")
    return OpaqueBackend(op, backend, fn, fake, grad)


__all__ = ["CUSTOM_OPS", "OpaqueBackend", "PackedDocuments", "decode", "encode", "opaque_backend"]
