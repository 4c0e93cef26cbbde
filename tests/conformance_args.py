"""Small constructor arguments per registered layer, so the conformance suite runs fast.

A layer that is not listed here is still tested, with its defaults and d_model=D_MODEL."""

D_MODEL = 8

SMALL_ARGS: dict[str, dict] = {
    "s4": dict(d_state=8),
    "s4d": dict(d_state=8),
}
