"""The gated_deltanet layer against transformers' Qwen3-Next linear-attention layer: one ``Qwen3NextGatedDeltaNet``
state dict loads into ``GatedDeltaNet`` by name and gives the same output. (The layer contract itself, packed
documents included, is tests/test_conformance.py's.)"""

from __future__ import annotations

import pytest
import torch

from ssmzoo import GatedDeltaNet
from ssmzoo.ops.segments import Segments


def qwen3_next_layer(num_k_heads: int, num_v_heads: int, seed: int = 0):
    modeling = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")
    from transformers import Qwen3NextConfig

    config = Qwen3NextConfig(hidden_size=16, num_hidden_layers=1, layer_types=["linear_attention"],
                             linear_num_key_heads=num_k_heads, linear_num_value_heads=num_v_heads,
                             linear_key_head_dim=8, linear_value_head_dim=6, linear_conv_kernel_dim=4,
                             rms_norm_eps=1e-6, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                             intermediate_size=32, vocab_size=32)
    torch.manual_seed(seed)
    layer = modeling.Qwen3NextGatedDeltaNet(config, layer_idx=0)
    with torch.no_grad():  # every parameter random (the module's own init leaves dt_bias and the norm at ones)
        for name, p in layer.named_parameters():
            scale = 0.5 if name in ("dt_bias", "A_log", "norm.weight") else 0.3
            p.copy_(torch.randn_like(p) * scale + (1.0 if name == "norm.weight" else 0.0))
    return layer.eval(), config


@pytest.mark.parametrize("num_k_heads,num_v_heads", [(2, 4), (2, 2)])
def test_qwen3_next_state_dict_loads_and_gives_its_output(num_k_heads, num_v_heads):
    hf, config = qwen3_next_layer(num_k_heads, num_v_heads)
    ours = GatedDeltaNet(d_model=config.hidden_size, num_k_heads=num_k_heads, num_v_heads=num_v_heads,
                         head_k_dim=config.linear_key_head_dim, head_v_dim=config.linear_value_head_dim,
                         conv_kernel_size=config.linear_conv_kernel_dim, norm_eps=config.rms_norm_eps).eval()
    missing = ours.load_state_dict(hf.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    x = torch.randn(2, 70, config.hidden_size, generator=torch.Generator().manual_seed(1))  # > one chunk of 64
    with torch.no_grad():
        want = hf(x)
        for backend in ("reference", "chunked", "cpu"):
            ours.gated_delta_backend = backend
            torch.testing.assert_close(ours(x), want, rtol=1e-5, atol=1e-5)


def test_qwen3_next_output_continues_through_our_state():
    # Our state after a prefix, carried into the rest, still gives the transformers layer's output on the whole.
    hf, config = qwen3_next_layer(2, 4, seed=3)
    ours = GatedDeltaNet(d_model=16, num_k_heads=2, num_v_heads=4, head_k_dim=8, head_v_dim=6).eval()
    ours.load_state_dict(hf.state_dict())
    x = torch.randn(1, 23, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = hf(x)
        y1, state = ours(x[:, :10], return_state=True)
        y2, state = ours(x[:, 10:20], state=state, return_state=True)
        steps = []
        for t in range(20, 23):
            y_t, state = ours.step(x[:, t], state)
            steps.append(y_t)
    torch.testing.assert_close(torch.cat([y1, y2, torch.stack(steps, 1)], 1), want, rtol=1e-5, atol=1e-5)


def test_packed_documents_match_qwen3_next_per_document():
    hf, _ = qwen3_next_layer(2, 4, seed=4)
    ours = GatedDeltaNet(d_model=16, num_k_heads=2, num_v_heads=4, head_k_dim=8, head_v_dim=6).eval()
    ours.load_state_dict(hf.state_dict())
    x = torch.randn(2, 12, 16, generator=torch.Generator().manual_seed(5))
    segments = Segments.from_lengths([[5, 1, 6], [12]], 12)
    with torch.no_grad():
        y = ours(x, segments=segments)
        for s in segments.spans:
            torch.testing.assert_close(y[s.row, s.start:s.stop], hf(x[s.row:s.row + 1, s.start:s.stop])[0],
                                       rtol=1e-5, atol=1e-5)


def test_bad_head_counts_are_named():
    with pytest.raises(ValueError, match="GatedDeltaNet: num_v_heads must be a multiple of num_k_heads=2"):
        GatedDeltaNet(d_model=8, num_k_heads=2, num_v_heads=3)
    with pytest.raises(ValueError, match="gated_delta_backend"):
        GatedDeltaNet(d_model=8, gated_delta_backend="nope")
