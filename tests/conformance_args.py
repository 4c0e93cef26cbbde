"""Small constructor arguments per registered layer, so the conformance suite runs fast.

A layer that is not listed here is still tested, with its defaults and d_model=D_MODEL."""

D_MODEL = 8

SMALL_ARGS: dict[str, dict] = {
    "s4": dict(d_state=8),
    "s4d": dict(d_state=8),
    "s5": dict(d_state=8, blocks=2),
    "lru": dict(d_state=6, r_min=0.5, r_max=0.95),
    "companion": dict(d_state=6, heads=2, kernel_repeat=2),
    "shift": dict(d_state=5, heads=2),
    "differencing": dict(orders=[0, 1, 2]),
    "moving_average_residual": dict(windows=[2, 5]),
    "neural_memory": dict(heads=2, memory_depth=2, chunk_size=4, conv_kernel=3),
    "mamba": dict(d_state=4, d_conv=3, expand=2),
    "hsa": dict(heads=2, kv_heads=1, retrieval_heads=2, chunk_size=4, top_k=2),
    "swa": dict(heads=2, kv_heads=1, window=5, persistent_tokens=2),
    # grouped heads, a partial rotary by halves (Bamba's), another softmax scale
    "attention": dict(heads=2, kv_heads=1, rotary_dim=2, rotary_interleaved=False, scale=0.4),
    "memory_as_gate": dict(heads=2, window=5, persistent_tokens=2, memory_heads=2, memory_chunk=4),
    "memory_as_context": dict(heads=2, segment_len=4, persistent_tokens=2, memory_heads=2),
    # 4 heads of 4 channels in 2 groups; chunks of 4 so the conformance lengths span several chunks
    "mamba2": dict(d_state=4, d_conv=3, expand=2, headdim=4, ngroups=2, chunk_size=4),
    # 4 heads of 4 channels in 2 groups, N 8 (2 rotated pairs); chunks of 4 so the conformance lengths span several
    "mamba3": dict(d_state=8, expand=2, headdim=4, ngroups=2, chunk_size=4),
    # Falcon-H1's block: Mamba-2 (its own D_inner, in_proj multipliers, no gated norm) beside attention, with
    # input and output multipliers
    "parallel": dict(layers=[
        {"layer": "mamba2", "args": dict(d_state=4, d_conv=3, d_inner=12, headdim=4, chunk_size=4, rmsnorm=False,
                                         in_proj_multipliers=(0.5, 1.5, 0.7, 1.3, 0.9)),
         "in_multiplier": 0.8, "out_multiplier": 1.7},
        {"layer": "attention", "args": dict(heads=2, kv_heads=1, rotary_interleaved=False), "in_multiplier": 1.2,
         "out_multiplier": 0.6},
    ]),
}
