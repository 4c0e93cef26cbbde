"""The layer contract shared by every sequence layer, and the registry that names them.

Every layer maps ``(batch, length, d_model) -> (batch, length, d_model)`` (channels last)::

    y = layer(x)
    y, state = layer(x, state=None, return_state=True)   # causal layers: continue a stream
    state = layer.init_state(batch_size)                  # causal layers only
    y_t, state = layer.step(x_t, state)                   # x_t is (batch, d_model)

Subclasses implement ``_forward``, and causal ones also ``_init_state`` and ``_step``; the public
methods here validate inputs once, so no layer crashes deep inside a kernel on a bad shape.
"""

from __future__ import annotations

import abc
import inspect
import os
from contextlib import contextmanager
from typing import Any, Callable, ClassVar, Iterator

import torch
from torch import Tensor, nn

# A layer's recurrent state: one tensor, or a (nested) tuple of tensors. Layers document theirs.
State = Any

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_check_finite = os.environ.get("SSMZOO_CHECK_INPUTS", "1") not in ("0", "false", "False", "")


def set_input_checks(enabled: bool) -> None:
    """Turn the NaN/inf scan of layer inputs on or off (it costs a device sync on GPU)."""
    global _check_finite
    _check_finite = bool(enabled)


def input_checks_enabled() -> bool:
    return _check_finite


@contextmanager
def input_checks(enabled: bool) -> Iterator[None]:
    """Context manager form of :func:`set_input_checks`."""
    global _check_finite
    previous = _check_finite
    _check_finite = bool(enabled)
    try:
        yield
    finally:
        _check_finite = previous


class SequenceLayer(nn.Module, metaclass=abc.ABCMeta):
    """Base class of every registered sequence layer.

    Class attributes a subclass may override:
      ``supported_dtypes``: the floating dtypes its ops accept; others get a ``ValueError``.
    Instance attribute:
      ``causal``: True when the output at t depends only on inputs up to t; set in ``__init__``
      (a layer with ``bidirectional=True`` is not causal).
    """

    registry_name: ClassVar[str] = ""
    supported_dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.float32, torch.float64)

    def __init__(self, d_model: int, causal: bool = True) -> None:
        super().__init__()
        if not isinstance(d_model, int) or isinstance(d_model, bool) or d_model <= 0:
            raise ValueError(f"{type(self).__name__}: d_model must be a positive int, got {d_model!r}")
        self.d_model = d_model
        self.causal = causal

    # -- the public contract ------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        state: State | None = None,
        return_state: bool = False,
        lengths: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, State]:
        """x: (batch, length, d_model). ``lengths`` (batch,) marks right padding: outputs at real
        positions never depend on padded ones. Returns y, or (y, final_state) with return_state."""
        self._check_sequence(x)
        if lengths is not None:
            lengths = self._check_lengths(lengths, x)
        if not self.causal and (state is not None or return_state):
            raise ValueError(
                f"{self._name}: state passing needs a causal layer; this one is bidirectional "
                "(build it with bidirectional=False to stream)"
            )
        if state is not None:
            self._check_state_batch(state, x.shape[0])
        if return_state and lengths is not None and bool((lengths != x.shape[1]).any()):
            raise ValueError(
                f"{self._name}: return_state with padded sequences (lengths < length) is ambiguous; "
                "pass unpadded sequences to continue a stream"
            )
        y, new_state = self._forward(x, state, lengths, return_state)
        return (y, new_state) if return_state else y

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> State:
        """The zero state for a fresh stream of ``batch_size`` sequences."""
        self._require_causal("init_state")
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"{self._name}.init_state: batch_size must be a positive int, got {batch_size!r}")
        ref = self._reference_tensor()
        device = torch.device(device) if device is not None else ref.device
        dtype = dtype if dtype is not None else ref.dtype
        return self._init_state(batch_size, device, dtype)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One token: x_t (batch, d_model) -> (y_t (batch, d_model), next state)."""
        self._require_causal("step")
        self._check_tensor(x_t, "x_t", expected_rank=2, shape_doc="(batch, d_model)")
        self._check_state_batch(state, x_t.shape[0])
        return self._step(x_t, state)

    # -- what subclasses implement ------------------------------------------------------------
    @abc.abstractmethod
    def _forward(
        self, x: Tensor, state: State | None, lengths: Tensor | None, return_state: bool
    ) -> tuple[Tensor, State | None]:
        """Map x (batch, length, d_model) to (y, final state); inputs are already validated. The final
        state may be None unless ``return_state`` (layers whose final state is costly skip it then)."""

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> State:
        raise NotImplementedError(f"{self._name} is causal but does not implement _init_state")

    def _step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError(f"{self._name} is causal but does not implement _step")

    # -- validation ---------------------------------------------------------------------------
    @property
    def _name(self) -> str:
        return self.registry_name or type(self).__name__

    def _reference_tensor(self) -> Tensor:
        for t in self.parameters():
            return t
        for t in self.buffers():
            return t
        return torch.empty(0)

    def _require_causal(self, what: str) -> None:
        if not self.causal:
            raise ValueError(
                f"{self._name}.{what}: this layer is bidirectional, so it has no recurrent state; "
                "build it with bidirectional=False to stream token by token"
            )

    def _check_sequence(self, x: Tensor) -> None:
        self._check_tensor(x, "x", expected_rank=3, shape_doc="(batch, length, d_model)")
        if x.shape[1] == 0:
            raise ValueError(f"{self._name}: x must have length >= 1, got an empty sequence {tuple(x.shape)}")

    def _check_tensor(self, x: Tensor, arg: str, expected_rank: int, shape_doc: str) -> None:
        if not isinstance(x, Tensor):
            raise ValueError(f"{self._name}: {arg} must be a torch.Tensor {shape_doc}, got {type(x).__name__}")
        if x.dim() != expected_rank:
            raise ValueError(
                f"{self._name}: {arg} must have shape {shape_doc} (rank {expected_rank}), "
                f"got rank {x.dim()} with shape {tuple(x.shape)}"
            )
        if x.shape[-1] != self.d_model:
            raise ValueError(
                f"{self._name}: {arg} must have last dimension d_model={self.d_model}, got shape {tuple(x.shape)}"
            )
        if x.shape[0] == 0:
            raise ValueError(f"{self._name}: {arg} must have batch size >= 1, got shape {tuple(x.shape)}")
        if x.dtype not in self.supported_dtypes:
            names = ", ".join(str(d).removeprefix("torch.") for d in self.supported_dtypes)
            raise ValueError(f"{self._name}: {arg} has dtype {x.dtype}; this layer supports {names}")
        if _check_finite and not bool(torch.isfinite(x).all()):
            raise ValueError(
                f"{self._name}: {arg} contains NaN or inf (turn this check off with "
                "ssmzoo.layers.set_input_checks(False) or SSMZOO_CHECK_INPUTS=0)"
            )

    def _check_lengths(self, lengths: Tensor, x: Tensor) -> Tensor:
        if not isinstance(lengths, Tensor) or lengths.dim() != 1 or lengths.shape[0] != x.shape[0]:
            raise ValueError(f"{self._name}: lengths must be a 1-D tensor of shape (batch={x.shape[0]},)")
        if lengths.is_floating_point() or lengths.is_complex():
            raise ValueError(f"{self._name}: lengths must be an integer tensor, got {lengths.dtype}")
        if bool((lengths < 1).any()) or bool((lengths > x.shape[1]).any()):
            raise ValueError(f"{self._name}: lengths must lie in [1, length={x.shape[1]}], got {lengths.tolist()}")
        return lengths.to(x.device)

    def _check_state_batch(self, state: State, batch_size: int) -> None:
        for t in _tensors(state):
            if t.shape[0] != batch_size:
                raise ValueError(
                    f"{self._name}: state has batch size {t.shape[0]} but the input has batch size {batch_size}"
                )


def _tensors(state: State) -> Iterator[Tensor]:
    if isinstance(state, Tensor):
        yield state
    elif isinstance(state, (tuple, list)):
        for s in state:
            yield from _tensors(s)
    elif isinstance(state, dict):
        for s in state.values():
            yield from _tensors(s)
    elif state is not None:
        raise ValueError(f"state must be a tensor or a tuple/list/dict of tensors, got {type(state).__name__}")


def padding_mask(lengths: Tensor, length: int) -> Tensor:
    """(batch, length) bool mask, True at real (non-padded) positions."""
    return torch.arange(length, device=lengths.device)[None, :] < lengths[:, None]


def reverse_padded(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence of x (batch, length, ...) within its own length; padding stays at the end.

    A bidirectional layer runs its backward direction on this, so that the backward pass over a
    padded sequence starts at the last real token rather than at the padding."""
    if lengths is None:
        return x.flip(1)
    length = x.shape[1]
    pos = torch.arange(length, device=x.device)[None, :]
    idx = torch.where(pos < lengths[:, None], lengths[:, None] - 1 - pos, pos)
    idx = idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return torch.gather(x, 1, idx)


