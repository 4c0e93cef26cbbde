"""What a trained passkey model does with its memory (the MAC investigation in ``results/mac.md``).

    python benchmarks/titans/mac_probe.py RUN_DIR [RUN_DIR ...] [--samples 2048] [--length 64]

For each run folder of ``niah.py`` (its best checkpoint), on fresh passkey samples:

- accuracy by where the needle is: within the attention span of the question (MAC: the question's segment;
  MAG/MAL: fewer than ``window`` tokens back) or beyond it, where only the memory can carry it;
- the same with each block's memory read-out taken from another sample (the batch rolled by one): the memory
  then holds another haystack, so accuracy beyond the span should fall to chance if the model uses it;
- per block, a linear probe (multinomial logistic regression, trained on half the samples, scored on the other)
  of the needle's value from the memory read-out at the question position: does the memory hold the answer?
- what kind of token it answers (a value, right or wrong; a key; a filler token);
- MAC only: per block, the attention mass the question puts on the persistent tokens, on the memory read-outs
  (on its own read-out h_T in particular) and on the segment's tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from ssmzoo.data.synthetic import needles  # noqa: E402
from ssmzoo.modules import attention as attention_module  # noqa: E402
from ssmzoo.tasks import RecallTask  # noqa: E402

FILLER = KEYS = VALUES = 16


def samples(n: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """tokens, targets, and the needle's key position per sample."""
    tokens, targets = needles(n, length, 1, FILLER, KEYS, VALUES, torch.Generator().manual_seed(seed))
    question = length - 2
    key = tokens[:, question:question + 1]
    needle = (tokens[:, :question] == key).float().argmax(1)
    return tokens, targets, needle


@contextlib.contextmanager
def recorded_attention(store: list):
    """Record softmax(q·k/√d + mask) of every attention call (the math of F.scaled_dot_product_attention)."""
    real = attention_module.F.scaled_dot_product_attention

    def sdpa(q, k, v, attn_mask=None, **kwargs):
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        store.append(scores.softmax(-1).detach())
        return real(q, k, v, attn_mask=attn_mask, **kwargs)

    attention_module.F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        attention_module.F.scaled_dot_product_attention = real


def memory_outputs(model, tokens: torch.Tensor, roll: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and each block's memory read-out (batch, length, d); with ``roll``, every block's read-out is
    replaced by that of the next sample in the batch."""
    outputs, hooks = [], []
    for block in model.blocks:
        def hook(module, args, out):
            y = out[0] if isinstance(out, tuple) else out
            outputs.append(y.detach())
            if roll:
                y = torch.roll(y, 1, dims=0)
                return (y, *out[1:]) if isinstance(out, tuple) else y
            return None
        hooks.append(block.memory.register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = model(tokens)
    finally:
        for h in hooks:
            h.remove()
    return logits, outputs


def linear_probe(features: torch.Tensor, labels: torch.Tensor, steps: int = 300) -> float:
    """Test accuracy of a logistic regression trained on the first half (full batch, Adam)."""
    half = len(labels) // 2
    x = (features - features[:half].mean(0)) / (features[:half].std(0) + 1e-6)
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], VALUES)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(head(x[:half]), labels[:half]).backward()
        optimizer.step()
    with torch.no_grad():
        return float((head(x[half:]).argmax(-1) == labels[half:]).float().mean())


def probe(run_dir: Path, n: int, length: int) -> dict:
    checkpoint = json.loads((run_dir / "results.json").read_text())["checkpoint"]
    model = RecallTask.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).model.eval()
    variant = model.variant
    span = model.blocks[0].segment_len if variant == "mac" else model.blocks[0].window
    tokens, targets, needle = samples(n, length, seed=12345)
    question = length - 2
    value = targets[:, question] - FILLER - KEYS
    within = (needle // span == question // span) if variant == "mac" else (question - needle < span)

    def accuracy(logits: torch.Tensor, where: torch.Tensor) -> float:
        right = logits[:, question].argmax(-1) == targets[:, question]
        return float(right[where].float().mean()) if where.any() else float("nan")

    store: list = []
    with recorded_attention(store):
        logits, reads = memory_outputs(model, tokens)
    rolled, _ = memory_outputs(model, tokens, roll=True)
    out = {
        "run_dir": str(run_dir), "variant": variant, "span": span, "samples": n, "length": length,
        "share_within_span": float(within.float().mean()),
        "acc_within_span": accuracy(logits, within), "acc_beyond_span": accuracy(logits, ~within),
        "acc_within_span_memory_swapped": accuracy(rolled, within),
        "acc_beyond_span_memory_swapped": accuracy(rolled, ~within),
        # what the model answers: a value (right or wrong), a key, or a filler token
        "answers_value": float((logits[:, question].argmax(-1) >= FILLER + KEYS).float().mean()),
        "answers_key": float(((logits[:, question].argmax(-1) >= FILLER)
                              & (logits[:, question].argmax(-1) < FILLER + KEYS)).float().mean()),
        "probe_value_from_memory_readout": [linear_probe(r[:, question], value) for r in reads],
        "probe_value_from_memory_readout_beyond_span": [
            linear_probe(r[~within][:, question], value[~within]) for r in reads],
    }
    if variant == "mac":
        s = span
        persistent = model.blocks[0].attn.persistent.shape[0]
        masses = []
        for weights in store:  # one call per block: ((batch · segments), heads, s, persistent + s + s)
            w = weights.view(n, -1, *weights.shape[1:])[:, question // s, :, question % s]  # (n, heads, keys)
            w = w.mean(1)  # over heads
            j = question % s
            masses.append({
                "persistent": float(w[:, :persistent].sum(-1).mean()),
                "memory_readouts": float(w[:, persistent : persistent + s].sum(-1).mean()),
                "own_readout_h_T": float(w[:, persistent + j].mean()),
                "segment_tokens": float(w[:, persistent + s :].sum(-1).mean()),
            })
        out["question_attention"] = masses
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None, help="also write the results here (JSON)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [probe(d, args.samples, args.length) for d in args.run_dirs]
    text = json.dumps(rows, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return rows


if __name__ == "__main__":
    main()
