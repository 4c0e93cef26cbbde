"""benchmarks/speed/all.py runs end to end and writes its table (tiny shapes; marked slow: it starts
a few Python processes). Timings are never asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ALL = Path(__file__).resolve().parents[1] / "benchmarks" / "speed" / "all.py"


@pytest.mark.slow
def test_all_py_quick_writes_the_table(tmp_path):
    out = tmp_path / "summary.md"
    proc = subprocess.run([sys.executable, str(ALL), "--quick", "--reps", "1", "--cases", "companion", "s4_kernel",
                           "mamba2", "hsa", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "| workload | threads | ours | peer | ratio | floor | ours / floor | ours peak | peer peak |" in text
    assert "no peer" in text
    assert "error" not in text


def _matmul_share():
    sys.path.insert(0, str(ALL.parent))
    import matmul_share

    return matmul_share


def test_matmul_recorder_counts_every_matmul_and_its_flops():
    import torch

    share = _matmul_share()
    a, b = torch.randn(3, 4), torch.randn(4, 5)
    x = torch.randn(2, 3, 4, requires_grad=True)
    with share.RecordMatmuls() as rec:
        torch.mm(a, b)
        torch.addmm(torch.zeros(5), a, b)
        torch.nn.functional.linear(a, b.t(), torch.zeros(5))  # addmm
        (x @ torch.randn(4, 6)).sum().backward()  # a matmul forward, one for x's gradient in backward
        a.sum()  # not a matmul
    assert len(rec.calls) == 5
    # 2·m·k·n each: mm, addmm, linear 2·3·4·5; x @ w as one (6, 4) @ (4, 6) mm and its backward (6, 6) @ (6, 4)
    assert share.flops(rec.calls) == 3 * 120 + 2 * 6 * 4 * 6 + 2 * 6 * 6 * 4
    share.replay(rec.calls)()  # the same shapes run again on their own


@pytest.mark.slow
def test_matmul_share_quick_reports_both_sides():
    proc = subprocess.run([sys.executable, str(ALL.parent / "matmul_share.py"), "--quick", "--reps", "1"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "ours:" in proc.stdout and "GFLOP of matmuls alone" in proc.stdout and "floor (all.py)" in proc.stdout


@pytest.mark.slow
def test_mamba3_speed_quick_writes_its_table():
    proc = subprocess.run([sys.executable, str(ALL.parent / "mamba3.py"), "--quick", "--reps", "1"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    for layer in ("mamba2", "mamba3", "mamba3_mimo4"):
        assert f"| 128 | {layer} |" in proc.stdout
    assert "error" not in proc.stdout
