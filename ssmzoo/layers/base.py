"""The layer contract shared by every sequence layer, and the registry that names them.

Every layer maps ``(batch, length, d_model) -> (batch, length, d_model)`` (channels last)::

    y = layer(x)
    y, state = layer(x, state=None, return_state=True)   # causal layers: continue a stream
    state = layer.init_state(batch_size)                  # causal layers only
    y_t, state = layer.step(x_t, state)                   # x_t is (batch, d_model)

Subclasses implement ``_forward``, and causal ones also ``_init_state`` and ``_step``; the public
methods here validate inputs once, so no layer crashes deep inside a kernel on a bad input:

- shapes, dtypes and devices (metadata only, always checked, meta tensors included): x's rank,
  d_model, batch and length; x's dtype must be one the layer supports *and* its parameters' dtype
  (except under autocast); x on the parameters' device; a state must have the structure, shapes,
  dtypes and device of ``init_state(batch)`` for this input (a state of another layer, a complex
  state passed as real, a wrong width... each gives a ``ValueError`` naming the layer and the form
  expected).
- values (the NaN/inf scan of x, the range of ``lengths``) must read the data, which on a GPU is a
  device sync. The rule: by default they run on CPU tensors only, never on CUDA (or meta) ones;
  ``set_input_checks(True)`` / ``SSMZOO_CHECK_INPUTS=1`` runs them on every device,
  ``set_input_checks(False)`` / ``SSMZOO_CHECK_INPUTS=0`` nowhere, and ``input_checks(...)`` is the
  context-manager form. Models (``SequenceModel``, ``LanguageModel``, the forecasters, Titans) check
  their input once per call and run their layers with the value checks off.
"""

from __future__ import annotations

import abc
import inspect
import os
import weakref
from contextlib import contextmanager
from typing import Any, Callable, ClassVar, Iterator, NamedTuple

import torch
from torch import Tensor, nn

from ..modules.checks import autocast_enabled
from ..ops.segments import Segments
from .packing import forward_each_document

# A layer's recurrent state: one tensor, or a (nested) tuple / NamedTuple of tensors. Layers document theirs.
State = Any

def _checks_from_env() -> bool | None:
    value = os.environ.get("SSMZOO_CHECK_INPUTS")
    if value is None or value.lower() == "auto":
        return None
    return value not in ("0", "false", "False", "")


# None: the default rule (CPU tensors only); True: every device; False: never.
_check_values: bool | None = _checks_from_env()


def set_input_checks(enabled: bool | None) -> None:
    """Value checks of layer inputs (NaN/inf scan, ``lengths`` range): True on every device (a device
    sync per check on GPU), False nowhere, None the default (CPU tensors only)."""
    global _check_values
    if enabled is not None and not isinstance(enabled, bool):
        raise ValueError(f"set_input_checks: enabled must be True, False or None, got {enabled!r}")
    _check_values = enabled


def input_checks_enabled(device: torch.device | str = "cpu") -> bool:
    """Whether value checks run for tensors on ``device`` under the current setting."""
    device = torch.device(device)
    if device.type == "meta" or torch.compiler.is_compiling():
        # Value checks read the data: in a compiled or exported graph they would be data-dependent branches.
        return False
    if _check_values is None:
        return device.type == "cpu"
    return _check_values


@contextmanager
def input_checks(enabled: bool | None) -> Iterator[None]:
    """Context manager form of :func:`set_input_checks`."""
    global _check_values
    previous = _check_values
    set_input_checks(enabled)
    try:
        yield
    finally:
        _check_values = previous


def _all_finite(x: Tensor) -> bool:
    """Whether x holds no NaN and no inf. For real floats one min/max pass (NaN propagates through both, an
    inf is the min or the max): a layer checks its whole input per call, and isfinite(x).all() writes a
    boolean tensor of x's size and took 11 ms of a 300 ms Mamba layer step (B 4, L 4,096, d 128)."""
    if x.is_complex():
        return bool(torch.isfinite(x).all())
    if not x.is_floating_point() or x.numel() == 0:
        return True  # integers and empty tensors hold neither
    lo, hi = torch.aminmax(x)
    return bool(lo.isfinite() & hi.isfinite())


def check_finite(x: Tensor, owner: str, arg: str) -> None:
    """Raise a ValueError if x holds NaN or inf, when value checks are on for x's device."""
    if input_checks_enabled(x.device) and not _all_finite(x):
        raise ValueError(
            f"{owner}: {arg} contains NaN or inf (turn this check off with "
            "ssmzoo.layers.set_input_checks(False) or SSMZOO_CHECK_INPUTS=0)"
        )