# -- parameter tags for the optimiser ---------------------------------------------------------
def tag_param(param: nn.Parameter, lr: float | None = None, weight_decay: float | None = 0.0) -> nn.Parameter:
    """Mark an SSM parameter (A, B, dt...) for its own optimiser group: by default no weight decay,
    and, if ``lr`` is given, its own learning rate. Read by :func:`ssmzoo.optim.param_groups`."""
    hp: dict[str, float] = {}
    if lr is not None:
        hp["lr"] = float(lr)
    if weight_decay is not None:
        hp["weight_decay"] = float(weight_decay)
    param._optim = hp  # type: ignore[attr-defined]
    return param


# -- registry ---------------------------------------------------------------------------------
_REGISTRY: dict[str, type[SequenceLayer]] = {}


def register(name: str) -> Callable[[type[SequenceLayer]], type[SequenceLayer]]:
    """Class decorator: make a layer buildable by name from configs."""

    def wrap(cls: type[SequenceLayer]) -> type[SequenceLayer]:
        if not issubclass(cls, SequenceLayer):
            raise TypeError(f"register({name!r}): {cls.__name__} must subclass SequenceLayer")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"layer name {name!r} is already registered to {_REGISTRY[name].__name__}")
        cls.registry_name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def available() -> list[str]:
    """Names of the registered layers, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> type[SequenceLayer]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown layer {name!r}; available layers: {', '.join(available())}")
    return _REGISTRY[name]


def build(name: str, **args: Any) -> SequenceLayer:
    """Build a registered layer by name; unknown arguments are named in the error."""
    cls = get(name)
    params = inspect.signature(cls.__init__).parameters
    accepted = [p for p in params if p != "self"]
    unknown = [k for k in args if k not in params]
    if unknown:
        raise ValueError(
            f"layer {name!r} ({cls.__name__}) has no argument(s) {', '.join(map(repr, unknown))}; "
            f"it accepts: {', '.join(accepted)}"
        )
    return cls(**args)
