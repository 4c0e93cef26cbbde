"""Forward + backward time of Mamba on CPU: ssmzoo vs mambapy (parallel pscan) vs Hugging Face
transformers' pure-PyTorch slow path (the sequential loop it takes without CUDA kernels).

All three get the same weights (copied from the Hugging Face model; the parameter names coincide)
and the same inputs, in the same process and thread count. Repetitions are interleaved (ours, peer,
peer, ours, ...) and the median is taken, because the machine may be shared. The outputs are also
compared, so a speed-up never comes from computing something else.

    python benchmarks/speed/mamba.py                      # B=4, d_model=128, N=16, L in {1024, 4096}
    python benchmarks/speed/mamba.py --lengths 256 --reps 2   # a quick look
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's ssmzoo, not an installed one

from ssmzoo import Mamba
from ssmzoo.models.convert import from_hf_mamba

RESULTS = Path(__file__).parent / "results"


def peers_for_layer(d_model: int, d_state: int, scan_backend: str | None) -> dict[str, nn.Module]:
    from mambapy.mamba import MambaBlock
    from mambapy.mamba import MambaConfig as PyConfig
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer

    hf = MambaMixer(MambaConfig(hidden_size=d_model, state_size=d_state, use_mambapy=False), layer_idx=0)
    ours = Mamba(d_model, d_state=d_state, selective_scan_backend=scan_backend)
    pyb = MambaBlock(PyConfig(d_model=d_model, n_layers=1, d_state=d_state, pscan=True))
    sd = hf.state_dict()
    ours.load_state_dict(sd)
    pyb.load_state_dict(sd)
    return {"ssmzoo": ours, "mambapy": pyb, "transformers": hf}


def peers_for_model(d_model: int, d_state: int, n_layers: int, vocab: int, scan_backend: str | None) -> dict[str, nn.Module]:
    from mambapy.mamba import Mamba as PyMamba
    from mambapy.mamba import MambaConfig as PyConfig
    from mambapy.mamba import RMSNorm as PyRMSNorm
    from transformers import MambaConfig, MambaForCausalLM

    config = MambaConfig(vocab_size=vocab, hidden_size=d_model, state_size=d_state, num_hidden_layers=n_layers,
                         use_mambapy=False, use_cache=False, tie_word_embeddings=True)
    hf = MambaForCausalLM(config)
    ours = from_hf_mamba(hf)
    for block in ours.layers:
        block.mixer.selective_scan_backend = scan_backend
    # mambapy.lm imports mamba-ssm (for Mamba-2), so assemble its LM from its parts: the same
    # embedding -> residual blocks -> RMSNorm -> tied head as the other two.
    py = nn.Module()
    py.embedding = nn.Embedding(vocab, d_model)
    py.mamba = PyMamba(PyConfig(d_model=d_model, n_layers=n_layers, d_state=d_state, pscan=True))
    py.norm_f = PyRMSNorm(d_model)
    py.lm_head = nn.Linear(d_model, vocab, bias=False)
    py.lm_head.weight = py.embedding.weight
    py.forward = lambda ids: py.lm_head(py.norm_f(py.mamba(py.embedding(ids))))
    sd = {}
    for k, v in hf.state_dict().items():
        k = k.replace("backbone.embeddings.", "embedding.").replace("backbone.layers.", "mamba.layers.")
        sd[k.replace("backbone.norm_f.", "norm_f.")] = v
    py.load_state_dict(sd)
    return {"ssmzoo": ours, "mambapy": py, "transformers": hf}


def call(name: str, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = module(x)
    return out.logits if hasattr(out, "logits") else out


def fwd_bwd(name: str, module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], float]:
    def run() -> float:
        module.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        call(name, module, x).backward(grad)
        return time.perf_counter() - t0

    return run


def bench(modules: dict[str, nn.Module], x: torch.Tensor, reps: int, warmup: bool) -> dict[str, float]:
    for m in modules.values():
        m.train()
    with torch.no_grad():
        outs = {n: call(n, m, x) for n, m in modules.items()}
    ref_name = "transformers" if "transformers" in outs else "mambapy"
    ref = outs[ref_name]
    for n, o in outs.items():
        err = (o - ref).abs().max().item() / ref.abs().max().item()
        if err > 1e-3:
            raise RuntimeError(f"{n} disagrees with {ref_name}: relative max error {err:.2e}")
    grad = torch.randn_like(ref)
    runs = {n: fwd_bwd(n, m, x, grad) for n, m in modules.items()}
    times: dict[str, list[float]] = {n: [] for n in modules}
    names = list(modules)
    if warmup:  # allocator warm-up (the extension is already loaded by the backend probe)
        for n in names:
            runs[n]()
    for r in range(reps):
        for n in names if r % 2 == 0 else reversed(names):
            times[n].append(runs[n]())
    return {n: statistics.median(t) for n, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--peers", nargs="+", choices=["mambapy", "transformers"], default=["mambapy", "transformers"],
                   help="leave out transformers at long lengths: its sequential loop takes minutes on a busy CPU")
    p.add_argument("--cases", nargs="+", choices=["layer", "model"], default=["layer", "model"])
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up run (slow machines)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for all three (default: torch's)")
    p.add_argument("--scan-backend", default=None, help="ssmzoo selective_scan backend (default: auto)")
    p.add_argument("--out", type=Path, default=RESULTS / "mamba.md")
    args = p.parse_args()

    from ssmzoo.ops.dispatch import Request
    from ssmzoo.ops.selective_scan import dispatch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backend = dispatch.choose(args.scan_backend, Request(torch.device("cpu"), torch.float32, grad=True)).name
    header = (f"B={args.batch}, d_model={args.d_model}, N={args.d_state}, float32, CPU, "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}, ssmzoo scan backend `{backend}`, "
              f"median of {args.reps} interleaved forward+backward repetitions")
    rows = []
    for length in args.lengths:
        cases = []
        if "layer" in args.cases:
            cases.append(("1 layer", peers_for_layer(args.d_model, args.d_state, args.scan_backend),
                          torch.randn(args.batch, length, args.d_model)))
        if "model" in args.cases:
            cases.append((f"{args.n_layers}-layer LM (vocab {args.vocab})",
                          peers_for_model(args.d_model, args.d_state, args.n_layers, args.vocab, args.scan_backend),
                          torch.randint(0, args.vocab, (args.batch, length))))
        for what, modules, x in cases:
            modules = {n: m for n, m in modules.items() if n == "ssmzoo" or n in args.peers}
            t = bench(modules, x, args.reps, warmup=not args.no_warmup)
            best_peer = min(t[n] for n in args.peers)
            ms = {n: f"{t[n] * 1e3:.0f}" if n in t else "-" for n in ("mambapy", "transformers")}
            ratio = {n: f"{t[n] / t['ssmzoo']:.2f}x" if n in t else "-" for n in ("mambapy", "transformers")}
            row = (f"| {what} | {length} | {t['ssmzoo'] * 1e3:.0f} | {ms['mambapy']} | {ms['transformers']} | "
                   f"{ratio['mambapy']} | {ratio['transformers']} | {best_peer / t['ssmzoo']:.2f}x |")
            print(row, flush=True)
            rows.append(row)
    table = "\n".join([
        "| case | L | ssmzoo ms | mambapy ms | transformers ms | vs mambapy | vs transformers | vs faster peer |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    text = f"# Mamba forward+backward speed (CPU)\n\n{header}\n\n{table}\n\nReproduce: `python benchmarks/speed/mamba.py`\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
