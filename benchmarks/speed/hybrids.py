"""Generation on CPU with the hybrid checkpoints (Bamba, Nemotron-H, Falcon-H1, Zamba2, Qwen3.5): ssmzoo's
``LanguageModel.generate`` against transformers' ``generate`` on the same random-weight model.

For each architecture, a model of about 100M parameters (d_model 768, vocabulary 32,000; the shapes are in
``SHAPES``, their parameter counts in the table) is built by transformers from its config with seed 0 and
converted to ours through the checkpoint converters (``LanguageModel`` with a layer pattern): the same weights,
float32. Prompt 1,024 random tokens, 256 new tokens, greedy, batch 1 and 8.

One fresh process per (architecture, batch, implementation), so each reads its own peak memory; the processes
alternate ours / transformers (``--reps`` rounds, median). In a process: the model is built, a short warm-up
generate runs (prompt 32, 4 tokens), then one measured generate whose streamer stamps the time of every new
token: prefill = time to the first new token (prompt tokens/s = batch · prompt / that), decode = the rest
(generated tokens/s = batch · (new − 1) / that). Peak memory: the process's peak resident set during the
measured generate (Linux: the peak is reset just before it through /proc/self/clear_refs), weights included, and
what generating added to the resident set before it. Both sides run at ``--threads`` torch threads (default 1). The
two implementations' generated tokens are compared (they are the same model: a difference can only come from
float32 rounding flipping a near tie).

The matmul floor: our prefill's and one decode step's matmuls are recorded (``matmul_share.RecordMatmuls``) and
replayed alone on fresh operands of the same shapes, in the same process (prompt tokens/s and generated tokens/s
if nothing but those matmuls ran). Both implementations issue these products (the projections, MLPs and head are
the same model's), so transformers' time over the floor is the ratio any implementation could reach against it
without fewer matmul FLOPs or faster BLAS.

    python benchmarks/speed/hybrids.py                              # all, writes results/hybrids.md
    python benchmarks/speed/hybrids.py --archs bamba --batches 1 --reps 1
    python benchmarks/speed/hybrids.py --quick                      # tiny shapes: checks that it runs

Speed figures taken on a shared, busy machine are provisional: the table records the load average before and
after the run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

from _timing import run_worker  # beside this file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # this checkout's ssmzoo, not an installed copy
RESULTS = Path(__file__).parent / "results" / "hybrids.md"
ARCHS = ("bamba", "nemotron_h", "falcon_h1", "zamba2", "qwen3_5_text")
IMPLS = ("ours", "transformers")
RUN = dict(prompt=1024, new=256, vocab=32000)
QUICK_RUN = dict(prompt=24, new=6, vocab=128)


def shapes(quick: bool) -> dict[str, dict]:
    """transformers config arguments per architecture: ~100M parameters (quick: tiny)."""
    d, vocab = (32, QUICK_RUN["vocab"]) if quick else (768, RUN["vocab"])
    heads, mheads, state = (4, 4, 8) if quick else (12, 24, 128)
    chunk = 8 if quick else 256
    mlp = 64 if quick else 2048
    return {
        # Mamba-2 blocks with one attention block among them (Bamba-9B: 3 of 32), a SwiGLU MLP in every block
        "bamba": dict(vocab_size=vocab, hidden_size=d, intermediate_size=mlp, num_hidden_layers=7,
                      num_attention_heads=heads, num_key_value_heads=heads // 3 if not quick else 2,
                      attn_layer_indices=[3], mamba_n_heads=mheads, mamba_d_state=state, mamba_n_groups=1,
                      mamba_expand=2, mamba_chunk_size=chunk),
        # Nemotron-H's alternation: Mamba-2 and squared-ReLU MLP blocks, one attention block
        "nemotron_h": dict(vocab_size=vocab, hidden_size=d, hybrid_override_pattern="M-M-M*-M-M-M-",
                           num_attention_heads=heads, num_key_value_heads=heads // 3 if not quick else 2,
                           head_dim=d // heads, intermediate_size=int(1.5 * mlp), mamba_num_heads=mheads,
                           mamba_head_dim=2 * d // mheads, ssm_state_size=state, n_groups=1, chunk_size=chunk),
        # Mamba-2 beside attention in every block, then a SwiGLU MLP
        "falcon_h1": dict(vocab_size=vocab, hidden_size=d, intermediate_size=3 * mlp // 4, num_hidden_layers=7,
                          num_attention_heads=heads, num_key_value_heads=heads // 3 if not quick else 2,
                          mamba_d_ssm=2 * d, mamba_n_heads=mheads, mamba_d_state=state, mamba_n_groups=1,
                          mamba_chunk_size=chunk),
        # Mamba-2 blocks, two of them reading the one shared transformer block (adapters, rotary)
        "zamba2": dict(vocab_size=vocab, hidden_size=d, num_hidden_layers=15, intermediate_size=mlp,
                       layers_block_type=["mamba"] * 7 + ["hybrid"] + ["mamba"] * 6 + ["hybrid"],
                       num_attention_heads=heads, mamba_d_state=state, n_mamba_heads=mheads, chunk_size=chunk,
                       num_mem_blocks=1, adapter_rank=8 if quick else 64, use_shared_attention_adapter=True,
                       use_mem_rope=True),
        # Qwen3.5's layout scaled down: three Gated DeltaNet blocks, then gated attention (q/k norms, output gate,
        # a quarter of each head rotated), a SwiGLU MLP in every block
        "qwen3_5_text": dict(vocab_size=vocab, hidden_size=d, intermediate_size=mlp, num_hidden_layers=8,
                             num_attention_heads=heads if quick else 8, num_key_value_heads=2,
                             head_dim=8 if quick else 128, linear_num_key_heads=2 if quick else 6,
                             linear_num_value_heads=4 if quick else 12, linear_key_head_dim=8 if quick else 64,
                             linear_value_head_dim=8 if quick else 64),
    }


CONFIGS = {"bamba": "BambaConfig", "nemotron_h": "NemotronHConfig", "falcon_h1": "FalconH1Config",
           "zamba2": "Zamba2Config", "qwen3_5_text": "Qwen3_5TextConfig"}


class Stamps:
    """A streamer (transformers' put/end protocol, which ssmzoo's generate also speaks): the time of every put.
    The first put is the prompt; the second, the first new token."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens: list[list[int]] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())
        self.tokens.append(value.reshape(value.shape[0], -1)[:, -1].tolist())

    def end(self) -> None:
        pass


