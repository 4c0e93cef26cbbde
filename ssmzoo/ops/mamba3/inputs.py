"""Everything one ``mamba3`` call takes (:class:`Mamba3Inputs`), its state (:class:`Mamba3State`), and every
argument check of the op (:func:`check_mamba3`): a ValueError naming the op and the argument, before any
backend sees the input. Backends never re-validate.

Shapes (SISO; MIMO adds a ``rank`` axis where marked, mamba-ssm's layout):
    x, z            (batch, length, heads, headdim)
    dt, A, trap     (batch, length, heads)
    B, C            (batch, length, groups, d_state)            MIMO: (batch, length, rank, groups, d_state)
    angles          (batch, length, heads, n_angles)            n_angles <= d_state // 2
    B_bias, C_bias  (heads, d_state)                            MIMO: (heads, rank, d_state)
    D               (heads,)
    mimo_x, mimo_z, mimo_o   (heads, rank, headdim)             MIMO only
State (one per sequence: per row, or per document with ``segments``):
    angle (num, heads, n_angles), ssm (num, heads, headdim, d_state), k (num, heads, d_state)
    (MIMO: (num, heads, rank, d_state)), v (num, heads, headdim).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..segments import Segments

OP = "mamba3"
ROTARY = ("interleaved", "halves")


class Mamba3State(NamedTuple):
    """The recurrent state of Mamba-3 between two calls (mamba-ssm's four: angle, SSM, K and V states).

    angle: the cumulative rotary phase φ in [0, 2π) (num, heads, n_angles);
    ssm: h, (num, heads, headdim, d_state);
    k: the last token's rotated key B̄ (bias added), (num, heads, d_state) or MIMO (num, heads, rank, d_state);
    v: the last token's x (before MIMO's up-projection), (num, heads, headdim).
    The trapezoidal rule's next step reads the last token's k and v (its "left endpoint" term)."""

    angle: Tensor
    ssm: Tensor
    k: Tensor
    v: Tensor


class Mamba3Inputs(NamedTuple):
    """One ``mamba3`` call (see the module docstring for shapes; ``ssmzoo.ops.mamba3.mamba3`` for the math)."""

    x: Tensor
    dt: Tensor
    A: Tensor
    B: Tensor
    C: Tensor
    trap: Tensor
    angles: Tensor
    B_bias: Tensor | None = None
    C_bias: Tensor | None = None
    D: Tensor | None = None
    z: Tensor | None = None
    mimo_x: Tensor | None = None
    mimo_z: Tensor | None = None
    mimo_o: Tensor | None = None
    rotary: str | None = None
    chunk_size: int = 64
    initial_state: Mamba3State | None = None
    segments: Segments | None = None

    @property
    def mimo(self) -> bool:
        return self.B.dim() == 5

    @property
    def rank(self) -> int:
        return self.B.shape[2] if self.mimo else 1

    @property
    def pairs(self) -> str:
        """The rotary pairing: as given, else mamba-ssm's kernels' (SISO interleaved, MIMO halves)."""
        return self.rotary if self.rotary is not None else ("halves" if self.mimo else "interleaved")

    @property
    def num_states(self) -> int:
        return self.segments.num_docs if self.segments is not None else self.x.shape[0]


def compute_dtype(x: Tensor) -> torch.dtype:
    """float64 for float64 inputs, else float32 (half inputs compute and keep their state in float32)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _real(name: str, t: object, optional: bool = False) -> Tensor | None:
    if t is None and optional:
        return None
    if not isinstance(t, Tensor):
        raise ValueError(f"{OP}: {name} must be a tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{OP}: {name} must be a real floating tensor, got {t.dtype}")
    return t


def _expect(name: str, t: Tensor | None, shape: tuple[int, ...], doc: str) -> None:
    if t is not None and tuple(t.shape) != shape:
        raise ValueError(f"{OP}: {name} must be {doc} = {shape}, got {_shape(t)}")


