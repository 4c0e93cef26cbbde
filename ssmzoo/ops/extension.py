"""Build-on-first-use for our C++ kernels in ``ssmzoo/csrc/`` (torch.utils.cpp_extension).

The build directory is cached (``$SSMZOO_BUILD_DIR``, default ``~/.cache/ssmzoo/build``), so an
extension compiles once per machine and source version, never per test. The cache key holds the
sources, the compiler flags and the CPU's instruction sets: the CPU kernels are built for the machine
(``-march=native``), and a home directory shared by machines of different CPUs must not load a build
that uses instructions this one lacks. A failed build returns None after one warning, and the op's
dispatch falls back to its next backend.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import time
import warnings
from functools import lru_cache
from pathlib import Path
from types import ModuleType

# The sources ship as package data (ssmzoo/csrc), so any install, editable or not, can build them.
CSRC = Path(__file__).resolve().parents[1] / "csrc"


# -fno-trapping-math: without it GCC 12 keeps exp_poly's clamp (cpu_math.h) as branches for AVX2
# targets and leaves every loop that calls exp, sigmoid or softplus scalar (the Mamba scan ran 4x
# slower). It lets the compiler assume that floating-point operations do not trap (PyTorch builds
# with it too); the formulas are unchanged, and `omp simd` reductions may now sum in vector order, as
# they already did on AVX-512 machines.
# What a first build of one extension takes on 2 cores (the README's figure), for the message that announces it.
BUILD_SECONDS = 40

CPU_CFLAGS = ["-O3", "-fopenmp", "-march=native", "-fno-trapping-math"]


@lru_cache(maxsize=None)
def cpu_identity() -> str:
    """The CPU's model and instruction-set flags (Linux), else the architecture: part of the cache key."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().split("\n\n")[0].splitlines()
        keep = [line for line in lines if line.split(":")[0].strip() in ("vendor_id", "model name", "flags")]
        if keep:
            return "\n".join(keep)
    except OSError:
        pass
    return platform.machine()


def build_dir(name: str, sources: list[Path], flags: list[str] | None = None) -> Path:
    digest = hashlib.sha1()
    # The build files record absolute paths, so two checkouts with equal sources need separate folders.
    digest.update(str(CSRC).encode())
    for src in sources:
        digest.update(src.read_bytes())
    digest.update(repr(flags or []).encode())
    digest.update(cpu_identity().encode())
    root = Path(os.environ.get("SSMZOO_BUILD_DIR", Path.home() / ".cache" / "ssmzoo" / "build"))
    path = root / f"{name}-py{sys.version_info.major}{sys.version_info.minor}-{digest.hexdigest()[:12]}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@lru_cache(maxsize=None)
def load_cpu_extension(name: str, *sources: str, headers: tuple[str, ...] = ()) -> ModuleType | None:
    """Compile (or load the cached build of) a CPU extension from files in csrc/; None on failure.
    ``headers``: the csrc/ headers the sources include (they key the cache)."""
    linux = sys.platform.startswith("linux")
    return load_extension(
        name, sources, headers, extra_cflags=CPU_CFLAGS if linux else ["-O3"],
        extra_ldflags=["-fopenmp"] if linux else [],
    )


def load_extension(
    name: str,
    sources: tuple[str, ...],
    headers: tuple[str, ...] = (),
    extra_cflags: list[str] | None = None,
    extra_ldflags: list[str] | None = None,
    extra_cuda_cflags: list[str] | None = None,
) -> ModuleType | None:
    """Build ``sources`` (files in csrc/; ``.cu`` ones with nvcc) into a cached extension; None, after
    one warning, on any failure. ``headers`` only key the cache, so an edited header rebuilds."""
    paths = [CSRC / s for s in sources]
    try:
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"missing sources {missing} (ssmzoo/csrc should ship with the package)")
        from torch.utils.cpp_extension import load

        folder = build_dir(name, paths + [CSRC / h for h in headers],
                           (extra_cflags or []) + (extra_ldflags or []) + (extra_cuda_cflags or []))
        fresh = not any(folder.glob(f"{name}*.so")) and not any(folder.glob(f"{name}*.pyd"))
        if fresh:  # a minute of silence would look like a hang
            kernel = name.removeprefix("ssmzoo_").removesuffix("_cpu")
            print(f"ssmzoo: building the {kernel} kernel (first use on this machine and source version, about "
                  f"{BUILD_SECONDS} s; cached in {folder})", file=sys.stderr, flush=True)
            started = time.perf_counter()
        module = load(
            name=name,
            sources=[str(p) for p in paths],
            extra_cflags=extra_cflags or [],
            extra_ldflags=extra_ldflags or [],
            extra_cuda_cflags=extra_cuda_cflags,
            extra_include_paths=[str(CSRC)],
            build_directory=str(folder),
            verbose=False,
        )
        if fresh:
            print(f"ssmzoo: built the {kernel} kernel in {time.perf_counter() - started:.0f} s", file=sys.stderr,
                  flush=True)
        return module
    except Exception as e:  # any compiler or loader failure: fall back, with one warning
        warnings.warn(f"ssmzoo: could not build the extension {name!r} ({type(e).__name__}: {e}); "
                      "falling back to the next backend", stacklevel=3)
        return None
