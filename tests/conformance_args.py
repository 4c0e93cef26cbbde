"""Small constructor arguments per registered layer, so the conformance suite runs fast.

A layer that is not listed here is still tested, with its defaults and d_model=D_MODEL."""

D_MODEL = 8

SMALL_ARGS: dict[str, dict] = {
    "s4d": dict(d_state=8),
    "neural_memory": dict(heads=2, memory_depth=2, chunk_size=4, conv_kernel=3),
    "mamba": dict(d_state=4, d_conv=3, expand=2),
}
