"""Training steps per second with and without ``--compile true``, through the ``ssmzoo fit`` command.

For each config, each mode runs ``ssmzoo fit`` twice, for N1 and N2 optimizer steps (no validation, no test), and
times the whole command. Steady-state steps/s = (N2 - N1) / (T(N2) - T(N1)): start-up, data loading and the
compile time cancel out; the compile time is what the compiled run of N1 steps takes beyond the eager run of N1
steps, less the difference of their N1 steady steps. The eager and compiled runs alternate (eager N1, compiled N1,
eager N2, compiled N2), so a change of the machine's load affects both.

    python benchmarks/speed/compile.py                       # the three configs below
    python benchmarks/speed/compile.py --configs configs/lm/mamba.yaml --steps 10 40
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

CONFIGS = ["configs/lra/listops/s4d_small.yaml", "configs/lm/mamba.yaml", "configs/lm/mamba2.yaml"]


def run(config: str, steps: int, compiled: bool, threads: int, root: str) -> float:
    command = [sys.executable, "-m", "ssmzoo.cli", "fit", "--config", config, "--trainer.max_steps", str(steps),
               "--trainer.max_epochs", "-1", "--trainer.limit_val_batches", "0", "--test_after_fit", "false",
               "--trainer.default_root_dir", root, "--threads", str(threads), "--compile", str(compiled).lower(),
               "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    parser.add_argument("--steps", nargs=2, type=int, default=[10, 40], metavar=("N1", "N2"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    n1, n2 = args.steps
    print(f"load before: {os.getloadavg()}; threads {args.threads}; steps {n1} and {n2}")
    print("| config | eager steps/s | compiled steps/s | ratio | compile time (s) | eager total (s) | compiled total (s) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as root:
        for config in args.configs:
            t = {}
            for steps in (n1, n2):
                for compiled in (False, True):
                    t[compiled, steps] = run(config, steps, compiled, args.threads, root)
            eager = (n2 - n1) / (t[False, n2] - t[False, n1])
            comp = (n2 - n1) / (t[True, n2] - t[True, n1])
            compile_time = (t[True, n1] - t[False, n1]) - n1 * (1 / comp - 1 / eager)
            print(f"| {config} | {eager:.2f} | {comp:.2f} | {comp / eager:.2f} | {compile_time:.0f} | "
                  f"{t[False, n2]:.0f} | {t[True, n2]:.0f} |", flush=True)
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
