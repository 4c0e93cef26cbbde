"""Every CPU speed benchmark, ours vs peer, in one table: benchmarks/speed/results/summary.md.

    python benchmarks/speed/all.py                 # the measured run (idle machine; see --help)
    python benchmarks/speed/all.py --quick         # tiny shapes: checks that everything runs (~1 min)
    python benchmarks/speed/all.py --cases s4d mamba_layer --reps 7

For each workload, one subprocess times ours, the peer and the floor *interleaved* (same process,
shapes and threads; median of --reps after a warm-up; the spread max/min over the reps is reported, and a
cell whose spread exceeds 20% is marked as not yet a result). Peak memory: one fresh subprocess per
(workload, implementation) reads ``ru_maxrss`` after building the inputs and again after one run; the
table shows the growth (the run's high-water mark above what setup held).

The floor is what the hardware needs for the workload's unavoidable part, measured in the same
process: the matmuls of the same shapes alone (forward, and the two of each in backward) plus one read
and write of the bytes the op must touch, timed as a copy of that size. Ours is reported as a multiple
of it. A peer that does not install gets a "not installed" cell; a workload that fails gets its error
in its row; nothing stops the table from being written.

To add a workload: write ``build_<name>(quick, impl)`` returning a zero-argument callable that runs one
repetition for impl in ("ours", "peer", "floor"), and add a ``Case`` to ``CASES`` (Mamba-2 and HSA take theirs
from ``mamba2.py`` and ``hsa.py``, whose own tables go to more lengths).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from _timing import interleaved, run_worker  # beside this file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # this checkout's ssmzoo and benchmarks/, not an installed copy
RESULTS = Path(__file__).parent / "results"
SPREAD_LIMIT = 0.20


class PeerMissing(Exception):
    """The peer's package is not installed (its cell says so)."""


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _require(module: str, dist: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise PeerMissing(f"{dist} not installed (pip install {dist})")


def _floor(matmuls: list[tuple[int, int, int]], copy_elems: int, repeat: int = 1) -> Callable[[], None]:
    """A callable doing the matmuls (m, k, n) and one read + write of copy_elems float32, ``repeat`` times."""
    import torch

    mats = [(torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)) for m, k, n in matmuls]
    src, dst = torch.randn(max(copy_elems, 1)), torch.empty(max(copy_elems, 1))

    def run() -> None:
        for _ in range(repeat):
            for a, b, out in mats:
                torch.mm(a, b, out=out)
        dst.copy_(src)

    return run