def build(arch: str, quick: bool, impl: str):
    """(model, generate(ids, new, streamer)) for impl; the same weights on both sides (seed 0)."""
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "falling back to the PyTorch implementation" notices
    torch.manual_seed(0)
    config = getattr(transformers, CONFIGS[arch])(**shapes(quick)[arch])
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    if impl == "transformers":
        return hf, lambda ids, new, streamer: hf.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                                          eos_token_id=None, pad_token_id=0, streamer=streamer)
    from ssmzoo.models.convert import get_converter

    ours = get_converter(arch).load(json.loads(config.to_json_string()), hf.state_dict()).eval()
    return ours, lambda ids, new, streamer: ours.generate(ids, max_new_tokens=new, streamer=streamer)


def _status_mib(field: str) -> float | None:
    """A field of /proc/self/status in MiB (VmRSS, VmHWM), None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the process's peak resident set (VmHWM) to its current one; False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _matmul_floor(generate, ids, reps: int = 3) -> tuple[float, float]:
    """(prefill, one decode step) seconds of our matmuls alone: recorded, then replayed on fresh operands."""
    sys.path.insert(0, str(Path(__file__).parent))
    from matmul_share import RecordMatmuls, replay

    with RecordMatmuls() as rec:
        generate(ids, 1, None)
    prefill_calls = list(rec.calls)
    with RecordMatmuls() as rec:
        generate(ids, 2, None)
    step_calls = rec.calls[len(prefill_calls):]
    times = []
    for calls in (prefill_calls, step_calls):
        run = replay(calls)
        run()
        samples = []
        for _ in range(reps):
            start = time.perf_counter()
            run()
            samples.append(time.perf_counter() - start)
        times.append(statistics.median(samples))
    return times[0], times[1]


def worker(arch: str, batch: int, impl: str, quick: bool, threads: int) -> dict:
    import gc

    import torch

    torch.set_num_threads(threads)
    run = QUICK_RUN if quick else RUN
    model, generate = build(arch, quick, impl)
    params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, run["vocab"], (batch, run["prompt"]), generator=g)
    with torch.no_grad():
        generate(ids[:, :32], 4, None)  # warm-up: kernels built and loaded, allocator primed
        gc.collect()
        reset = _reset_peak()
        rss_before = _status_mib("VmRSS")
        maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        stamps = Stamps()
        start = time.perf_counter()
        out = generate(ids, run["new"], stamps)
        end = time.perf_counter()
        if reset and rss_before is not None:
            peak = _status_mib("VmHWM")
            added = peak - rss_before
        else:  # no resettable peak: the high-water mark since the process began, and its growth
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            added = peak - maxrss_before
        floor = _matmul_floor(generate, ids) if impl == "ours" else None
    first = stamps.times[1]  # the prompt's put, then the first new token's
    result = {"params": params, "prefill_s": first - start, "decode_s": end - first,
              "prompt_tok_s": batch * run["prompt"] / (first - start),
              "decode_tok_s": batch * (run["new"] - 1) / (end - first), "peak_mib": peak, "added_mib": added,
              "tokens": out[:, run["prompt"]:].tolist()}
    if floor is not None:
        result["floor_prompt_tok_s"] = batch * run["prompt"] / floor[0]
        result["floor_decode_tok_s"] = batch / floor[1]
    return result


def _subprocess(args: list[str], threads: int, timeout: float) -> dict:
    return run_worker(__file__, args, timeout, threads)


def _agreement(a: list[list[int]], b: list[list[int]]) -> str:
    """How far the two implementations' greedy tokens agree: "all" or the first position they part at."""
    for row_a, row_b in zip(a, b):
        for i, (x, y) in enumerate(zip(row_a, row_b)):
            if x != y:
                return f"first {i} of {len(row_a)}"
    return "all"


