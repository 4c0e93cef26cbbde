"""What the speed benchmarks beside this file share: timing implementations interleaved, running a worker
subprocess for its JSON result, and (for the op benchmarks) one timed call and a fresh process's peak memory.

The scripts import it as ``_timing``: run as ``python benchmarks/speed/<script>.py``, their folder is first on
``sys.path``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable


def interleaved(runs: dict[str, Callable[[], None]], reps: int) -> dict[str, dict[str, list[float]]]:
    """Process CPU and wall seconds of ``reps`` calls of each run after one warm-up call each (kernel builds and
    loads, backend probes, the allocator), the runs interleaved and their order reversed every other repetition."""
    for run in runs.values():
        run()
    samples: dict[str, dict[str, list[float]]] = {name: {"cpu": [], "wall": []} for name in runs}
    for r in range(reps):
        for name in list(runs) if r % 2 == 0 else list(reversed(list(runs))):
            cpu, wall = time.process_time(), time.perf_counter()
            runs[name]()
            samples[name]["cpu"].append(time.process_time() - cpu)
            samples[name]["wall"].append(time.perf_counter() - wall)
    return samples


def run_worker(script: str, args: list[str], timeout: float, threads: int | None = None) -> dict:
    """The JSON object a fresh ``python script *args`` prints last (a line starting with "{"), or {"error": ...}.
    ``threads``: also passed as ``--threads`` and as OMP_NUM_THREADS / MKL_NUM_THREADS."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    cmd = [sys.executable, script]
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        cmd += ["--threads", str(threads)]
    try:
        done = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {done.returncode}: {tail[0][:200]}"}
    return json.loads(lines[-1])


# -- op benchmarks (gated_delta.py, ssd_op.py): inputs are a dict of tensors, an implementation a function of it --
def time_once(fn: Callable[[dict], object], x: dict, backward: bool, cpu_time: bool) -> float:
    """Seconds of one call of ``fn`` on fresh leaves of ``x`` (and its backward of the output's sum)."""
    clock = time.process_time if cpu_time else time.perf_counter
    leaves = {k: v.detach().clone().requires_grad_(backward) for k, v in x.items()}
    start = clock()
    y = fn(leaves)
    if backward:
        y.sum().backward()
    return clock() - start


MEMORY_PROBE = """
import os, sys, threading, time, torch
torch.set_num_threads({threads})
sys.path.insert(0, {here!r})
import {module} as bench
fn, x = bench.candidates(*{candidates_args!r})[{name!r}], bench.make_inputs({length})
leaves = {{k: v.requires_grad_() for k, v in x.items()}}
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
base, peak, done = rss(), [0], False
def sample():
    while not done:
        peak[0] = max(peak[0], rss())
        time.sleep(0.0005)
watcher = threading.Thread(target=sample)
watcher.start()
fn(leaves).sum().backward()
done = True
watcher.join()
print((max(peak[0], rss()) - base) / 2**20)
"""


def peak_memory(script: str, name: str, length: int, threads: int, candidates_args: tuple = ()) -> float:
    """MiB of resident memory a fresh process adds on top of its inputs during one forward+backward of
    implementation ``name`` of op benchmark ``script`` (its ``candidates(*candidates_args)`` and ``make_inputs``),
    sampled every 0.5 ms from /proc/self/statm."""
    here, module = os.path.split(os.path.splitext(os.path.abspath(script))[0])
    code = MEMORY_PROBE.format(threads=threads, here=here, module=module, candidates_args=tuple(candidates_args),
                               name=name, length=length)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])
