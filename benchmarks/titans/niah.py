"""Needle-in-a-haystack associative recall: Titans MAC, MAG, MAL and a recurrent baseline, on CPU.

    python benchmarks/titans/niah.py [--steps 200] [--pairs 1] [--jobs 4]

Each sequence is a haystack of filler tokens with ``--pairs`` needles "key value" hidden at random
places, then the same keys again in random order, each followed by its value: the model must
recall every value from its key (loss and accuracy on those value positions only; chance =
1/values). With one pair this is the passkey test of the paper (S-NIAH-PK). Models are small
(d_model 32, 2 blocks) and trained briefly at length 64; they are tested at 64 and at longer
lengths, where most needles lie far beyond the attention span (16) and only a memory can carry
them. Models train in parallel processes (one thread each). The recurrent
baseline is the registered "mamba" layer when present, else "s4d" (the table says which).
Writes benchmarks/titans/results/niah.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's ssmzoo, not an installed one
from ssmzoo import layers
from ssmzoo.models import MAC, MAG, MAL, LanguageModel

FILLER, KEYS, VALUES = 16, 16, 16
VOCAB = FILLER + KEYS + VALUES  # filler 0..15, keys 16..31, values 32..47
SPAN = 16  # MAC segment / MAG, MAL sliding window


def make_batch(batch: int, length: int, pairs: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """tokens (batch, length), targets (batch, length) with -100 everywhere but the recalled values."""
    tokens = torch.randint(0, FILLER, (batch, length), generator=generator)
    targets = torch.full((batch, length), -100)
    questions = length - 2 * pairs  # the last 2·pairs positions ask
    for b in range(batch):
        keys = torch.randperm(KEYS, generator=generator)[:pairs] + FILLER
        values = torch.randint(0, VALUES, (pairs,), generator=generator) + FILLER + KEYS
        # needles at distinct, non-overlapping even offsets anywhere in the haystack
        slots = torch.randperm(questions // 2, generator=generator)[:pairs] * 2
        for i in range(pairs):
            tokens[b, slots[i]], tokens[b, slots[i] + 1] = keys[i], values[i]
        order = torch.randperm(pairs, generator=generator)
        for j, i in enumerate(order.tolist()):
            tokens[b, questions + 2 * j], tokens[b, questions + 2 * j + 1] = keys[i], values[i]
            targets[b, questions + 2 * j] = values[i]  # predict the value from the key
    return tokens, targets


def models(d_model: int) -> dict[str, tuple[nn.Module, str]]:
    titans = {"d_model": d_model, "n_layers": 2, "heads": 2, "persistent_tokens": 4, "memory_heads": 2, "memory_depth": 2}
    out = {
        "MAC": (MAC(VOCAB, segment_len=SPAN, **titans), f"segment {SPAN}"),
        "MAG": (MAG(VOCAB, window=SPAN, memory_chunk=8, **titans), f"window {SPAN}, memory chunk 8"),
        "MAL": (MAL(VOCAB, window=SPAN, memory_chunk=8, **titans), f"window {SPAN}, memory chunk 8"),
    }
    # Mamba blocks have no MLP, so the baseline gets twice the blocks (about the same parameters).
    if "mamba" in layers.available():
        out["Mamba"] = (LanguageModel(VOCAB, d_model, 4, layer="mamba", layer_args={"d_state": 16}),
                        "registered mamba layer, 4 blocks, d_state 16")
    else:
        out["S4D"] = (LanguageModel(VOCAB, d_model, 4, layer="s4d", layer_args={"d_state": 32}),
                      "registered s4d layer, 4 blocks (no mamba layer available)")
    return out


def train(model: nn.Module, steps: int, batch: int, length: int, pairs: int, lr: float, seed: int,
          name: str = "") -> float:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    loss = torch.tensor(0.0)
    for step in range(steps):
        tokens, targets = make_batch(batch, length, pairs, g)
        loss = F.cross_entropy(model(tokens).flatten(0, 1), targets.flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 25 == 0:
            print(f"{name} step {step} loss {float(loss.detach()):.3f}", file=sys.stderr, flush=True)
    return float(loss.detach())


@torch.no_grad()
def accuracy(model: nn.Module, length: int, pairs: int, samples: int, seed: int) -> float:
    model.eval()
    g = torch.Generator().manual_seed(seed)
    correct = total = 0
    for _ in range(samples // 32):
        tokens, targets = make_batch(32, length, pairs, g)
        pred = model(tokens).argmax(-1)
        asked = targets != -100
        correct += int((pred[asked] == targets[asked]).sum())
        total += int(asked.sum())
    return correct / total


def run_one(name: str, args: argparse.Namespace) -> str:
    """Train and test one model (in its own process); returns its table row."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, desc = models(args.d_model)[name]
    t0 = time.time()
    final_loss = train(model, args.steps, args.batch, args.train_length, args.pairs, args.lr, seed=1, name=name)
    accs = [accuracy(model, n, args.pairs, args.samples, seed=100 + n) for n in args.test_lengths]
    took = time.time() - t0
    n_params = sum(p.numel() for p in model.parameters())
    row = (f"| {name} | {desc} | {n_params:,} | {final_loss:.3f} | " + " | ".join(f"{a:.1%}" for a in accs)
           + f" | {took:.0f} |")
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--train-length", type=int, default=64)
    parser.add_argument("--test-lengths", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--d-model", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=4, help="models trained at once, one process each")
    parser.add_argument("--only", nargs="*", default=None, help="train only these models (names as in the table)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "niah.md")
    args = parser.parse_args()
    names = [n for n in models(args.d_model) if not args.only or n in args.only]
    with multiprocessing.get_context("spawn").Pool(min(args.jobs, len(names))) as pool:
        rows = pool.starmap(run_one, [(n, args) for n in names])
    lengths = " | ".join(f"acc @ {n}" for n in args.test_lengths)
    text = "\n".join([
        "# Needle-in-a-haystack associative recall (CPU)",
        "",
        (f"{args.pairs} key→value needle(s) hidden at random in a haystack of {FILLER} filler tokens, then "
        f"every key asked again at the end; accuracy of the recalled values (chance {1 / VALUES:.1%}). "
        f"d_model {args.d_model}, trained {args.steps} steps of batch {args.batch} at length "
        f"{args.train_length} (AdamW, one-cycle lr {args.lr}), tested on {args.samples} fresh sequences "
        f"per length. Attention span (MAC segment, MAG/MAL window) {SPAN}. {args.threads} thread per "
        f"model, {args.jobs} models at once on a shared 2-core machine (seconds are wall-clock)."),
        "",
        f"| model | setting | parameters | final train loss | {lengths} | seconds |",
        "|---|---|---|---|" + "---|" * len(args.test_lengths) + "---|",
        *rows,
        "",
        "Accuracies within a few points of chance mean a model did not learn the task in this budget",
        f"(sampling noise is about ±2 points at {args.samples} questions).",
        "",
        f"Reproduce: `python benchmarks/titans/niah.py --steps {args.steps} --pairs {args.pairs}`",
    ]) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
