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
