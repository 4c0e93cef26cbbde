"""The Cauchy kernel of S4 (PAPERS.md): out[..., l] = Σ_n v_n / (z_l - w_n) + conj(v_n) / (z_l - conj(w_n)).

S4 stores one state entry of each conjugate pair, so the sum over all N entries is the sum over the
stored N/2 plus their conjugates (z is not real, so this is *not* 2 Re of the half sum).
v, w (..., N/2) complex (broadcastable), z (L,) complex; z is a constant (no gradient flows to it).

Backends (``backend=`` or env ``SSMZOO_BACKEND``):
- ``reference``: materialises (..., N/2, L); the readable definition, autograd does the rest.
- ``chunked``: PyTorch, walks L in chunks in forward *and* backward: O(N · chunk) memory per row.
- ``cpp``: csrc/cauchy.cpp, OpenMP forward and backward kernels, no intermediate at all (CPU).
- ``keops``: pykeops reductions (CPU or GPU), forward and backward formulas; O(N + L) memory.
``auto`` uses the reference while (..., N/2, L) is small, else the first usable of keops, cpp,
chunked — each only after a tiny probe run succeeded.

Gradients (torch's convention, g the upstream gradient, h = conj(g)):
    S1_n = Σ_l h_l / (z_l - w_n) + conj(h_l) / (conj(z_l) - w_n),   grad_v = conj(S1)
    S2_n = Σ_l h_l / (z_l - w_n)² + conj(h_l) / (conj(z_l) - w_n)², grad_w = conj(v S2)
"""

from __future__ import annotations

import importlib.util
from functools import cache

import torch
from einops import rearrange
from torch import Tensor

from .dispatch import Backend, Dispatcher
from .extension import load_cpu_extension


def cauchy_reference(v: Tensor, z: Tensor, w: Tensor) -> Tensor:
    """out (..., L) = Σ_n v_n / (z_l - w_n) + conj(v_n) / (z_l - conj(w_n)); materialises (..., N, L)."""
    v, w = v.unsqueeze(-1), w.unsqueeze(-1)
    return (v / (z - w) + v.conj() / (z - w.conj())).sum(-2)


def _grad_sums(w: Tensor, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """(S1, S2) (M, N) of the module docstring for one chunk of positions: h (M, Lc), z (Lc,)."""
    r1 = 1 / (z - w.unsqueeze(-1))  # (M, N, Lc)
    r2 = 1 / (z.conj() - w.unsqueeze(-1))
    t1, t2 = h.unsqueeze(-2) * r1, h.conj().unsqueeze(-2) * r2
    return (t1 + t2).sum(-1), (t1 * r1 + t2 * r2).sum(-1)


class _ChunkedCauchy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v: Tensor, z: Tensor, w: Tensor, chunk: int) -> Tensor:
        out = torch.empty(v.shape[0], z.shape[0], dtype=v.dtype, device=v.device)
        for start in range(0, z.shape[0], chunk):
            out[:, start : start + chunk] = cauchy_reference(v, z[start : start + chunk], w)
        ctx.save_for_backward(v, z, w)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        v, z, w = ctx.saved_tensors
        s1, s2 = torch.zeros_like(v), torch.zeros_like(v)
        for start in range(0, z.shape[0], ctx.chunk):
            a, b = _grad_sums(w, z[start : start + ctx.chunk], grad[:, start : start + ctx.chunk].conj())
            s1 += a
            s2 += b
        return s1.conj(), None, (v * s2).conj(), None


def cauchy_chunked(v: Tensor, z: Tensor, w: Tensor, chunk: int = 256) -> Tensor:
    """v, w (M, N), z (L,) -> (M, L) in O(M · N · chunk) memory, forward and backward."""
    return _ChunkedCauchy.apply(v, z, w, chunk)


# -- C++ (csrc/cauchy.cpp) -----------------------------------------------------------------------
def _cpp_module():
    return load_cpu_extension("ssmzoo_cauchy", "cauchy.cpp")


