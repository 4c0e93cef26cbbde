"""What the op tests check of their Triton kernels on a machine without a GPU: the kernels against the reference
under triton's interpreter (in a fresh process), and an ahead-of-time compile for Hopper."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def check_under_interpreter(check: str, timeout: float = 900) -> None:
    """Run the script ``check`` (its ``{root}`` and ``{tests}`` filled in) in a fresh interpreter with
    TRITON_INTERPRET=1, which must be set before triton is imported; it must exit cleanly and print "all match"."""
    pytest.importorskip("triton")
    code = check.format(root=str(ROOT), tests=str(ROOT / "tests"))
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env,
                          timeout=timeout)
    assert done.returncode == 0, f"triton check failed:\n{done.stdout}\n{done.stderr}"
    assert "all match" in done.stdout


def compile_for_hopper(fn: Any, consts: dict[str, Any], dtype: str, types: dict[str, str] | None = None) -> None:
    """Compile the Triton kernel ``fn`` ahead of time for sm_90 with triton's bundled ptxas (no GPU needed): what the
    interpreter cannot check (tl.dot shapes, types, register and shared-memory limits). ``consts``: its constexpr
    arguments; the others are ``*dtype`` pointers (names ending in ``_ptr``) or i32, unless ``types`` names them."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    types = types or {}
    params = list(inspect.signature(fn.fn).parameters)
    signature = {p: "constexpr" if p in consts else types.get(p, f"*{dtype}" if p.endswith("_ptr") else "i32")
                 for p in params}
    source = ASTSource(fn, signature, constexprs={(params.index(k),): v for k, v in consts.items()})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
    assert compiled.asm["cubin"], fn.fn.__name__
