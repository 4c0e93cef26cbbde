"""Attention against a literal softmax reference (per batch, head and query, masks written out
position by position, rotary as complex multiplication), forward and backward in float64; grouped KV
heads equal repeated KV heads; stepping with the KV cache equals forward; rotary sees relative
positions only."""

from __future__ import annotations

import math

import pytest
import torch

from ssmzoo.modules import Attention, KVCache, rotary
from ssmzoo.modules.attention import append_to_cache

F64 = torch.float64


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def make(seed=0, **args):
    torch.manual_seed(seed)
    attn = Attention(**{"d_model": 8, "heads": 2, **args}).double()
    with torch.no_grad():  # scale the projections up so the softmax is far from uniform
        attn.qkv.weight.mul_(3.0)
    return attn


def rotate_reference(t: torch.Tensor, positions: list[int], base: float) -> torch.Tensor:
    """t (n, d): each channel pair (t_2i, t_2i+1) as the complex number t_2i + i t_2i+1, times e^{i p θ_i}."""
    d = t.shape[-1]
    theta = base ** (-2 * torch.arange(d // 2, dtype=F64) / d)
    z = torch.view_as_complex(t.reshape(t.shape[0], d // 2, 2).contiguous())
    angle = torch.tensor(positions, dtype=F64)[:, None] * theta
    return torch.view_as_real(z * torch.polar(torch.ones_like(angle), angle)).reshape(t.shape)


def rotate_halves_reference(t: torch.Tensor, positions: list[int], base: float) -> torch.Tensor:
    """The halves pairing (channel i with i + d/2): the interleaved rotation of the channels reordered so that
    those pairs sit side by side, reordered back."""
    d = t.shape[-1]
    order = torch.stack([torch.arange(d // 2), torch.arange(d // 2) + d // 2], 1).flatten()  # 0, d/2, 1, d/2+1, ...
    out = torch.empty_like(t)
    out[..., order] = rotate_reference(t[..., order], positions, base)
    return out


def reference(attn: Attention, x, positions=None, context=None, context_positions=None, mask=None):
    """Literal attention: for each batch b, head h and query j, softmax over the keys it may see."""
    batch, n, _ = x.shape
    heads, kv_heads, hd = attn.heads, attn.kv_heads, attn.head_dim
    positions = list(range(n)) if positions is None else positions.tolist()

    def project(t):
        out = t @ attn.qkv.weight.T + (attn.qkv.bias if attn.qkv.bias is not None else 0)
        q = out[..., : heads * hd].unflatten(-1, (heads, hd))
        k = out[..., heads * hd : (heads + kv_heads) * hd].unflatten(-1, (kv_heads, hd))
        v = out[..., (heads + kv_heads) * hd :].unflatten(-1, (kv_heads, hd))
        return q, k, v  # (..., tokens, heads, hd)

    def rot(t, pos):
        if not attn.rotary:
            return t
        r = attn.rotary_dim  # partial rotary: only the first r channels turn
        turn = rotate_reference if attn.rotary_interleaved else rotate_halves_reference
        return torch.cat([turn(t[..., :r], pos, attn.rotary_base), t[..., r:]], -1)

    q, k, v = project(x)
    m = 0
    if context is not None:
        _, ck, cv = project(context)
        k, v = torch.cat([ck, k], -3), torch.cat([cv, v], -3)
        m = context.shape[1]
    key_positions = (context_positions.tolist() if context is not None else []) + positions
    pk = pv = None
    if attn.persistent is not None:
        _, pk, pv = project(attn.persistent)
    out = torch.zeros(batch, n, heads, hd, dtype=F64)
    group = heads // kv_heads
    for b in range(batch):
        for h in range(heads):
            g = h // group
            qh = rot(q[b, :, h], positions)
            kh = rot(k[b, :, g], key_positions)
            for j, p in enumerate(positions):
                keys, values = [], []
                if pk is not None:
                    keys.append(pk[:, g]), values.append(pv[:, g])
                seen = [i for i, s in enumerate(key_positions)
                        if (not attn.causal or s <= p) and (attn.window is None or abs(p - s) < attn.window)
                        and (mask is None or bool(mask[j, i]))]
                keys.append(kh[seen]), values.append(v[b, seen, g])
                keys, values = torch.cat(keys), torch.cat(values)
                scale = attn.scale if attn.scale is not None else 1 / math.sqrt(hd)
                weights = torch.softmax(keys @ qh[j] * scale, 0)
                out[b, j, h] = weights @ values
    assert m == 0 or len(key_positions) == m + n
    return attn.out(out.flatten(-2))


CASES = {
    "causal": dict(),
    "causal-window": dict(window=3),
    "bidirectional": dict(causal=False),
    "bidirectional-window": dict(causal=False, window=2),
    "gqa-persistent": dict(heads=4, kv_heads=2, persistent_tokens=3),
    "mqa-bias-no-rotary": dict(heads=4, kv_heads=1, bias=True, rotary=False),
    "head-dim": dict(head_dim=6, window=4, persistent_tokens=1),
    # the options converted checkpoints use: rotary by halves (transformers' rotate_half), on part of each head
    # (Bamba), another softmax scale and output width (Zamba2's shared attention over [x ‖ embedding])
    "halves": dict(rotary_interleaved=False, heads=1),
    "partial-halves-gqa": dict(heads=4, kv_heads=2, head_dim=8, rotary_dim=4, rotary_interleaved=False, bias=True),
    "partial-interleaved": dict(head_dim=6, rotary_dim=2, window=3),
    "scale-output": dict(scale=0.9, d_output=5, rotary_interleaved=False, rotary_base=500.0),
}


@pytest.mark.parametrize("case", CASES)
def test_equals_literal_reference_forward_and_backward(case):
    attn = make(**CASES[case])
    x = rand(2, 7, 8).requires_grad_()
    y, want = attn(x), reference(attn, x)
    torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-10)
    probe = rand(*y.shape, seed=1)
    leaves = [x, *attn.parameters()]
    got = torch.autograd.grad((y * probe).sum(), leaves)
    exp = torch.autograd.grad((want * probe).sum(), leaves)
    for a, b in zip(got, exp):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_context_tokens_positions_and_extra_mask():
    """Titans MAC's use: context tokens at the same relative positions as x, plus an explicit mask."""
    attn = make(persistent_tokens=2)
    x, context = rand(2, 5, 8).requires_grad_(), rand(2, 5, 8, seed=1)
    positions = torch.tensor([3, 4, 5, 6, 7])
    context_positions = torch.arange(5) + 3
    mask = rand(5, 10, seed=2) > -0.5
    mask[:, 5:] |= torch.eye(5, dtype=torch.bool)  # every query keeps itself
    y = attn(x, positions, context, context_positions, mask)
    want = reference(attn, x, positions, context, context_positions, mask)
    torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-10)
    (gx,) = torch.autograd.grad(y.sum(), x)
    (gw,) = torch.autograd.grad(want.sum(), x)
    torch.testing.assert_close(gx, gw)


@pytest.mark.parametrize("case", ["causal", "gqa-halves", "no-rotary-scale"])
@pytest.mark.parametrize("pieces", [[11], [1] * 11, [4, 1, 6], [5, 6]])
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no-grad"])  # no grad: the cache grows in place
def test_extend_over_a_cache_equals_forward(case, pieces, grad):
    """Tokens attended in pieces over the cache of all before them (prefill in pieces, then decoding) equal the
    whole sequence at once, outputs and cached keys (rotated) and values; a projection delta enters every piece
    as it would the whole sequence."""
    args = {"causal": dict(), "gqa-halves": dict(heads=4, kv_heads=2, rotary_dim=2, rotary_interleaved=False),
            "no-rotary-scale": dict(rotary=False, scale=0.3, d_output=3)}[case]
    attn = make(**args)
    x, delta = rand(2, 11, 8), 0.5 * rand(2, 11, attn.qkv.out_features, seed=3)
    want, want_keys, want_values = attn.extend(x, *(torch.zeros(2, attn.kv_heads, 0, attn.head_dim, dtype=F64),) * 2,
                                               delta=delta)
    torch.testing.assert_close(attn.extend(x, *(torch.zeros(2, attn.kv_heads, 0, attn.head_dim, dtype=F64),) * 2)[0],
                               attn(x), rtol=1e-10, atol=1e-10)
    keys = values = torch.zeros(2, attn.kv_heads, 0, attn.head_dim, dtype=F64)
    outs, start = [], 0
    with torch.set_grad_enabled(grad):
        for n in pieces:
            y, keys, values = attn.extend(x[:, start:start + n], keys, values, delta=delta[:, start:start + n])
            outs.append(y)
            start += n
    torch.testing.assert_close(torch.cat(outs, 1), want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(keys, want_keys, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(values, want_values, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(want, attn(x))  # the delta counts


def test_append_to_cache_keeps_every_state_a_value():
    """Without autograd the cache grows in place in a buffer, yet a state handed out earlier never changes: a second
    continuation of an older state copies instead of overwriting; with autograd it concatenates."""
    start = torch.zeros(1, 2, 0, 3)
    with torch.no_grad():
        a = append_to_cache(start, torch.full((1, 2, 4, 3), 1.0))
        b = append_to_cache(a, torch.full((1, 2, 1, 3), 2.0))
        assert b._base is a._base and b.shape[2] == 5  # grown in place
        c = append_to_cache(a, torch.full((1, 2, 2, 3), 3.0))  # another continuation of a
        assert c._base is not a._base
        d = append_to_cache(b, torch.full((1, 2, 1, 3), 4.0))
    assert a[0, 0, :, 0].tolist() == [1, 1, 1, 1]
    assert b[0, 0, :, 0].tolist() == [1, 1, 1, 1, 2]
    assert c[0, 0, :, 0].tolist() == [1, 1, 1, 1, 3, 3]
    assert d[0, 0, :, 0].tolist() == [1, 1, 1, 1, 2, 4]
    x = torch.ones(1, 2, 1, 3, requires_grad=True)
    e = append_to_cache(a, x)
    assert e._base is None and e.requires_grad  # concatenated: autograd keeps what it saved


def test_extend_refuses_what_it_cannot_cache():
    for args in (dict(window=3), dict(persistent_tokens=1), dict(causal=False)):
        attn = make(**args)
        with pytest.raises(ValueError, match="extend"):
            attn.extend(rand(1, 2, 8), torch.zeros(1, 2, 0, 4, dtype=F64), torch.zeros(1, 2, 0, 4, dtype=F64))


def test_rotary_halves_and_partial():
    """The halves pairing against its literal reference, relative positions only, and a partial rotary leaves
    the channels past rotary_dim alone."""
    q, k = rand(5, 8), rand(5, 8, seed=1)
    p, s = torch.tensor([0, 3, 7, 20, 100]), torch.tensor([2, 3, 1, 50, 0])
    torch.testing.assert_close(rotary(q, p, 500.0, interleaved=False), rotate_halves_reference(q, p.tolist(), 500.0))
    assert not torch.allclose(rotary(q, p, interleaved=False), rotary(q, p))
    scores = (rotary(q, p, interleaved=False) * rotary(k, s, interleaved=False)).sum(-1)
    shifted = (rotary(q, p + 9, interleaved=False) * rotary(k, s + 9, interleaved=False)).sum(-1)
    torch.testing.assert_close(scores, shifted, rtol=1e-10, atol=1e-10)
    attn = make(head_dim=8, heads=1, rotary_dim=4, rotary_interleaved=False)
    t = rand(1, 1, 5, 8)
    turned = attn._rotate(t, p)
    torch.testing.assert_close(turned[..., 4:], t[..., 4:], rtol=0, atol=0)
    torch.testing.assert_close(turned[0, 0, :, :4], rotate_halves_reference(t[0, 0, :, :4], p.tolist(), 10000.0))


def test_grouped_kv_heads_equal_repeated_kv_heads():
    gqa = make(heads=4, kv_heads=2, persistent_tokens=2, window=4)
    mha = make(seed=1, heads=4, persistent_tokens=2, window=4)
    hd = gqa.head_dim
    q_w, k_w, v_w = gqa.qkv.weight.split([4 * hd, 2 * hd, 2 * hd])
    repeat = lambda w: w.unflatten(0, (2, hd)).repeat_interleave(2, dim=0).flatten(0, 1)  # kv head g -> 2g, 2g+1
    with torch.no_grad():
        mha.qkv.weight.copy_(torch.cat([q_w, repeat(k_w), repeat(v_w)]))
        mha.out.weight.copy_(gqa.out.weight)
        mha.persistent.copy_(gqa.persistent)
    x = rand(2, 9, 8)
    torch.testing.assert_close(gqa(x), mha(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("args", [dict(), dict(window=3), dict(window=1), dict(heads=4, kv_heads=2, persistent_tokens=2)],
                         ids=["causal", "window3", "window1", "gqa-persistent"])
@pytest.mark.parametrize("prefill", [0, 1, 5])
def test_step_with_cache_equals_forward(args, prefill):
    attn = make(**args)
    x = rand(2, 11, 8)
    y = attn(x)
    if prefill:
        y0, cache = attn(x[:, :prefill], return_cache=True)
        outs = [y0]
    else:
        cache, outs = attn.init_cache(2), []
    for t in range(prefill, 11):
        y_t, cache = attn.step(x[:, t], cache)
        outs.append(y_t[:, None])
        kept = cache.keys.shape[2]
        assert kept == (t + 1 if attn.window is None else min(t + 1, attn.window - 1))
    assert isinstance(cache, KVCache) and int(cache.position) == 11
    torch.testing.assert_close(torch.cat(outs, 1), y, rtol=1e-10, atol=1e-10)


def test_rotary_sees_relative_positions_only():
    q, k = rand(5, 8), rand(5, 8, seed=1)
    p, s = torch.tensor([0, 3, 7, 20, 100]), torch.tensor([2, 3, 1, 50, 0])
    scores = (rotary(q, p) * rotary(k, s)).sum(-1)
    shifted = (rotary(q, p + 37) * rotary(k, s + 37)).sum(-1)
    torch.testing.assert_close(scores, shifted, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(rotary(q, p).norm(dim=-1), q.norm(dim=-1))  # a rotation
    torch.testing.assert_close(rotary(q, p), rotate_reference(q, p.tolist(), 10000.0))
    assert not torch.allclose((rotary(q, p) * rotary(k, s + 1)).sum(-1), scores)  # it does see the offset


def test_bad_arguments_and_inputs():
    for args, match in [(dict(heads=3), "heads=3"), (dict(kv_heads=3, heads=2), "kv_heads"),
                        (dict(head_dim=3), "even head_dim"), (dict(window=0), "window"),
                        (dict(persistent_tokens=-1), "persistent_tokens"), (dict(causal="yes"), "causal"),
                        (dict(rotary_dim=6), "rotary_dim"), (dict(rotary_dim=3), "even"), (dict(scale=0.0), "scale"),
                        (dict(d_output=0), "d_output"), (dict(rotary_interleaved=1), "rotary_interleaved")]:
        with pytest.raises(ValueError, match=match):
            Attention(**{"d_model": 8, "heads": 2, **args})
    attn = make()
    x = rand(2, 5, 8)
    for kwargs, match in [(dict(x=rand(2, 5, 7)), "d_model=8"), (dict(positions=torch.arange(4)), "positions"),
                          (dict(positions=torch.arange(5.0)), "integer"), (dict(context=rand(2, 3, 8)), "context_positions"),
                          (dict(mask=torch.ones(5, 6, dtype=torch.bool)), "mask"), (dict(mask=torch.ones(5, 5)), "bool"),
                          (dict(context=rand(2, 3, 8), context_positions=torch.arange(3), return_cache=True), "return_cache")]:
        with pytest.raises(ValueError, match=match):
            attn(**{"x": x, **kwargs})
    with pytest.raises(ValueError, match="causal"):
        make(causal=False).step(x[:, 0], attn.init_cache(2))
    with pytest.raises(ValueError, match="KVCache"):
        attn.step(x[:, 0], (torch.zeros(2, 2, 0, 4), torch.zeros(2, 2, 0, 4)))
    with pytest.raises(ValueError, match="cache.keys"):
        attn.step(x[:, 0], attn.init_cache(3))