class _CppCauchy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v: Tensor, z: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(v, z, w)
        return _cpp_module().forward(v, z, w)

    @staticmethod
    def backward(ctx, grad: Tensor):
        v, z, w = ctx.saved_tensors
        grad_v, grad_w = _cpp_module().backward(v, z, w, grad.contiguous())
        return grad_v, None, grad_w


def cauchy_cpp(v: Tensor, z: Tensor, w: Tensor) -> Tensor:
    """v, w (M, N), z (L,) -> (M, L) with the OpenMP kernels of csrc/cauchy.cpp (CPU)."""
    return _CppCauchy.apply(v.contiguous(), z.contiguous(), w.contiguous())


# -- pykeops -------------------------------------------------------------------------------------
@cache
def _keops_reductions():
    """(forward, backward) Genred reductions; complex numbers as real 2-vectors (re, im)."""
    from pykeops.torch import Genred

    # forward: reduce over n (j) for each position l (i).
    fwd = Genred(
        "ComplexDivide(v, z - w) + ComplexDivide(Conj(v), z - Conj(w))",
        ["z = Vi(2)", "v = Vj(2)", "w = Vj(2)"],
        reduction_op="Sum",
        axis=1,
    )
    # backward: reduce over l (j) for each state entry n (i); output [S1, S2] side by side.
    t1 = "ComplexDivide(h, z - w)"
    t2 = "ComplexDivide(Conj(h), Conj(z) - w)"
    bwd = Genred(
        f"Concat({t1} + {t2}, ComplexDivide({t1}, z - w) + ComplexDivide({t2}, Conj(z) - w))",
        ["w = Vi(2)", "z = Vj(2)", "h = Vj(2)"],
        reduction_op="Sum",
        axis=1,
    )
    return fwd, bwd


def _as_pairs(x: Tensor) -> Tensor:
    return torch.view_as_real(x.resolve_conj().contiguous()).contiguous()


class _KeopsCauchy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v: Tensor, z: Tensor, w: Tensor) -> Tensor:
        fwd, _ = _keops_reductions()
        m = v.shape[0]
        zb = _as_pairs(z).expand(m, -1, -1).contiguous()  # (M, L, 2): batch dims must match exactly
        out = fwd(zb, _as_pairs(v), _as_pairs(w))
        ctx.save_for_backward(v, z, w)
        return torch.view_as_complex(out.contiguous())

    @staticmethod
    def backward(ctx, grad: Tensor):
        _, bwd = _keops_reductions()
        v, z, w = ctx.saved_tensors
        m = v.shape[0]
        zb = _as_pairs(z).expand(m, -1, -1).contiguous()
        sums = bwd(_as_pairs(w), zb, _as_pairs(grad.conj()))  # (M, N, 4)
        s1 = torch.view_as_complex(sums[..., :2].contiguous())
        s2 = torch.view_as_complex(sums[..., 2:].contiguous())
        return s1.conj(), None, (v * s2).conj()


def cauchy_keops(v: Tensor, z: Tensor, w: Tensor) -> Tensor:
    """v, w (M, N), z (L,) -> (M, L) with pykeops reductions (CPU or GPU), O(N + L) memory."""
    return _KeopsCauchy.apply(v, z, w)


# -- dispatch ------------------------------------------------------------------------------------
def _probe(fn_name: str):
    """A probe that runs backend ``fn_name`` (looked up at call time) forward and backward on a tiny
    input and compares it with the reference; any exception or mismatch marks the backend unusable."""

    def probe(device: torch.device) -> None:
        g = torch.Generator().manual_seed(0)
        v = torch.randn(2, 3, dtype=torch.complex64, generator=g).to(device).requires_grad_()
        w = (torch.randn(2, 3, dtype=torch.complex64, generator=g) - 1).to(device)
        z = torch.randn(5, dtype=torch.complex64, generator=g).to(device)
        out = globals()[fn_name](v, z, w)
        (grad,) = torch.autograd.grad(out.real.sum(), v)
        ref = cauchy_reference(v, z, w)
        (ref_grad,) = torch.autograd.grad(ref.real.sum(), v)
        if not (torch.allclose(out, ref, atol=1e-3) and torch.allclose(grad, ref_grad, atol=1e-3)):
            raise RuntimeError("probe output differs from the reference")

    return probe


