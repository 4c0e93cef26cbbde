"""One HSA call's inputs (:class:`HSAInputs`) and every check of them (:func:`check_hsa`): a clear ValueError
naming the argument, before any backend sees the input."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from ..checks import one_device, positive_int, shape

OP = "hsa"
COMBINES = ("stick_breaking", "softmax")


class HSAInputs(NamedTuple):
    """q (batch, Lq, hq, d) queries from absolute position ``offset``; k, v (batch, Lk, hk, d) from position 0;
    landmarks (batch, ceil(Lk / chunk_size), hk, d_sel); chunk_size S; top_k K; combine "stick_breaking" or
    "softmax"; scale the in-chunk logit scale (None: 1/√d); selection_q (batch, Lq, hs, d_sel) or None
    (see :func:`ssmzoo.ops.hsa.hsa`)."""

    q: Tensor
    k: Tensor
    v: Tensor
    landmarks: Tensor
    chunk_size: int
    top_k: int
    combine: str = "stick_breaking"
    scale: float | None = None
    offset: int = 0
    selection_q: Tensor | None = None


def check_hsa(x: HSAInputs) -> None:
    q, k, v, landmarks, chunk_size, top_k, combine, scale, offset, selection_q = x
    named = {"q": q, "k": k, "v": v, "landmarks": landmarks}
    if selection_q is not None:
        named["selection_q"] = selection_q
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise ValueError(f"hsa: {name} must be a tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"hsa: {name} must have 4 dims, got shape {shape(t)}")
        if not t.is_floating_point():
            raise ValueError(f"hsa: {name} must be a floating tensor, got {t.dtype}")
    dtypes = {str(t.dtype).removeprefix("torch.") for t in named.values()}
    if len(dtypes) > 1:
        raise ValueError("hsa: q, k, v, landmarks (and selection_q) must share one dtype, got "
                         + ", ".join(f"{n} {str(t.dtype).removeprefix('torch.')}" for n, t in named.items()))
    one_device(OP, named)
    positive_int(OP, "chunk_size", chunk_size)
    positive_int(OP, "top_k", top_k)
    if combine not in COMBINES:
        raise ValueError(f"hsa: combine must be one of {COMBINES}, got {combine!r}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0):
        raise ValueError(f"hsa: scale must be None or a positive number, got {scale!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"hsa: offset must be an int >= 0 (the absolute position of q[:, 0]), got {offset!r}")

    batch, length, hq, d = q.shape
    if length < 1:
        raise ValueError(f"hsa: q must have length >= 1, got shape {shape(q)}")
    if batch < 1 or hq < 1 or d < 1:
        raise ValueError(f"hsa: q must be (batch, length, heads, d) with every size >= 1, got {shape(q)}")
    if k.shape[0] != batch or k.shape[3] != d or k.shape[2] < 1 or hq % k.shape[2] != 0:
        raise ValueError(f"hsa: k must be (batch={batch}, Lk, hk, d={d}) with hk dividing q's {hq} heads, "
                         f"got shape {shape(k)}")
    if v.shape != k.shape:
        raise ValueError(f"hsa: v must have k's shape {shape(k)}, got {shape(v)}")
    keys, hk = k.shape[1], k.shape[2]
    sq = q if selection_q is None else selection_q
    if selection_q is not None:
        hs = selection_q.shape[2]
        if selection_q.shape[:2] != (batch, length) or hs < 1 or hq % hs != 0 or hs % hk != 0:
            raise ValueError(f"hsa: selection_q must be (batch={batch}, Lq={length}, hs, d_sel) with hk={hk} "
                             f"dividing hs and hs dividing hq={hq}, got shape {shape(selection_q)}")
    n_chunks = -(-keys // chunk_size)
    want = (batch, n_chunks, hk, sq.shape[3])
    if tuple(landmarks.shape) != want:
        raise ValueError(f"hsa: landmarks must be (batch={batch}, ceil(Lk / chunk_size)={n_chunks}, hk={hk}, "
                         f"d_sel={sq.shape[3]}) for Lk={keys} keys, got shape {shape(landmarks)}")
    # The last query may see every chunk complete before it: k must hold them all.
    needed = (offset + length - 1) // chunk_size * chunk_size
    if keys < needed:
        raise ValueError(f"hsa: k holds {keys} keys, but the query at position {offset + length - 1} sees the "
                         f"chunks before position {needed}; pass k, v and landmarks from position 0 "
                         f"(offset={offset} is q's absolute position)")


def fake_hsa(x: HSAInputs) -> Tensor:
    """Empty output shaped and typed like the reference's (the custom operators' fake implementation)."""
    return x.q.new_empty(*x.q.shape[:-1], x.v.shape[-1])
