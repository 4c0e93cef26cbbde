"""The ``ssmzoo`` command's default threads when other work holds the cores (issue #25, "Long streams").

Times training steps of the main job's model (``configs/lra/listops/s4d_small.yaml``: 4 bidirectional S4D
layers, d_model 64, batch 32 of ListOps-length sequences; forward, backward, AdamW) in a fresh process per
setting, idle and with ``--hogs`` busy-loop processes started beside it (other work taking the cores):

- ``before``: what the CLI did before: torch's default threads (the physical cores), OpenMP's default wait
  policy (a thread at a barrier spins on its core);
- ``ssmzoo``: what the CLI does now (``ssmzoo.cli.threads``): the same threads, OpenMP's passive policy
  (a waiting thread sleeps at once);
- ``1 thread``: one thread, the README's former advice for a shared machine.

Each setting runs in its own process (OpenMP reads its policy once, at start-up) and the settings alternate
within each repetition, so a change in the machine's other load falls on all of them alike. Prints seconds per
step (median over repetitions) and each setting's ratio to ``before``, with the load average before and after.

    python benchmarks/speed/contention.py [--hogs 2] [--steps 30] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

WORKER = r"""
import sys, time, torch
steps, threads = int(sys.argv[1]), int(sys.argv[2])
if threads:
    torch.set_num_threads(threads)
from ssmzoo.models import SequenceModel
torch.manual_seed(0)
model = SequenceModel(d_output=10, vocab_size=16, d_model=64, n_layers=4, layer="s4d",
                      layer_args=dict(d_state=4, bidirectional=True), norm="batch", prenorm=False, pooling="mean")
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
g = torch.Generator().manual_seed(0)
x = torch.randint(1, 16, (32, 99), generator=g)
lengths = torch.randint(11, 100, (32,), generator=g)
y = torch.randint(0, 10, (32,), generator=g)

def step():
    loss = torch.nn.functional.cross_entropy(model(x, lengths), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

for _ in range(3):
    step()
start = time.perf_counter()
for _ in range(steps):
    step()
print((time.perf_counter() - start) / steps, torch.get_num_threads())
"""

HOG = "while True: pass"


def settings() -> dict[str, tuple[dict[str, str], int]]:
    """name -> (environment changes, threads; 0: torch's default)."""
    from ssmzoo.cli.threads import WAIT_POLICY_VARIABLES

    clean = {name: "" for name in WAIT_POLICY_VARIABLES} | {"OMP_NUM_THREADS": ""}
    return {
        "before": (clean, 0),
        "ssmzoo": (clean | {"OMP_WAIT_POLICY": "PASSIVE"}, 0),
        "1 thread": (clean, 1),
    }


def time_setting(env_changes: dict[str, str], threads: int, steps: int) -> tuple[float, int]:
    env = {k: v for k, v in os.environ.items() if env_changes.get(k, v) != ""}
    env.update({k: v for k, v in env_changes.items() if v})
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", WORKER, str(steps), str(threads)], env=env, capture_output=True,
                          text=True, check=True)
    seconds, used = done.stdout.split()
    return float(seconds), int(used)


def measure(hogs: int, steps: int, reps: int) -> dict[str, tuple[float, int]]:
    started = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(hogs)]
    try:
        time.sleep(1.0 if hogs else 0.0)
        times: dict[str, list[float]] = {name: [] for name in settings()}
        used: dict[str, int] = {}
        for _ in range(reps):
            for name, (env, threads) in settings().items():
                seconds, used[name] = time_setting(env, threads, steps)
                times[name].append(seconds)
        return {name: (statistics.median(values), used[name]) for name, values in times.items()}
    finally:
        for process in started:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hogs", type=int, default=os.cpu_count() or 2, help="busy processes for the loaded case")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", choices=["idle", "loaded"], help="measure only without (idle) or with the hogs")
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {os.cpu_count()} CPUs")
    print("| other work | setting | threads | s / step | speed-up vs before |")
    print("|---|---|---|---|---|")
    for hogs in {"idle": (0,), "loaded": (args.hogs,)}.get(args.only, (0, args.hogs)):
        results = measure(hogs, args.steps, args.reps)
        base = results["before"][0]
        label = "none added" if hogs == 0 else f"{hogs} busy-loop processes"
        for name, (seconds, threads) in results.items():
            print(f"| {label} | {name} | {threads} | {seconds:.3f} | {base / seconds:.2f}x |", flush=True)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
