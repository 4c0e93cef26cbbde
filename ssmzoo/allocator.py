"""Keep freed memory in the process instead of handing it back to the kernel (glibc's malloc on Linux).

PyTorch's CPU tensors come from the C allocator. glibc serves every block above its mmap threshold (at most
32 MB by default) with a fresh ``mmap`` and unmaps it on free, so a training step that allocates the same
large activations again touches every page anew: one page fault per 4 KB. On a 2-core VM that was 45% of
an S4D layer's fwd+bwd (B 4, H 256, L 16,384: 1.22 vs 0.68 s, 500,000 faults per step) and 22% of a Mamba
layer's (0.185 vs 0.145 s); the peers gain more (mambapy 3.07 vs 1.22 s). :func:`keep_freed_memory` raises
the mmap and trim thresholds, so large blocks come from the heap and return to it, as jemalloc or tcmalloc
(PyTorch's advice for CPU training) would keep them; the cost is that the process holds its high-water mark
of memory until it exits. ``ssmzoo fit`` and the other CLI commands call it (``SSMZOO_KEEP_FREED_MEMORY=0``
turns that off); a library user can call it once at the start of a script.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt's parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
DEFAULT_THRESHOLD = 1 << 30  # blocks up to 1 GiB from the heap; larger ones are still mapped and unmapped
ENV_VAR = "SSMZOO_KEEP_FREED_MEMORY"


def keep_freed_memory(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Serve blocks up to ``threshold`` bytes from the heap and never trim it below that: freed memory is
    reused without page faults. Returns True when glibc took both settings, False where there is no glibc
    (macOS, Windows, musl) and nothing changed. Process-wide; calling it again is harmless."""
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 0 < threshold < 1 << 31:
        raise ValueError(f"keep_freed_memory: threshold must be an int of bytes in (0, 2**31), got {threshold!r}")
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # both or neither matter: a mapped block is unmapped on free whatever the trim threshold
    return bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_TRIM_THRESHOLD, threshold))


def keep_freed_memory_from_env() -> bool:
    """:func:`keep_freed_memory` unless ``SSMZOO_KEEP_FREED_MEMORY`` is 0 / false / no / off (the CLI's hook)."""
    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return keep_freed_memory()
