"""Passkey retrieval far beyond the training length: small RAMba, HSA + SWA and Mamba models trained at
<= 1K tokens on CPU, evaluated at 1K, 4K, 16K, 64K (and beyond, as CPU time allows).

    python benchmarks/longcontext/passkey.py train        # ssmzoo fit, one config per model (below)
    python benchmarks/longcontext/passkey.py evaluate     # the table: results/passkey.{md,json}
    python benchmarks/longcontext/passkey.py all          # both

Training goes through the ``ssmzoo`` command with ``configs/longcontext/passkey_<model>.yaml`` (extra
``--set key=value`` overrides are passed on, e.g. ``--set trainer.max_steps=300``); each run writes its
``results.json``, whose checkpoint ``evaluate`` loads (``RecallTask.load_from_checkpoint``).

Evaluation uses the models directly: for each length, ``--samples`` examples (``passkey_example`` with the
needle at evenly spaced depths from 0 to 1, digits drawn from a seed the training never used); the
prompt up to and including the question is prefilled with one ``forward``, then the passkey is decoded
greedily with ``step`` (the chunk cache grows by one chunk every S tokens). A passkey counts when all its
digits come out right. Reported beside the accuracy: the decoding state's size after the prefill (what
decoding one more token holds in memory; RAMba's and HSA+SWA's grow with the context by the chunk
cache's bytes per token, Mamba's does not), the time per decoded token, and the prefill time.

Published, for comparison (different scale and data): RAMba (370M, pretrained at 4K on text) retrieves
the passkey 100% of the time at 64M tokens; HSA-UltraLong (8B MoE) keeps > 90% on most in-context
retrieval tasks up to 16M.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # this checkout's ssmzoo, not an installed one

import torch  # noqa: E402

from ssmzoo.data.synthetic.passkey import QUERY, passkey_example  # noqa: E402
from ssmzoo.tasks import RecallTask  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MODELS = {
    "ramba": ("RAMba (Mamba-2 + HSA)", "configs/longcontext/passkey_ramba.yaml"),
    "hsa_swa": ("HSA + SWA (HSA-UltraLong design)", "configs/longcontext/passkey_hsa_swa.yaml"),
    "mamba2": ("Mamba-2 (baseline)", "configs/longcontext/passkey_mamba2.yaml"),
}
PUBLISHED = ("RAMba paper: 100% passkey accuracy at 64M tokens after pretraining at 4K (370M parameters); "
             "HSA-UltraLong: > 90% on most in-context retrieval tasks up to 16M (8B MoE, pretrained at 8K)")
EVAL_SEED = 12345  # never a training seed


def train(models: list[str], runs: Path, overrides: list[str]) -> None:
    for name in models:
        cmd = [sys.executable, "-m", "ssmzoo.cli", "fit", "--config", str(ROOT / MODELS[name][1]),
               f"--trainer.default_root_dir={runs}", f"--run_name=passkey_{name}", "--trainer.enable_progress_bar=false"]
        cmd += [f"--{kv}" for kv in overrides]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)


def latest_results(runs: Path, name: str) -> dict:
    versions = sorted((runs / f"passkey_{name}").glob("version_*/results.json"), key=lambda p: p.stat().st_mtime)
    if not versions:
        raise FileNotFoundError(f"no trained run of {name} under {runs / f'passkey_{name}'}: run `train` first")
    return json.loads(versions[-1].read_text())


def state_bytes(state: object) -> int:
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(s) for s in state)
    return 0


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, length: int, samples: int, n_digits: int, filler_vocab: int) -> dict:
    """Accuracy and decoding costs at one length (one sequence at a time)."""
    model.eval()
    right, digits_right, state_sizes, step_s, prefill_s = 0, 0, [], [], []
    for i in range(samples):
        g = torch.Generator().manual_seed(EVAL_SEED * 1_000_003 + length * 131 + i)
        depth = i / max(samples - 1, 1)
        tokens, _ = passkey_example(length, n_digits, filler_vocab, g, depth=depth)
        q = length - n_digits - 1
        assert tokens[q] == QUERY
        start = time.perf_counter()
        logits, state = model(tokens[None, : q + 1], return_state=True)
        prefill_s.append(time.perf_counter() - start)
        state_sizes.append(state_bytes(state))
        out, token = [], logits[:, -1].argmax(-1)
        for j in range(n_digits):
            out.append(int(token))
            if j + 1 < n_digits:
                start = time.perf_counter()
                logits, state = model.step(token, state)
                step_s.append(time.perf_counter() - start)
                token = logits.argmax(-1)
        right += out == tokens[q + 1:].tolist()
        digits_right += sum(a == b for a, b in zip(out, tokens[q + 1:].tolist()))
    return {"L": length, "acc": right / samples, "digit_acc": digits_right / (samples * n_digits), "samples": samples,
            "state_mb": max(state_sizes) / 2**20,
            "ms_per_decoded_token": 1e3 * sum(step_s) / max(len(step_s), 1),
            "prefill_s": sum(prefill_s) / len(prefill_s)}


def evaluate(models: list[str], runs: Path, lengths: list[int], samples: int, threads: int) -> list[dict]:
    torch.set_num_threads(threads)
    rows = []
    for name in models:
        results = latest_results(runs, name)
        ckpt = results.get("checkpoint") or results["last_checkpoint"]
        task = RecallTask.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
        data = _data_args(Path(results["run_dir"]))
        row = {"model": name, "label": MODELS[name][0], "train_len": data["seq_len"], "n_digits": data["n_digits"],
               "val_digit_acc": results.get("best_score"), "test_acc_train_len": results.get("test_exact"),
               "steps": results.get("steps"), "params": sum(p.numel() for p in task.model.parameters()),
               "by_length": []}
        for length in lengths:
            result = evaluate_model(task.model, length, samples, data["n_digits"], data["filler_vocab"])
            print(f"{name} L={length}: {result}", flush=True)
            row["by_length"].append(result)
        rows.append(row)
    return rows


def _data_args(run_dir: Path) -> dict:
    """seq_len, n_digits, filler_vocab of a run, from the config the ``ssmzoo`` command saved beside it."""
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    args = config["data"]["init_args"]
    return {"seq_len": args["seq_len"], "n_digits": args["n_digits"], "filler_vocab": args["filler_vocab"]}


def table(rows: list[dict], lengths: list[int]) -> str:
    head = ["model", "params", "trained at", "steps", "digits"] + [f"acc @ {_k(L)}" for L in lengths]
    head += [f"state MB @ {_k(lengths[-1])}", "state bytes / context token", "ms / decoded token"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        by = {r["L"]: r for r in row["by_length"]}
        first, last = by[lengths[0]], by[lengths[-1]]
        growth = (last["state_mb"] - first["state_mb"]) * 2**20 / max(lengths[-1] - lengths[0], 1)
        cells = [row["label"], f"{row['params'] / 1e6:.2f}M", str(row["train_len"]), str(row["steps"]),
                 str(row["n_digits"])]
        cells += [f"{100 * by[L]['acc']:.0f}%" + (f" ({100 * by[L]['digit_acc']:.0f}%)" if row["n_digits"] > 1 else "")
                  for L in lengths]
        cells += [f"{last['state_mb']:.2f}", f"{growth:.0f}", f"{last['ms_per_decoded_token']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _k(length: int) -> str:
    return f"{length // 1024}K" if length % 1024 == 0 else str(length)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("train", "evaluate", "all"))
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "longcontext", help="the runs' folder")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides for ssmzoo fit, e.g. trainer.max_steps=300")
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    p.add_argument("--samples", type=int, default=20, help="examples per length (needle depths 0..1)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS / "passkey.md")
    p.add_argument("--keep", action="store_true",
                   help="keep the other models' rows already in the .json beside --out (evaluate models one by one)")
    args = p.parse_args()
    if args.what in ("train", "all"):
        train(args.models, args.runs, args.set)
    if args.what == "train":
        return
    load0 = os.getloadavg()
    start = time.perf_counter()
    rows = evaluate(args.models, args.runs, args.lengths, args.samples, args.threads)
    load1 = os.getloadavg()
    saved = args.out.with_suffix(".json")
    if args.keep and saved.exists():
        kept = [r for r in json.loads(saved.read_text()) if r["model"] not in args.models
                and [b["L"] for b in r["by_length"]] == args.lengths]
        rows = sorted(kept + rows, key=lambda r: list(MODELS).index(r["model"]))
    text = "\n".join([
        "# Passkey retrieval beyond the training length",
        "",
        f"{args.samples} examples per length (needle depths evenly spaced over the haystack), prefill by forward, "
        f"greedy decoding by step; {args.threads} threads, torch {torch.__version__}; evaluating "
        f"{', '.join(args.models)} took {time.perf_counter() - start:.0f} s. Load average before: "
        f"{' '.join(f'{v:.2f}' for v in load0)}, after: {' '.join(f'{v:.2f}' for v in load1)}.",
        "",
        f"`python benchmarks/longcontext/passkey.py {' '.join(sys.argv[1:])}`",
        "",
        table(rows, args.lengths),
        "",
        "acc: passkeys decoded whole (in brackets, with several digits: digits right). state: the decoding state "
        "after the prefill (all layers; the chunk cache for HSA); bytes / context token: its growth per token of "
        "context between the shortest and the longest length.",
        "",
        f"Published: {PUBLISHED}.",
        "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
