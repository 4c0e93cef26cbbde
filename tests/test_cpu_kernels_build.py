"""Every C++ CPU kernel builds and passes its probe where a compiler is present (CI's machine has one).

A backend whose build or probe fails costs one warning and the op runs on another backend (dispatch.py), which is
right for users but would let a broken kernel edit pass the tests: the kernels' own tests compare whatever backend
`auto` picks, or skip the C++ one when it is not usable. Here a C++ backend that does not come up is a failure."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from ssmzoo import ops

# The C++ backends are the ones named `cpu` (ops/<op>/cpu.py, built by ops/extension.py).
CPP = sorted(op for op, d in ops.index().items() if "cpu" in d.backends)


def test_the_cpp_backends_are_found():
    # ten ops had a C++ backend when this test was written; finding none would mean the naming convention changed
    assert len(CPP) >= 10, CPP


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler")
@pytest.mark.skipif(shutil.which("ninja") is None and not __import__("importlib").util.find_spec("ninja"),
                    reason="no ninja (torch.utils.cpp_extension needs it)")
@pytest.mark.parametrize("op", CPP)
def test_cpp_backend_builds_and_passes_its_probe(op):
    dispatcher = ops.index()[op]
    dispatcher._probed.pop(("cpu", "cpu"), None)  # probe now, whatever an earlier test saw
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = dispatcher.usable("cpu", torch.device("cpu"))
    assert ok, f"{op}: the C++ backend did not come up: {[str(w.message) for w in caught]}"
