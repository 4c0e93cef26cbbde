"""How many threads the ``ssmzoo`` command computes with, and how they wait.

Two settings, both made before any work runs:

- **OpenMP's wait policy** (:func:`prepare_environment`, before torch loads, since OpenMP reads it once at
  start-up). By default an OpenMP thread that reaches the end of a parallel region spins on its core for a
  while (GNU OpenMP: 300,000 spins) waiting for the others. On an idle machine that saves a wake-up; on a
  machine whose cores are taken by other work it is ruinous: the spinning thread holds a core that the
  thread it waits for needs, so every one of the thousands of parallel regions of a training step waits for
  the scheduler. The main job's model took 1.1-1.4 s per step with 2 threads under load instead of 0.1 s
  (``benchmarks/speed/contention.py``, README "Threads"). ssmzoo sets ``OMP_WAIT_POLICY=PASSIVE`` (waiting
  threads sleep at once) unless ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is already set.
- **The thread count** (:func:`choose_threads`): ``--threads N``, else ``OMP_NUM_THREADS`` when set, else
  torch's default (the physical cores) capped by the CPUs this process may run on, divided among the
  processes of a multi-process run on this node.
"""

from __future__ import annotations

import os

WAIT_POLICY_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def prepare_environment() -> None:
    """Set OpenMP's passive wait policy unless the user chose a policy (call before torch is imported)."""
    if not any(name in os.environ for name in WAIT_POLICY_VARIABLES):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def cpus_available() -> int:
    """The CPUs this process may run on (its affinity mask; all of them where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_threads(value: object, flag: str = "--threads") -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{flag} must be an int >= 1 (or left out: ssmzoo chooses), got {value!r}")
    return value


def choose_threads(requested: int | None, processes: int = 1) -> tuple[int, str]:
    """(intra-op threads per process, why): ``requested`` (``--threads``) if given, else ``OMP_NUM_THREADS``
    if set, else torch's default capped by the CPUs available and shared among ``processes`` on this node."""
    import torch

    requested = check_threads(requested)
    if requested is not None:
        return requested, "--threads"
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) >= 1:
        return int(env), "OMP_NUM_THREADS"
    per_process = max(1, cpus_available() // max(1, processes))
    return max(1, min(torch.get_num_threads(), per_process)), "default"


def apply_threads(n: int) -> None:
    """Use ``n`` intra-op threads here and in processes started from here (Lightning's DDP ranks read
    ``OMP_NUM_THREADS``, and so does Lightning's own choice, which then keeps ours)."""
    import torch

    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
