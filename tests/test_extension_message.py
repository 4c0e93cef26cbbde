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