def check_lengths(lengths: Tensor, x: Tensor, owner: str) -> Tensor:
    """``lengths`` (batch,) of right-padded x (batch, length, ...), on x's device: an integer tensor, and
    (a value check) each in [1, length]. Returns it on x's device."""
    if not isinstance(lengths, Tensor) or lengths.dim() != 1 or lengths.shape[0] != x.shape[0]:
        got = tuple(lengths.shape) if isinstance(lengths, Tensor) else type(lengths).__name__
        raise ValueError(f"{owner}: lengths must be a 1-D tensor of shape (batch={x.shape[0]},), got {got}")
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise ValueError(f"{owner}: lengths must be an integer tensor, got {lengths.dtype}")
    if lengths.is_meta and not x.is_meta:
        raise ValueError(f"{owner}: lengths is on the meta device (no values), x on {x.device}")
    lengths = lengths.to(x.device)
    if input_checks_enabled(lengths.device) and (bool((lengths < 1).any()) or bool((lengths > x.shape[1]).any())):
        raise ValueError(f"{owner}: lengths must lie in [1, length={x.shape[1]}], got {lengths.tolist()}")
    return lengths


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class DecodeBlock(NamedTuple):
    """One residual block of a language model, as a fused decoder sees it: x + mixer(norm(x)), then
    x + mlp(norm2(x)) where the block has an MLP (norm2 and mlp None otherwise)."""

    norm: nn.Module | None
    mixer: nn.Module
    norm2: nn.Module | None
    mlp: nn.Module | None


class DecodeStack(NamedTuple):
    """A whole language model, as a fused decoder sees it: token -> embedding -> blocks -> norm_f -> head.
    ``backend``: the decoder's backend the model was asked for (None: the decoder's default). ``head``: the LM
    head's weight, a tensor or an int8 matrix (``ssmzoo.ops.quantized``; ``LanguageModel.quantize``)."""

    embedding: Tensor
    blocks: tuple[DecodeBlock, ...]
    norm_f: nn.Module
    head: Any
    backend: str | None


class SharedMemory(nn.Module, metaclass=abc.ABCMeta):
    """A memory of a language model's residual stream at one depth, read by the :class:`MemoryReader` blocks
    above it (RAMba's chunk memory): it changes no token itself. ``forward(x, state)`` and ``step(x_t, state)``
    return (what readers get, the memory's next state); ``state`` None is a fresh memory."""

    @abc.abstractmethod
    def init_state(self, batch_size: int, device: torch.device | str | None, dtype: torch.dtype | None) -> State:
        ...

    @abc.abstractmethod
    def step(self, x_t: Tensor, state: State, check_state: bool = True) -> tuple[Any, State]:
        ...


class MemoryReader(nn.Module, metaclass=abc.ABCMeta):
    """A block mixer that reads the :class:`SharedMemory` below it: ``read(x, shared)`` for a sequence (batch,
    length, d_model), ``read_step(x_t, shared)`` for one token; it has no state of its own."""

    @abc.abstractmethod
    def read(self, x: Tensor, shared: Any) -> Tensor:
        ...

    @abc.abstractmethod
    def read_step(self, x_t: Tensor, shared: Any) -> Tensor:
        ...


# One token through a whole stack: (token (batch,), per-block states) -> (logits (batch, vocab), next states).
StackDecoder = Callable[[Tensor, list], tuple[Tensor, list]]