_dispatch = Dispatcher("cauchy")
# Insertion order is auto's preference order (for inputs too large for the reference).
# On an idle CPU keops is 2-9x faster than our C++ kernel once its formulas are compiled (about 6 s each,
# once per machine; benchmarks/speed/results/s4_kernel.md), so auto tries it first where it is installed.
_dispatch.add(
    Backend("keops", cauchy_keops, ("cpu", "cuda"), lambda: importlib.util.find_spec("pykeops") is not None,
            _probe("cauchy_keops"))
)
_dispatch.add(Backend("cpp", cauchy_cpp, ("cpu",), lambda: _cpp_module() is not None, _probe("cauchy_cpp")))
_dispatch.add(Backend("chunked", cauchy_chunked, ("cpu", "cuda")))
_dispatch.add(Backend("reference", cauchy_reference, ("cpu", "cuda")))

# Below this many complex entries in (..., N, L), auto uses the (fast, simple) reference.
MATERIALISE_LIMIT = 2**20


def backend_names() -> list[str]:
    """Every backend this op has (usable here or not)."""
    return list(_dispatch.backends)


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends usable on ``device`` (probing them if needed), in auto's preference order."""
    return _dispatch.names(device)


def auto_backend(numel: int, device: torch.device) -> str:
    """The backend ``auto`` picks for a problem with ``numel`` = (rows · N · L) on ``device``."""
    if numel <= MATERIALISE_LIMIT:
        return "reference"
    return _dispatch.select("auto", device).name


def cauchy(v: Tensor, z: Tensor, w: Tensor, backend: str | None = None) -> Tensor:
    """out (..., L) = Σ_n v_n / (z_l - w_n) + conj(v_n) / (z_l - conj(w_n)).

    v, w (..., N) complex, broadcastable; z (L,) complex, same dtype, no gradient.
    ``backend``: "auto" (default), "reference", "chunked", "cpp" or "keops"."""
    for name, t in (("v", v), ("z", z), ("w", w)):
        if not isinstance(t, Tensor) or not t.is_complex():
            raise ValueError(f"cauchy: {name} must be a complex tensor, got {getattr(t, 'dtype', type(t))}")
    if not (v.dtype == z.dtype == w.dtype):
        raise ValueError(f"cauchy: v, z and w must share one dtype, got {v.dtype}, {z.dtype}, {w.dtype}")
    if z.dim() != 1 or z.shape[0] < 1:
        raise ValueError(f"cauchy: z must have shape (L,) with L >= 1, got {tuple(z.shape)}")
    if z.requires_grad:
        raise ValueError("cauchy: z is treated as a constant; pass z.detach()")
    try:
        shape = torch.broadcast_shapes(v.shape, w.shape)
    except RuntimeError as e:
        raise ValueError(f"cauchy: v {tuple(v.shape)} and w {tuple(w.shape)} must broadcast") from e
    if len(shape) < 1 or shape[-1] < 1:
        raise ValueError(f"cauchy: v and w need a last (state) dimension of size >= 1, got {tuple(shape)}")
    if backend is None:
        import os

        backend = os.environ.get("SSMZOO_BACKEND", "auto")
        backend = backend if backend in _dispatch.backends else "auto"
    if backend == "auto":
        backend = auto_backend(shape.numel() * z.shape[0], v.device)
    fn = _dispatch.select(backend, v.device).fn
    v2 = rearrange(v.expand(shape), "... n -> (...) n")
    w2 = rearrange(w.expand(shape), "... n -> (...) n")
    out = fn(v2, z, w2)
    return out.reshape(*shape[:-1], z.shape[0])