def check_mamba3(inputs: Mamba3Inputs, output_final_state: bool = False) -> None:
    """Every check of the op's arguments (shapes with names, dtypes, devices, options)."""
    if not isinstance(inputs, Mamba3Inputs):
        raise ValueError(f"{OP}: expected a Mamba3Inputs, got {type(inputs).__name__}")
    if not isinstance(output_final_state, bool):
        raise ValueError(f"{OP}: output_final_state must be True or False, got {output_final_state!r}")
    x = _real("x", inputs.x)
    if x.dim() != 4 or 0 in x.shape:
        raise ValueError(f"{OP}: x must be (batch, length, heads, headdim) with every size >= 1, got {_shape(x)}")
    batch, length, heads, headdim = x.shape
    per_token = (batch, length, heads)
    for name in ("dt", "A", "trap"):
        _expect(name, _real(name, getattr(inputs, name)), per_token, "(batch, length, heads)")
    B, C = _real("B", inputs.B), _real("C", inputs.C)
    if B.dim() not in (4, 5) or B.shape[:2] != (batch, length) or 0 in B.shape:
        raise ValueError(f"{OP}: B must be (batch={batch}, length={length}, groups, d_state) (SISO) or (batch, "
                         f"length, rank, groups, d_state) (MIMO), got {_shape(B)}")
    mimo = B.dim() == 5
    groups, d_state = B.shape[-2], B.shape[-1]
    rank = B.shape[2] if mimo else 1
    if heads % groups:
        raise ValueError(f"{OP}: the groups of B and C ({groups}) must divide x's heads ({heads})")
    if C.shape != B.shape:
        raise ValueError(f"{OP}: C must have B's shape {_shape(B)}, got {_shape(C)}")
    angles = _real("angles", inputs.angles)
    if angles.dim() != 4 or angles.shape[:3] != per_token:
        raise ValueError(f"{OP}: angles must be (batch={batch}, length={length}, heads={heads}, n_angles), "
                         f"got {_shape(angles)}")
    n_angles = angles.shape[3]
    rotary = inputs.rotary
    if rotary is not None and rotary not in ROTARY:
        raise ValueError(f"{OP}: rotary must be None, 'interleaved' or 'halves', got {rotary!r}")
    pairs = rotary if rotary is not None else ("halves" if mimo else "interleaved")
    if 2 * n_angles > d_state or (pairs == "halves" and d_state % 2):
        raise ValueError(f"{OP}: angles rotate pairs of B and C's d_state={d_state} entries: n_angles must be "
                         f"<= d_state // 2 (and d_state even for rotary='halves'), got n_angles={n_angles}")
    bias_shape = (heads, rank, d_state) if mimo else (heads, d_state)
    bias_doc = "(heads, rank, d_state)" if mimo else "(heads, d_state)"
    for name in ("B_bias", "C_bias"):
        _expect(name, _real(name, getattr(inputs, name), optional=True), bias_shape, bias_doc)
    _expect("D", _real("D", inputs.D, optional=True), (heads,), "(heads,)")
    _expect("z", _real("z", inputs.z, optional=True), tuple(x.shape), "x's shape (batch, length, heads, headdim)")
    mimo_shape = (heads, rank, headdim)
    for name in ("mimo_x", "mimo_z", "mimo_o"):
        t = _real(name, getattr(inputs, name), optional=True)
        if t is not None and not mimo:
            raise ValueError(f"{OP}: {name} is for MIMO inputs (B and C with a rank axis); these are SISO")
        _expect(name, t, mimo_shape, "(heads, rank, headdim)")
    if mimo and inputs.mimo_x is None:
        raise ValueError(f"{OP}: MIMO inputs need mimo_x (heads={heads}, rank={rank}, headdim={headdim}), the "
                         "up-projection of x to the rank")
    if mimo and (inputs.z is None) != (inputs.mimo_z is None):
        raise ValueError(f"{OP}: MIMO inputs take z and mimo_z together (the gate of rank r is silu(z * "
                         "mimo_z[:, r])): give both or neither")
    chunk = inputs.chunk_size
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"{OP}: chunk_size must be a positive int, got {chunk!r}")
    segments = inputs.segments
    if segments is not None:
        if not isinstance(segments, Segments):
            raise ValueError(f"{OP}: segments must be a ssmzoo.Segments or None, got {type(segments).__name__}")
        if (segments.batch, segments.length) != (batch, length):
            raise ValueError(f"{OP}: segments describe a (batch, length) = {(segments.batch, segments.length)} "
                             f"input, but x has {(batch, length)}")
        if segments.device != x.device:
            raise ValueError(f"{OP}: segments must be on x's device {x.device}, got {segments.device}")
    num = segments.num_docs if segments is not None else batch
    state = inputs.initial_state
    if state is not None:
        if not isinstance(state, tuple) or len(state) != 4:
            raise ValueError(f"{OP}: initial_state must be a Mamba3State(angle, ssm, k, v), got "
                             f"{type(state).__name__}")
        who = "document" if segments is not None else "row"
        k_shape = (num, heads, rank, d_state) if mimo else (num, heads, d_state)
        for name, t, shape in (("angle", state[0], (num, heads, n_angles)),
                               ("ssm", state[1], (num, heads, headdim, d_state)),
                               ("k", state[2], k_shape), ("v", state[3], (num, heads, headdim))):
            _real(f"initial_state.{name}", t)
            if tuple(t.shape) != shape:
                raise ValueError(f"{OP}: initial_state.{name} must be {shape}, one per {who}, got {_shape(t)}")
    named = {"x": x, "dt": inputs.dt, "A": inputs.A, "B": B, "C": C, "trap": inputs.trap, "angles": angles,
             "B_bias": inputs.B_bias, "C_bias": inputs.C_bias, "D": inputs.D, "z": inputs.z,
             "mimo_x": inputs.mimo_x, "mimo_z": inputs.mimo_z, "mimo_o": inputs.mimo_o}
    if state is not None:
        named.update({f"initial_state.{f}": t for f, t in zip(Mamba3State._fields, state)})
    for name, t in named.items():
        if t is not None and t.device != x.device:
            raise ValueError(f"{OP}: {name} must be on x's device {x.device}, got {t.device}")


def fake_mamba3(inputs: Mamba3Inputs, output_final_state: bool = False) -> Tensor | tuple[Tensor, Mamba3State]:
    """Empty outputs shaped and typed like the reference's (the custom operators' fake implementation)."""
    x = inputs.x
    batch, length, heads, headdim = x.shape
    if inputs.mimo and inputs.mimo_o is None:
        y = x.new_empty(batch, length, inputs.rank, heads, headdim)
    else:
        y = x.new_empty(batch, length, heads, headdim)
    if not output_final_state:
        return y
    num, dtype, d_state = inputs.num_states, compute_dtype(x), inputs.B.shape[-1]
    k = (num, heads, inputs.rank, d_state) if inputs.mimo else (num, heads, d_state)
    return y, Mamba3State(x.new_empty(num, heads, inputs.angles.shape[-1], dtype=dtype),
                          x.new_empty(num, heads, headdim, d_state, dtype=dtype), x.new_empty(k, dtype=dtype),
                          x.new_empty(num, heads, headdim, dtype=dtype))