class SequenceLayer(nn.Module, metaclass=abc.ABCMeta):
    """Base class of every registered sequence layer.

    Class attributes a subclass may override:
      ``supported_dtypes``: the floating dtypes its ops accept; others get a ``ValueError``.
      ``segments_fast_path``: True when the layer computes packed documents (``segments``) in one pass of its
      own instead of the base class's exact fallback that runs every document alone.
      ``prefill_rows``: how many (batch x length) rows one forward call should take when a model prefills a
      long prompt: the prompt then runs in pieces, each continuing from the last one's state (exact by the
      contract). None: the whole prompt in one call.
    Instance attribute:
      ``causal``: True when the output at t depends only on inputs up to t; set in ``__init__``
      (a layer with ``bidirectional=True`` is not causal).
    """

    registry_name: ClassVar[str] = ""
    supported_dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.float32, torch.float64)
    prefill_rows: ClassVar[int | None] = None
    segments_fast_path: ClassVar[bool] = False
    # False where continuing from a given state takes a branch on the state's values (a stream resumed inside a
    # segment): such a call cannot be one static graph, and compiling it with fullgraph (or exporting) says so.
    compiles_with_state: ClassVar[bool] = True

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
        segments: Segments | None = None,
    ) -> Tensor | tuple[Tensor, State]:
        """x: (batch, length, d_model). ``lengths`` (batch,) marks right padding: outputs at real
        positions never depend on padded ones. ``segments`` (:class:`~ssmzoo.ops.segments.Segments`) marks
        packed documents: each is computed as if it ran alone, and ``state`` / the final state are then
        per document (leading size ``segments.num_docs``). Returns y, or (y, final_state) with return_state."""
        self._check_sequence(x)
        if not isinstance(return_state, bool):
            raise ValueError(f"{self._name}: return_state must be True or False, got {return_state!r}")
        if segments is not None:
            self._check_segments(segments, x)
            if lengths is not None:
                raise ValueError(f"{self._name}: give lengths or segments, not both (padding packed documents: "
                                 "make the padding a document of its own)")
        if lengths is not None:
            lengths = self._check_lengths(lengths, x)
        if not self.causal and (state is not None or return_state):
            raise ValueError(
                f"{self._name}: state passing needs a causal layer; this one is bidirectional "
                "(build it with bidirectional=False to stream)"
            )
        if state is not None:
            self._check_state(state, x, None if segments is None else segments.num_docs)
            if not self.compiles_with_state and torch.compiler.is_compiling():
                raise ValueError(f"{self._name}: continuing from a state branches on the state's values, so it cannot "
                                 "be compiled with fullgraph=True or exported; compile the fresh stream (no state), "
                                 "or compile without fullgraph (this call then runs eagerly)")
        if (return_state and lengths is not None and input_checks_enabled(lengths.device)
                and bool((lengths != x.shape[1]).any())):
            raise ValueError(
                f"{self._name}: return_state with padded sequences (lengths < length) is ambiguous; "
                "pass unpadded sequences to continue a stream"
            )
        if segments is not None and not segments.unpacked:
            y, new_state = self._forward_segments(x, state, segments, return_state)
        else:
            y, new_state = self._forward(x, state, lengths, return_state)
        return (y, new_state) if return_state else y

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> State:
        """The zero state for a fresh stream of ``batch_size`` sequences (on the parameters' device and
        in their dtype unless given)."""
        self._require_causal("init_state")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"{self._name}.init_state: batch_size must be a positive int, got {batch_size!r}")
        ref = self._reference_tensor()
        if device is not None:
            try:
                device = torch.device(device)
            except (RuntimeError, TypeError) as e:
                raise ValueError(f"{self._name}.init_state: device must be a torch.device or a device "
                                 f"string, got {device!r}") from e
        else:
            device = ref.device if ref is not None else torch.device("cpu")
        if dtype is None:
            dtype = ref.dtype if ref is not None else torch.get_default_dtype()
        if not isinstance(dtype, torch.dtype) or dtype not in self.supported_dtypes:
            names = ", ".join(map(_dtype_name, self.supported_dtypes))
            raise ValueError(f"{self._name}.init_state: dtype must be one of {names} (the input's dtype), got {dtype!r}")
        return self._init_state(batch_size, device, dtype)

    def step(self, x_t: Tensor, state: State, check_state: bool = True) -> tuple[Tensor, State]:
        """One token: x_t (batch, d_model) -> (y_t (batch, d_model), next state). ``check_state=False`` skips
        the state's check (a model decoding from its own prefill, where each token's check would cost more
        than the step of a small layer); x_t is always checked."""
        self._require_causal("step")
        self._check_tensor(x_t, "x_t", expected_rank=2, shape_doc="(batch, d_model)")
        if state is None:
            raise ValueError(f"{self._name}.step: state is None; start a stream with "
                             f"state = layer.init_state({x_t.shape[0]})")
        if check_state:
            self._check_state(state, x_t)
        return self._step(x_t, state)

    def final_state(self, x: Tensor, state: State | None = None, segments: Segments | None = None) -> State:
        """The state after x: ``forward(x, state, return_state=True, segments=segments)[1]``, skipping the
        output where the layer can (generation's prefill needs only the last layer's state and its last
        position's output)."""
        self._require_causal("final_state")
        self._check_sequence(x)
        if segments is not None:
            self._check_segments(segments, x)
        if state is not None:
            self._check_state(state, x, None if segments is None else segments.num_docs)
        if segments is not None and not segments.unpacked:
            return self._forward_segments(x, state, segments, True)[1]
        return self._final_state(x, state)

    @classmethod
    def stack_decoder(cls, stack: DecodeStack) -> StackDecoder | None:
        """A fused one-token step for a whole language model whose blocks this class can run in one call
        (generation asks the first block's mixer class once per ``generate``), or None: the model then steps
        block by block. The decoder takes states from the model's own prefill, unchecked."""
        return None

    # -- what subclasses implement ------------------------------------------------------------
    @abc.abstractmethod
    def _forward(
        self, x: Tensor, state: State | None, lengths: Tensor | None, return_state: bool
    ) -> tuple[Tensor, State | None]:
        """Map x (batch, length, d_model) to (y, final state); inputs are already validated. The final
        state may be None unless ``return_state`` (layers whose final state is costly skip it then)."""

    def _forward_segments(
        self, x: Tensor, state: State | None, segments: Segments, return_state: bool
    ) -> tuple[Tensor, State | None]:
        """``_forward`` on packed documents (validated; at least one row holds more than one document). The
        default runs every document alone through ``_forward`` (packing.py): exact for any layer. A layer with
        a faster exact form overrides this and sets ``segments_fast_path = True``."""
        return forward_each_document(self._forward, x, state, segments, return_state, self._name)

    def _final_state(self, x: Tensor, state: State | None) -> State:
        """``final_state`` from validated input; a layer whose state costs less than its output overrides it."""
        return self._forward(x, state, None, True)[1]

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> State:
        raise NotImplementedError(f"{self._name} is causal but does not implement _init_state")

    def _step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError(f"{self._name} is causal but does not implement _step")

    # -- validation ---------------------------------------------------------------------------
    @property
    def _name(self) -> str:
        return self.registry_name or type(self).__name__

    def _reference_tensor(self) -> Tensor | None:
        """The first floating parameter (else buffer): the layer's dtype and device."""
        for t in self.parameters():
            if t.is_floating_point():
                return t
        for t in self.buffers():
            if t.is_floating_point():
                return t
        return None

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
            names = ", ".join(map(_dtype_name, self.supported_dtypes))
            raise ValueError(f"{self._name}: {arg} has dtype {x.dtype}; this layer supports {names}")
        ref = self._reference_tensor()
        if ref is not None:
            if x.device != ref.device:
                raise ValueError(f"{self._name}: {arg} is on {x.device} but the layer's parameters are on "
                                 f"{ref.device}; move one to the other (layer.to({str(x.device)!r}) or "
                                 f"{arg}.to({str(ref.device)!r}))")
            if x.dtype != ref.dtype and not autocast_enabled(x.device):
                raise ValueError(f"{self._name}: {arg} has dtype {_dtype_name(x.dtype)} but the layer's parameters "
                                 f"are {_dtype_name(ref.dtype)}; convert one to match (layer.to({x.dtype}) or "
                                 f"{arg}.to({ref.dtype}))")
        check_finite(x, self._name, arg)

    def _check_lengths(self, lengths: Tensor, x: Tensor) -> Tensor:
        return check_lengths(lengths, x, self._name)

    def _state_form(self, batch: int, dtype: torch.dtype) -> State:
        """init_state(batch)'s form for inputs of ``dtype``, built on the meta device (no memory) and
        remembered per (batch, dtype): stepping checks it once per token."""
        if torch.compiler.is_compiling():
            # A compiled graph would guard on the weak table's keys (other layers, which come and go): build the
            # form afresh; its meta tensors are dead code in the graph.
            with torch.no_grad():
                return self._init_state(batch, torch.device("meta"), dtype)
        forms = _STATE_FORMS.setdefault(self, {})
        key = (batch, dtype)
        if key not in forms:
            with torch.no_grad():  # shapes and dtypes only: no graph back to the parameters
                forms[key] = self._init_state(batch, torch.device("meta"), dtype)
        return forms[key]

    def _expected_state(self, state: State, batch: int, dtype: torch.dtype) -> State:
        """The form a given ``state`` must have: init_state(batch)'s for inputs of ``dtype``. A layer whose state
        grows with the stream (a KV cache) overrides this to stretch that form to the given state's length."""
        return self._state_form(batch, dtype)

    def _check_segments(self, segments: Segments, x: Tensor) -> None:
        if not isinstance(segments, Segments):
            raise ValueError(f"{self._name}: segments must be a ssmzoo.Segments (Segments.from_seq_idx / "
                             f"from_cu_seqlens / from_lengths), got {type(segments).__name__}")
        if (segments.batch, segments.length) != tuple(x.shape[:2]):
            raise ValueError(f"{self._name}: segments describe a (batch, length) = {(segments.batch, segments.length)} "
                             f"input, but x has {tuple(x.shape[:2])}")
        if segments.device != x.device:
            raise ValueError(f"{self._name}: segments are on {segments.device} but x is on {x.device} "
                             f"(segments.to({str(x.device)!r}))")

    def _check_state(self, state: State, x: Tensor, batch: int | None = None) -> None:
        """Raise a ValueError unless ``state`` has the form of ``init_state(batch)`` for input x:
        the same structure, and leaves with the same shapes and dtypes, on x's device. ``batch``: the
        number of states expected (the documents of packed input), x's batch size by default."""
        batch = x.shape[0] if batch is None else batch
        expected = self._expected_state(state, batch, x.dtype)
        check_dtypes = not autocast_enabled(x.device)
        problem = _compare_state(state, expected, "state", x.device, check_dtypes)
        if problem is None:
            return
        path, want, got = problem
        hint = ""
        if (isinstance(got, Tensor) and isinstance(want, Tensor) and got.dim() == want.dim() and got.dim() > 0
                and got.shape[1:] == want.shape[1:] and got.shape[0] != want.shape[0]):
            hint = f" (the state has batch size {got.shape[0]} but the input has {_count(batch, x)})"
        like = "init_state(" + str(batch) + ")" + path.removeprefix("state")
        raise ValueError(f"{self._name}: {path} must be {_describe_expected(want, x.device)} like {like}, "
                         f"got {_describe(got)}{hint}")


