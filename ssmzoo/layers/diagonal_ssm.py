"""What S5 and the LRU share: a diagonal complex recurrence between an input and an output matrix.

    h_t = λ ⊙ h_{t-1} + B̄ u_t,     y_t = s · Re(C h_t) + D ⊙ u_t,     out = gated_output(y)

(s = 2 for S5's conjugate-symmetric half state, 1 for the LRU). Whole sequences, packed documents and the
anti-causal direction of a bidirectional layer all go through one op, ``ssmzoo.ops.diagonal_recurrence``; the
bidirectional form adds s · Re(C' h'_t) with h'_t = λ ⊙ h'_{t+1} + B̄ u_t, sharing λ and B̄ as S5's code does.
A subclass defines ``_discrete`` (λ and B̄) and holds ``C`` (directions, d_model, N, 2), ``D`` and ``out``.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from ..ops import diagonal_recurrence as recurrence_op
from ..ops.diagonal_recurrence import diagonal_recurrence
from ..ops.segments import Segments
from .base import SequenceLayer


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """The recurrence and its projections outside autocast: complex numbers have no bfloat16 form, and a long
    recurrence in half precision loses its memory. The output stage after it may still autocast."""
    try:
        return torch.autocast(device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know (meta)
        return contextlib.nullcontext()


class DiagonalSSMLayer(SequenceLayer):
    """Base of S5 and LRU (not registered). Subclasses set ``readout_scale``, ``bidirectional``,
    ``recurrence_backend`` and the parameters named in the module docstring."""

    readout_scale: float = 1.0
    segments_fast_path = True
    bidirectional: bool
    recurrence_backend: str | None
    C: Tensor
    D: Tensor

    def _discrete(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(λ (N,), B̄ (N, d_model)), complex of the given dtype."""
        raise NotImplementedError

    def _inputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(λ, B̄ u (batch, length, N)) for x (batch, length, d_model); real x times complex B̄ in real arithmetic."""
        lam, b = self._discrete(complex_dtype(x.dtype))
        return lam, torch.complex(x @ b.real.T, x @ b.imag.T)

    def _readout(self, h: Tensor, direction: int) -> Tensor:
        """s · Re(C h) (batch, ..., d_model) for states h (batch, ..., N)."""
        c = torch.view_as_complex(self.C[direction]).to(h.dtype)
        return self.readout_scale * (h.real @ c.real.T - h.imag @ c.imag.T)

    def _run(self, x: Tensor, state: Tensor | None, return_state: bool, segments: Segments | None,
             lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
        with full_precision(x.device):
            y, final = self._ssm(x, state, return_state, segments, lengths)
        return self.out(y), final

    def _ssm(self, x: Tensor, state: Tensor | None, return_state: bool, segments: Segments | None,
             lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """y = s · Re(C h) + D u (and the backward direction's readout), and the final state."""
        lam, bu = self._inputs(x)
        if lengths is not None and self.bidirectional:
            # The backward direction starts at the row's end: padding must enter it as zeros.
            real = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
            bu = torch.where(real[..., None], bu, torch.zeros((), dtype=bu.dtype, device=bu.device))
        want_state = return_state and self.causal
        out = diagonal_recurrence(bu, lam, initial_state=state, output_final_state=want_state, segments=segments,
                                  backend=self.recurrence_backend)
        h, final = out if want_state else (out, None)
        y = self._readout(h, 0) + self.D * x
        if self.bidirectional:
            back = diagonal_recurrence(bu, lam, reverse=True, segments=segments, backend=self.recurrence_backend)
            y = y + self._readout(back, 1)
        return y.to(x.dtype), final

    def _forward(self, x: Tensor, state: Tensor | None, lengths: Tensor | None,
                 return_state: bool) -> tuple[Tensor, Tensor | None]:
        return self._run(x, state, return_state, None, lengths)

    def _forward_segments(self, x: Tensor, state: Tensor | None, segments: Segments,
                          return_state: bool) -> tuple[Tensor, Tensor | None]:
        return self._run(x, state, return_state, segments, None)

    def _final_state(self, x: Tensor, state: Tensor | None) -> Tensor:
        with full_precision(x.device):
            lam, bu = self._inputs(x)
            return diagonal_recurrence(bu, lam, initial_state=state, output_final_state=True,
                                       backend=self.recurrence_backend)[1]

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The state: (batch, N) complex (complex128 for float64 inputs, else complex64)."""
        return torch.zeros(batch_size, self.C.shape[2], dtype=complex_dtype(dtype), device=device)

    def _step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        with full_precision(x_t.device):
            lam, b = self._discrete(state.dtype)
            state = lam * state + torch.complex(x_t @ b.real.T, x_t @ b.imag.T)
            y = self._readout(state, 0) + self.D * x_t
        return self.out(y.to(x_t.dtype)), state


def check_recurrence_backend(owner: str, backend: str | None) -> None:
    recurrence_op.dispatch.check_name(backend, owner, "diagonal_recurrence_backend")