def run(quick: bool, archs=ARCHS, batches=(1, 8), reps: int = 1, threads: int = 1, timeout: float = 3600) -> list[dict]:
    rows = []
    flag = ["--quick"] if quick else []
    for arch in archs:
        for batch in batches:
            results: dict[str, list[dict]] = {impl: [] for impl in IMPLS}
            for r in range(reps):  # ours and transformers alternate, one fresh process each
                for impl in IMPLS if r % 2 == 0 else tuple(reversed(IMPLS)):
                    results[impl].append(_subprocess(["--worker", arch, str(batch), impl, *flag], threads, timeout))
            row: dict = {"arch": arch, "batch": batch, "threads": threads, "reps": reps}
            for impl, runs in results.items():
                good = [r for r in runs if "error" not in r]
                if not good:
                    row[impl] = {"error": runs[0]["error"]}
                    continue
                row[impl] = {k: statistics.median(r[k] for r in good) for k in good[0] if k not in ("params", "tokens")}
                row["params"] = good[0]["params"]
                row.setdefault("tokens", {})[impl] = good[0]["tokens"]
            if all("error" not in row[i] for i in IMPLS):
                row["agree"] = _agreement(row["tokens"]["ours"], row["tokens"]["transformers"])
            row.pop("tokens", None)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _load() -> str:
    return "load average " + " / ".join(f"{x:.1f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs"


def table(rows: list[dict], load_before: str, load_after: str, quick: bool) -> str:
    import torch
    import transformers

    run_ = QUICK_RUN if quick else RUN
    lines = [
        "# Hybrid checkpoints: generation on CPU, ssmzoo vs transformers",
        "",
        f"`python benchmarks/speed/hybrids.py{' --quick' if quick else ''}`: random-weight models from transformers "
        f"configs (seed 0), float32, prompt {run_['prompt']:,} + {run_['new']} new tokens, greedy; one process per "
        f"(architecture, batch, implementation); torch {torch.__version__}, transformers {transformers.__version__}.",
        f"Before: {load_before}; after: {load_after}. PROVISIONAL where the machine was busy (a load above its CPU "
        "count means other work shared the cores).",
        "",
        "| architecture | params | batch | prompt tok/s: ours | transformers | ratio | matmul floor | generated tok/s: "
        "ours | transformers | ratio | matmul floor | peak RSS MiB (added by generate): ours | transformers "
        "| greedy tokens agree |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        o, t = r.get("ours", {}), r.get("transformers", {})
        if "error" in o or "error" in t:
            lines.append(f"| {r['arch']} | | {r['batch']} | error: {o.get('error') or t.get('error')} "
                         "| | | | | | | | | | |")
            continue
        lines.append(
            f"| {r['arch']} | {r['params'] / 1e6:.0f}M | {r['batch']} | {o['prompt_tok_s']:.0f} | "
            f"{t['prompt_tok_s']:.0f} | {o['prompt_tok_s'] / t['prompt_tok_s']:.2f}x | "
            f"{o.get('floor_prompt_tok_s', float('nan')):.0f} | {o['decode_tok_s']:.1f} | {t['decode_tok_s']:.1f} | "
            f"{o['decode_tok_s'] / t['decode_tok_s']:.2f}x | {o.get('floor_decode_tok_s', float('nan')):.1f} | "
            f"{o['peak_mib']:.0f} ({o['added_mib']:.0f}) | {t['peak_mib']:.0f} ({t['added_mib']:.0f}) | "
            f"{r.get('agree', '')} |")
    threads = sorted({r["threads"] for r in rows})
    return "\n".join(lines) + f"\nThreads: {', '.join(map(str, threads))} (torch, OMP and MKL).\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes: check that it runs")
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--reps", type=int, default=1, help="rounds of (ours, transformers) processes; median")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help=f"table file (default {RESULTS}; --quick: none)")
    parser.add_argument("--worker", nargs=3, metavar=("ARCH", "BATCH", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        arch, batch, impl = args.worker
        print(json.dumps(worker(arch, int(batch), impl, args.quick, args.threads)))
        return
    before = _load()
    rows = run(args.quick, args.archs, args.batches, args.reps, args.threads)
    text = table(rows, before, _load(), args.quick)
    print(text)
    out = args.out or (None if args.quick else RESULTS)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(out)


if __name__ == "__main__":
    main()
