"""A C++ kernel compiling on first use says so (a minute of silence looks like a hang), and a cached build says
nothing. The compiler is replaced by a stand-in that writes the library file, so this runs in milliseconds."""

from __future__ import annotations

import types

import torch.utils.cpp_extension

from ssmzoo.ops import extension


def fake_load(calls):
    def load(name, sources, build_directory, **kwargs):
        calls.append(name)
        open(f"{build_directory}/{name}.so", "w").close()  # what a build leaves behind
        return types.ModuleType(name)

    return load


def test_first_build_announces_itself_and_a_cached_one_is_silent(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SSMZOO_BUILD_DIR", str(tmp_path))
    calls: list[str] = []
    monkeypatch.setattr(torch.utils.cpp_extension, "load", fake_load(calls))

    assert extension.load_extension("ssmzoo_mamba_cpu", ("mamba_cpu.cpp",)) is not None
    err = capsys.readouterr().err
    assert "building the mamba kernel" in err and str(tmp_path) in err and "built the mamba kernel" in err

    assert extension.load_extension("ssmzoo_mamba_cpu", ("mamba_cpu.cpp",)) is not None
    assert capsys.readouterr().err == ""  # cached: loaded without a word
    assert calls == ["ssmzoo_mamba_cpu"] * 2


def test_a_lock_left_by_a_killed_build_is_cleared_not_waited_on(tmp_path, monkeypatch, capsys):
    """torch's build lock is a plain file: a build killed mid-way leaves it, and torch's loader then waits for it
    forever. Under our own (process-bound) lock that file can only be stale."""
    monkeypatch.setenv("SSMZOO_BUILD_DIR", str(tmp_path))
    folder = extension.build_dir("ssmzoo_mamba_cpu", [extension.CSRC / "mamba_cpu.cpp"], [])
    (folder / "lock").touch()  # what a killed build leaves
    seen = []

    def load(name, sources, build_directory, **kwargs):
        seen.append((folder / "lock").exists())  # torch would sleep on it here
        return types.ModuleType(name)

    monkeypatch.setattr(torch.utils.cpp_extension, "load", load)
    assert extension.load_extension("ssmzoo_mamba_cpu", ("mamba_cpu.cpp",)) is not None
    assert seen == [False]
    assert "interrupted build" in capsys.readouterr().err