def _training_matmuls(rows: int, pairs: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """The matmuls of linear maps (d_in -> d_out) on ``rows`` tokens, forward and backward (dX, dW)."""
    out = []
    for d_in, d_out in pairs:
        out += [(rows, d_in, d_out), (rows, d_out, d_in), (d_out, rows, d_in)]
    return out


# -- workloads -------------------------------------------------------------------------------------
S4_REPO_VAR = "SSMZOO_S4_REPO"


def _s4d_peer() -> type:
    """state-spaces/s4's standalone ``models/s4/s4d.py``, from a checkout outside this repository (its code
    is never committed here): ``--s4-repo DIR`` or ``$SSMZOO_S4_REPO``."""
    repo = os.environ.get(S4_REPO_VAR)
    if not repo or not (Path(repo) / "models" / "s4" / "s4d.py").is_file():
        raise PeerMissing("state-spaces/s4 not checked out (clone it and pass --s4-repo DIR)")
    sys.path.insert(0, repo)
    from models.s4.s4d import S4D

    return S4D


def build_s4d(quick: bool, impl: str) -> Callable[[], None]:
    import torch

    b, h, n, length = (1, 16, 8, 256) if quick else (4, 256, 64, 16384)
    torch.manual_seed(0)
    if impl == "floor":  # the GLU output linear H -> 2H; x, y, dy, dx read or written once
        return _floor(_training_matmuls(b * length, [(h, 2 * h)]), 4 * b * length * h)
    if impl == "ours":
        from ssmzoo import S4D

        layer, x = S4D(h, d_state=n), torch.randn(b, length, h)
    else:
        Peer = _s4d_peer()
        layer, x = Peer(h, d_state=n), torch.randn(b, h, length)  # the peer's own (B, H, L) layout
    grad = torch.randn_like(x)

    def run() -> None:
        layer.zero_grad(set_to_none=True)
        y = layer(x)
        (y[0] if isinstance(y, tuple) else y).backward(grad)

    return run


def build_mamba_layer(quick: bool, impl: str) -> Callable[[], None]:
    import torch

    b, d, n, length = (1, 16, 4, 128) if quick else (4, 128, 16, 4096)
    torch.manual_seed(0)
    d_inner, rank = 2 * d, -(-d // 16)
    if impl == "floor":  # in_proj, x_proj, dt_proj, out_proj; x, y, dy, dx once
        pairs = [(d, 2 * d_inner), (d_inner, rank + 2 * n), (rank, d_inner), (d_inner, d)]
        return _floor(_training_matmuls(b * length, pairs), 4 * b * length * d)
    if impl == "ours":
        from ssmzoo import Mamba

        layer = Mamba(d, d_state=n)
    else:
        _require("mambapy", "mambapy")
        from mambapy.mamba import MambaBlock, MambaConfig

        layer = MambaBlock(MambaConfig(d_model=d, n_layers=1, d_state=n, pscan=True))
    x = torch.randn(b, length, d)
    grad = torch.randn_like(x)

    def run() -> None:
        layer.zero_grad(set_to_none=True)
        layer(x).backward(grad)

    return run


GENERATION = dict(d_model=256, n_layers=4, vocab=256, d_state=16, prompt=1024, new=256)
GENERATION_QUICK = dict(d_model=32, n_layers=2, vocab=64, d_state=4, prompt=16, new=8)


def _generation(quick: bool, impl: str, batch: int) -> Callable[[], None]:
    import torch

    g = GENERATION_QUICK if quick else GENERATION
    d, d_inner, n = g["d_model"], 2 * g["d_model"], g["d_state"]
    rank = -(-d // 16)
    if impl == "floor":
        # Prefill: every projection on batch·prompt tokens, and the LM head on the last token; then per new
        # token the same projections on `batch` rows (matvecs at batch 1: they read every weight once).
        pairs = [(d, 2 * d_inner), (d_inner, rank + 2 * n), (rank, d_inner), (d_inner, d)]
        prefill = _floor([(batch * g["prompt"], i, o) for i, o in pairs] * g["n_layers"] + [(batch, d, g["vocab"])], 0)
        step = _floor([(batch, i, o) for i, o in pairs] * g["n_layers"] + [(batch, d, g["vocab"])],
                      batch * d, repeat=g["new"] - 1)
        return lambda: (prefill(), step())
    _require("transformers", "transformers")  # both sides are built from one transformers model
    from transformers import MambaConfig, MambaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its "falling back to the reference implementation" notices
    torch.manual_seed(0)
    config = MambaConfig(vocab_size=g["vocab"], hidden_size=d, state_size=n, num_hidden_layers=g["n_layers"],
                         use_mambapy=False, tie_word_embeddings=True)
    hf = MambaForCausalLM(config).eval()
    ids = torch.randint(0, g["vocab"], (batch, g["prompt"]))
    if impl == "ours":
        from ssmzoo.models.convert import from_hf_mamba

        model = from_hf_mamba(hf).eval()
        return lambda: model.generate(ids, max_new_tokens=g["new"])  # greedy, as the peer
    return lambda: hf.generate(ids, max_new_tokens=g["new"], min_new_tokens=g["new"], do_sample=False,
                               eos_token_id=None, pad_token_id=0)


def build_generation(quick: bool, impl: str) -> Callable[[], None]:
    return _generation(quick, impl, 1)


def build_generation_b16(quick: bool, impl: str) -> Callable[[], None]:
    return _generation(quick, impl, 16)


def build_titans(quick: bool, impl: str) -> Callable[[], None]:
    import torch

    dim, chunk, b, length, depth, expansion = (32, 8, 1, 64, 2, 4.0) if quick else (384, 64, 2, 1024, 2, 4.0)
    hidden = int(dim * expansion)
    if impl == "floor":
        # Projections (to_qkv, gates, output gate, out_proj) on b·length tokens, forward and backward; then per
        # chunk and batch element the memory MLP's matmuls: read-out on q (2), the keys' forward (2) and
        # backprop (1), the two weight updates; the same count again for their backward (x2 as a lower bound).
        proj = _training_matmuls(b * length, [(dim, 3 * dim), (dim, 3), (dim, dim), (dim, dim)])
        per_chunk = [(chunk, dim, hidden), (chunk, hidden, dim)] * 2 + [(chunk, dim, hidden),
                                                                       (2 * hidden, chunk, dim), (2 * dim, chunk, hidden)]
        return _floor(proj + per_chunk * 2 * b * (length // chunk), 4 * b * length * dim)
    torch.manual_seed(0)
    if impl == "ours":
        from ssmzoo import NeuralMemory

        module = NeuralMemory(dim, heads=1, memory_depth=depth, memory_expansion=expansion, chunk_size=chunk,
                              conv_kernel=0)
        call = lambda x: module(x)  # noqa: E731
    else:
        _require("titans_pytorch", "titans-pytorch")
        from titans_pytorch import NeuralMemory as PeerMemory

        module = PeerMemory(dim, chunk_size=chunk, heads=1, momentum=True,
                            default_model_kwargs={"depth": depth, "expansion_factor": expansion},
                            mem_model_norm_add_residual=False)
        call = lambda x: module(x)[0]  # noqa: E731
    x = torch.randn(b, length, dim)

    def run() -> None:
        module.zero_grad(set_to_none=True)
        call(x.detach().requires_grad_()).square().mean().backward()

    return run


def build_s4_kernel(quick: bool, impl: str) -> Callable[[], None]:
    import torch

    h, n, length = (16, 8, 256) if quick else (256, 64, 16384)
    if impl == "peer":
        raise PeerMissing("no peer (state-spaces/s4's kernels need CUDA or pykeops; see s4_kernel.py)")
    if impl == "floor":  # the kernel (H, L) written once, and its gradient read once
        return _floor([], 2 * h * length)
    from ssmzoo import S4

    torch.manual_seed(0)
    layer = S4(d_model=h, d_state=n, l_max=length)
    weights = torch.randn(1, h, length)

    def run() -> None:
        layer.zero_grad(set_to_none=True)
        k, _ = layer.kernel(length)
        (k * weights).sum().backward()

    return run


def build_companion(quick: bool, impl: str) -> Callable[[], None]:
    import torch

    heads, d, length = (4, 16, 256) if quick else (16, 64, 16384)
    if impl == "peer":
        raise PeerMissing("no peer (SpaceTime's code is CUDA-first; our Krylov baseline: companion.py)")
    if impl == "floor":  # the kernel (heads, L) written once
        return _floor([], heads * length)
    from ssmzoo.ops.companion import companion_kernel_from_c_tilde

    g = torch.Generator().manual_seed(0)
    a = torch.randn(heads, d, generator=g) / d
    b, c = torch.randn(heads, d, generator=g), torch.randn(heads, d, generator=g)
    return lambda: companion_kernel_from_c_tilde(a, b, c, length)


@functools.cache
def _script(script: str) -> ModuleType:
    """A per-workload script beside this one, loaded once per process."""
    spec = importlib.util.spec_from_file_location(f"_speed_{script}", Path(__file__).parent / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _from_script(script: str, fn: str) -> Callable[[bool, str], Callable[[], None]]:
    """``fn(quick, impl)`` of a per-workload script beside this one (mamba2.py, hsa.py), its own "peer missing"
    exception turned into ours."""

    def build(quick: bool, impl: str) -> Callable[[], None]:
        module = _script(script)
        try:
            return getattr(module, fn)(quick, impl)
        except getattr(module, "PeerMissing", PeerMissing) as e:
            raise PeerMissing(str(e)) from e

    return build


@dataclass(frozen=True)
class Case:
    key: str
    workload: str
    quick_workload: str
    peer: str  # the peer's name and distribution (for its version), "" for none
    peer_dist: str
    threads: int
    build: Callable[[bool, str], Callable[[], None]]
    unit: str = "s"  # "s": seconds per run; "tok/s": tokens per second (batch · new tokens / time)
    tokens: Callable[[bool], int] | None = None


def _new_tokens(batch: int) -> Callable[[bool], int]:
    return lambda quick: batch * (GENERATION_QUICK if quick else GENERATION)["new"]


CASES = [
    Case("s4d", "S4D layer, B 4, H 256, N 64, L 16,384, fwd+bwd", "S4D B 1, H 16, N 8, L 256",
         "state-spaces/s4 models/s4/s4d.py", "", 2, build_s4d),
    Case("mamba_layer", "Mamba layer, B 4, d_model 128, N 16, L 4,096, fwd+bwd", "Mamba B 1, d 16, N 4, L 128",
         "mambapy", "mambapy", 2, build_mamba_layer),
    Case("generation", "Mamba LM (d 256, 4 layers, vocab 256) generate, prompt 1,024 + 256 new, batch 1, greedy",
         "LM d 32, 2 layers, prompt 16 + 8, batch 1", "transformers MambaForCausalLM.generate", "transformers", 2,
         build_generation, unit="tok/s", tokens=_new_tokens(1)),
    Case("generation_b16", "the same, batch 16", "the same, batch 16", "transformers MambaForCausalLM.generate",
         "transformers", 2, build_generation_b16, unit="tok/s", tokens=_new_tokens(16)),
    Case("titans", "Titans NeuralMemory, dim 384, chunk 64, B 2, L 1,024, depth 2, fwd+bwd",
         "NeuralMemory dim 32, chunk 8, L 64", "titans-pytorch", "titans-pytorch", 1, build_titans),
    Case("s4_kernel", "S4 kernel (Cauchy + Woodbury), H 256, N 64, L 16,384, fwd+bwd", "H 16, N 8, L 256",
         "", "", 2, build_s4_kernel),
    Case("companion", "SpaceTime companion kernel, 16 heads, d 64, L 16,384, fwd", "4 heads, d 16, L 256",
         "", "", 1, build_companion),
    Case("mamba2", "Mamba-2 layer, B 4, d_model 128, 8 heads x 32, N 64, chunk 256, L 4,096, fwd+bwd",
         "Mamba-2 B 1, d 16, 2 heads x 16, N 8, L 256", "transformers Mamba2Mixer (torch path)", "transformers", 2,
         _from_script("mamba2", "build_mamba2")),
    Case("hsa", "HSA layer, B 1, d_model 512, 8 heads x 64, S 64, top-8, L 16,384, fwd+bwd",
         "HSA layer, L 1,024", "causal SDPA (torch)", "", 2, _from_script("hsa", "build_hsa")),
]
BY_KEY = {c.key: c for c in CASES}


# -- workers (one subprocess each) -------------------------------------------------------------
def worker_time(case: Case, quick: bool, reps: int) -> dict:
    import torch

    torch.set_num_threads(case.threads)
    fns, result = {}, {}
    for impl in ("ours", "peer", "floor"):
        try:
            fns[impl] = case.build(quick, impl)
        except PeerMissing as e:
            result[impl] = {"missing": str(e)}
    result.update(time_interleaved(fns, reps))
    return result


def time_interleaved(fns: dict[str, Callable[[], None]], reps: int) -> dict[str, dict[str, float]]:
    """Median, min and max seconds of each callable over ``reps`` rounds after one warm-up round, the order of
    the callables reversed every other round."""
    samples = interleaved(fns, reps)  # the warm-up round: extension builds, allocator, peers' lazy setup
    return {key: {"median": statistics.median(s["wall"]), "min": min(s["wall"]), "max": max(s["wall"])}
            for key, s in samples.items()}


def worker_memory(case: Case, quick: bool, impl: str) -> dict:
    import torch

    torch.set_num_threads(case.threads)
    try:
        run = case.build(quick, impl)
    except PeerMissing as e:
        return {"missing": str(e)}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mb": (after - before) / 1024, "total_mb": after / 1024}


def _subprocess(args: list[str], timeout: float) -> dict:
    return run_worker(__file__, args, timeout)


# -- the table ---------------------------------------------------------------------------------------
def _fmt_time(case: Case, quick: bool, seconds: float) -> str:
    if case.unit == "tok/s":
        return f"{case.tokens(quick) / seconds:,.0f} tok/s ({seconds:.3f} s)"
    return f"{seconds:.3f} s" if seconds >= 0.1 else f"{seconds * 1e3:.1f} ms"


def _cell(case: Case, quick: bool, r: dict | None) -> str:
    if r is None:
        return "—"
    if "missing" in r:
        return r["missing"]
    if "error" in r:
        return f"error: {r['error']}"
    flag = " ⚠" if r["max"] / r["min"] - 1 > SPREAD_LIMIT else ""
    return _fmt_time(case, quick, r["median"]) + flag


def _mem(r: dict) -> str:
    if "peak_mb" in r:
        return f"{r['peak_mb']:,.0f} MB" if r["peak_mb"] >= 1 else f"{r['peak_mb'] * 1024:,.0f} kB"
    return "—" if "missing" in r else f"error: {r.get('error', '?')}"


def _load() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def _busy() -> bool:
    """True when the 1-minute load average exceeds the core count (other work competes for the CPUs)."""
    try:
        return os.getloadavg()[0] > (os.cpu_count() or 1)
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes: a smoke test of every case")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per implementation (5; quick 2)")
    parser.add_argument("--cases", nargs="+", choices=list(BY_KEY), default=list(BY_KEY))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for every workload (default: each workload's own, in the table)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per subprocess")
    parser.add_argument("--out", type=Path, default=None, help="default results/summary.md (quick: a file in the temp folder)")
    parser.add_argument("--s4-repo", type=Path, default=None,
                        help=f"a checkout of state-spaces/s4 (the S4D peer); default ${S4_REPO_VAR}")
    parser.add_argument("--allocator", choices=("default", "keep"), default="default",
                        help="keep: every worker calls ssmzoo.allocator.keep_freed_memory() first (both sides reuse "
                             "freed memory without page faults, as under jemalloc); default: glibc as it comes")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.s4_repo is not None:
        os.environ[S4_REPO_VAR] = str(args.s4_repo.resolve())  # the workers inherit it
    reps = args.reps or (2 if args.quick else 5)

    if args.worker:  # a subprocess: time one case, or the memory of one implementation
        warnings.filterwarnings("ignore")
        if args.allocator == "keep":
            from ssmzoo.allocator import keep_freed_memory

            if not keep_freed_memory():
                raise SystemExit("--allocator keep: this platform's malloc has no mallopt (glibc only)")
        kind, key, *rest = args.worker
        case = BY_KEY[key]
        if args.threads is not None:
            case = dataclasses.replace(case, threads=args.threads)
        out = worker_time(case, args.quick, reps) if kind == "time" else worker_memory(case, args.quick, rest[0])
        print(json.dumps(out))
        return

    quick_flag = ((["--quick"] if args.quick else []) + (["--threads", str(args.threads)] if args.threads else [])
                  + ["--allocator", args.allocator])
    load_before, started = _load(), time.time()
    busy_before = _busy()
    rows = []
    for key in args.cases:
        case = BY_KEY[key]
        if args.threads is not None:
            case = dataclasses.replace(case, threads=args.threads)
        print(f"[{key}] timing ...", flush=True)
        timing = _subprocess(["--worker", "time", key, "--reps", str(reps), *quick_flag], args.timeout)
        memory = {impl: _subprocess(["--worker", "memory", key, impl, *quick_flag], args.timeout)
                  for impl in ("ours", "peer")}
        rows.append((case, timing, memory))
        print(f"[{key}] {json.dumps(timing)} {json.dumps(memory)}", flush=True)
    load_after, minutes = _load(), (time.time() - started) / 60
    busy = busy_before or _busy()

    import torch

    peers = {d: _version(d) for d in ("mambapy", "transformers", "titans-pytorch")}
    lines = [
        "# CPU speed: ssmzoo vs peers" + (" (QUICK smoke run: tiny shapes, not results)" if args.quick else ""),
        "",
        f"{datetime.date.today().isoformat()}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"torch {torch.__version__}; peers: " + ", ".join(f"{k} {v}" for k, v in peers.items())
        + f", state-spaces/s4 models/s4/s4d.py from {os.environ.get(S4_REPO_VAR, 'nowhere (not checked out)')}.",
        f"Load average (1/5/15 min) before: {load_before}; after: {load_after}; the run took {minutes:.1f} min.",
        "Allocator: " + ("freed memory kept in the process for both sides (`--allocator keep`: "
                         "ssmzoo.allocator.keep_freed_memory(), glibc's mmap and trim thresholds at 1 GiB)."
                         if args.allocator == "keep" else
                         "glibc's malloc as it comes (blocks above 32 MB mapped fresh on every allocation: page "
                         "faults; `--allocator keep` removes them for both sides)."),
        *(["", "**⚠ Measured under load (1-minute load average above the core count): provisional figures, not "
            "results. Rerun on an idle machine.**"] if busy else []),
        f"Command: `python benchmarks/speed/all.py {' '.join(sys.argv[1:])}`".rstrip() + "",
        "",
        f"Times: median of {reps} interleaved repetitions (ours, peer, floor) in one process per workload, after a "
        "warm-up; ⚠ marks a spread (max/min) above 20%: not yet a result. Ratio: peer time / ours (for tok/s the "
        "same). Floor: the matmuls of the same shapes plus one read and write of the bytes the op must touch "
        "(a copy), measured in the same process. Peak: growth of ru_maxrss over one run, one fresh process per cell.",
        "",
        "| workload | threads | ours | peer | ratio | floor | ours / floor | ours peak | peer peak |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case, timing, memory in rows:
        workload = case.quick_workload if args.quick else case.workload
        if "error" in timing:
            lines.append(f"| {workload} | {case.threads} | error: {timing['error']} | | | | | | |")
            continue
        ours, peer, floor = timing.get("ours"), timing.get("peer"), timing.get("floor")
        ok = lambda r: r is not None and "median" in r  # noqa: E731
        ratio = f"{peer['median'] / ours['median']:.2f}×" if ok(ours) and ok(peer) else "—"
        per_floor = f"{ours['median'] / floor['median']:.1f}×" if ok(ours) and ok(floor) else "—"
        peer_name = f"{case.peer}: " if case.peer and ok(peer) else ""
        floor_cell = _cell(case, args.quick, floor) if ok(floor) else "—"
        if ok(floor) and case.unit == "tok/s":
            floor_cell = _fmt_time(dataclasses.replace(case, unit="s"), args.quick, floor["median"])
        lines.append(f"| {workload} | {case.threads} | {_cell(case, args.quick, ours)} | "
                     f"{peer_name}{_cell(case, args.quick, peer)} | {ratio} | {floor_cell} | {per_floor} | "
                     f"{_mem(memory['ours'])} | {_mem(memory['peer'])} |")
    text = "\n".join(lines) + "\n"
    out = args.out or (Path(tempfile.gettempdir()) / "ssmzoo_speed_summary_quick.md" if args.quick
                       else RESULTS / "summary.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