def _count(batch: int, x: Tensor) -> str:
    """What ``batch`` counts in a state check's message: the input's batch size, or its packed documents."""
    return f"batch size {batch}" if batch == x.shape[0] else f"{batch} documents"


# The state forms each layer has been checked against (see SequenceLayer._state_form); weak, so a
# layer's entry goes with the layer and nothing extra is pickled or copied with it.
_STATE_FORMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _describe(value: Any) -> str:
    """A given state (or part of one), shortly: "float64 (2, 8, 4)", "a tuple of 2", "None"."""
    if isinstance(value, Tensor):
        where = f" on {value.device}" if value.device.type != "cpu" else ""
        return f"{_dtype_name(value.dtype)} {tuple(value.shape)}{where}"
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return f"a {type(value).__name__}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return "None" if value is None else f"a {type(value).__name__}"


def _describe_expected(value: Any, device: torch.device) -> str:
    """What a state (or part of one) must be: "a complex128 tensor of shape (2, 8, 4)", "a tuple of 2
    (float64 (2, 16, 2), float64 (2, 16, 4))", "a NeuralMemoryState(weights, momentum, ...)"."""
    if isinstance(value, Tensor):
        where = f" on {device}" if device.type != "cpu" else ""
        return f"a {_dtype_name(value.dtype)} tensor of shape {tuple(value.shape)}{where}"
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return f"a {type(value).__name__}({', '.join(value._fields)})"
    if isinstance(value, (tuple, list)):
        parts = ", ".join(f"{_dtype_name(v.dtype)} {tuple(v.shape)}" if isinstance(v, Tensor) else _describe(v)
                          for v in value)
        return f"a {type(value).__name__} of {len(value)} ({parts})"
    return _describe(value)


def _compare_state(
    got: Any, want: Any, path: str, device: torch.device, check_dtypes: bool
) -> tuple[str, Any, Any] | None:
    """The first place where ``got`` departs from ``want`` (structure, shape, dtype, device): (path,
    expected part, given part); None when they match."""
    if isinstance(want, Tensor):
        if not isinstance(got, Tensor) or got.shape != want.shape or got.device != device \
                or (check_dtypes and got.dtype != want.dtype):
            return path, want, got
        return None
    if isinstance(want, (tuple, list)):
        if type(got) is not type(want) or len(got) != len(want):
            return path, want, got
        fields = getattr(want, "_fields", None)
        for i, (g, w) in enumerate(zip(got, want)):
            problem = _compare_state(g, w, f"{path}.{fields[i]}" if fields else f"{path}[{i}]", device, check_dtypes)
            if problem is not None:
                return problem
        return None
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            return path, want, got
        for key in want:
            problem = _compare_state(got[key], want[key], f"{path}[{key!r}]", device, check_dtypes)
            if problem is not None:
                return problem
        return None
    return None if got == want else (path, want, got)


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
