"""The README as a user reads it: every Python block runs as pasted (in a fresh interpreter, in an empty folder),
and what it says about installing is what pyproject.toml does.

A block may be preceded by a marker comment:
    <!-- readme-test: skip (REASON) -->         not run (a download it needs); the reason is the skip's
    <!-- readme-test: slow (REASON) -->         run only in the slow set (`pytest -m slow`: a C++ compile)
    <!-- readme-test: needs an LM run (...) -->  run in a folder holding runs/lm_mamba/version_0, a tiny language
                                                 model trained here through `ssmzoo fit --config configs/lm/mamba.yaml`
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MARKER = re.compile(r"<!--\s*readme-test:\s*(skip|slow|needs an LM run)\s*\(([^)]*)\)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    line: int
    code: str
    skip: str | None
    needs_lm_run: bool
    slow: bool = False


def python_blocks(text: str) -> list[Block]:
    blocks, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i
            i += 1
            body = []
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            marker = next((MARKER.match(lines[j].strip()) for j in range(start - 1, max(-1, start - 3), -1)
                           if lines[j].strip()), None)
            kind, reason = (marker.group(1), marker.group(2)) if marker else (None, None)
            blocks.append(Block(start + 1, "\n".join(body) + "\n", reason if kind == "skip" else None,
                                kind == "needs an LM run", kind == "slow"))
        i += 1
    return blocks


BLOCKS = python_blocks(README)


def test_the_readme_has_its_python_blocks():
    assert len(BLOCKS) >= 5
    assert all(b.skip for b in BLOCKS if "path/to/" in b.code)  # a placeholder path is never run


@pytest.fixture(scope="module")
def lm_run_folder(tmp_path_factory):
    """A folder holding runs/lm_mamba/version_0: the README's LM config, trained 3 steps on a tiny corpus."""
    folder = tmp_path_factory.mktemp("readme_lm")
    corpus = folder / "corpus"
    corpus.mkdir()
    for i, text in enumerate(["ROMEO: O, she doth teach the torches to burn bright!\n" * 8,
                              "JULIET: My bounty is as boundless as the sea,\n" * 8, "NURSE: Madam!\n" * 20]):
        (corpus / f"{i}.txt").write_text(text)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SSMZOO_DATA": str(folder / "data"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "ssmzoo.cli", "fit", "--config", str(ROOT / "configs/lm/mamba.yaml"),
               f"--data.init_args.path={corpus}", "--data.init_args.seq_len=16", "--data.init_args.val_split=1",
               "--data.init_args.test_split=1", "--model.init_args.model.init_args.d_model=16",
               "--model.init_args.model.init_args.n_layers=1", "--trainer.max_steps=3", "--trainer.val_check_interval=3",
               "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1", "--model.init_args.sample_length=4",
               "--trainer.enable_model_summary=false", "--trainer.default_root_dir=runs"]
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (folder / "runs" / "lm_mamba" / "version_0" / "checkpoints").is_dir()
    return folder


@pytest.mark.parametrize("block", [pytest.param(b, marks=pytest.mark.slow) if b.slow else b for b in BLOCKS],
                         ids=lambda b: f"README.md:{b.line}")
def test_a_readme_python_block_runs_as_pasted(block, tmp_path, request):
    """Before: the generation example used undefined `prompt_ids` and `print_token`, and the RAMba one raised a
    NameError."""
    if block.skip:
        pytest.skip(block.skip)
    cwd = request.getfixturevalue("lm_run_folder") if block.needs_lm_run else tmp_path
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SSMZOO_DATA": str(tmp_path / "data"), "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", block.code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"README.md line {block.line}:\n{block.code}\n{done.stderr[-4000:]}"


# -- installing ------------------------------------------------------------------------------------------------

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
TEST_ONLY = ("pytest", "hypothesis", "ruff", "triton", "transformers", "mambapy")


def name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_installing_for_use_brings_no_test_only_package():
    """Before: the main job's command installed `.[dev]` (triton, about 1 GB, and the test peers), and ninja, which
    the C++ kernels need at run time, came only with [dev]."""
    runtime = {name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert not runtime & set(TEST_ONLY)
    assert "ninja" in runtime
    dev = {name(r) for r in PYPROJECT["project"]["optional-dependencies"]["dev"]}
    assert set(TEST_ONLY) <= dev
    main_job = next(line for line in README.splitlines() if "ssmzoo fit --config configs/lra/listops/s4d_small.yaml"
                    in line and "pip install" in line)
    assert "pip install -e . &&" in main_job and "[dev]" not in main_job


def test_the_readme_says_what_dev_adds_and_why():
    install = README.split("## Install", 1)[1].split("\n## ", 1)[0]
    assert "pip install -e ." in install and '".[dev]"' in install
    for package in TEST_ONLY:
        assert package in install, package
    assert "1 GB" in install and "TRITON_INTERPRET" in install


def test_the_layer_table_lists_every_registered_layer_and_what_packing_does():
    """Each registered layer has a row; its packed-documents cell says "one pass" exactly when the class has a fast
    path for segments (the others run document by document)."""
    from ssmzoo import layers

    table = README[README.index("| name (`build`) |"):]
    table = table[:table.index("\n\n")]
    header, _, *rows = table.splitlines()
    column = [c.strip() for c in header.strip("|").split("|")].index("packed documents (`segments=`)")
    cells = {}
    for row in rows:
        parts = [c.strip() for c in row.strip("|").split("|")]
        for name in re.findall(r"`(\w+)`", parts[0]):
            cells[name] = parts[column]
    assert set(cells) == set(layers.available())
    for name, cell in cells.items():
        fast = layers.get(name).segments_fast_path
        own = [p for p in cell.split(";") if f"`{name}`" in p] or [cell]
        assert ("one pass" in own[0]) == fast, f"README says {cell!r} for {name}, segments_fast_path is {fast}"
