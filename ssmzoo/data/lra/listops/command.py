"""``ssmzoo data listops --out DIR``: write generated ListOps in the official format."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...data_command import DataCommand
from ..common import SPLITS
from .generator import generate_listops
from .tsv import NUM_CLASSES, read_listops_tsv


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (created if needed)")
    parser.add_argument("--n-train", type=int, default=96_000)
    parser.add_argument("--n-val", type=int, default=2_000)
    parser.add_argument("--n-test", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-length", type=int, default=500, help="keep trees with more tokens than this")
    parser.add_argument("--max-length", type=int, default=2000, help="keep trees with fewer tokens than this")
    parser.add_argument("--max-depth", type=int, default=10)
    parser.add_argument("--max-args", type=int, default=10)


def run(args: argparse.Namespace) -> Path:
    """Generate, write ``basic_{train,val,test}.tsv`` into ``args.out`` and print what was written."""
    start, start_cpu = time.perf_counter(), time.process_time()
    out = generate_listops(
        args.out,
        n_train=args.n_train,
        n_val=args.n_val,
        n_test=args.n_test,
        seed=args.seed,
        min_length=args.min_length,
        max_length=args.max_length,
        max_depth=args.max_depth,
        max_args=args.max_args,
    )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    total = args.n_train + args.n_val + args.n_test
    print(
        f"wrote {total} samples to {out} in {seconds:.1f} s ({total / max(seconds, 1e-9):.0f} samples/s; "
        f"CPU time {cpu_seconds:.1f} s)"
    )
    majority = None
    for split in SPLITS:
        data = read_listops_tsv(out / f"basic_{split}.tsv")
        if len(data) == 0:
            continue
        share = np.bincount(data.labels, minlength=NUM_CLASSES) / len(data)
        print(
            f"{split}: {len(data)} samples, tokens {int(data.lengths.min())}-{int(data.lengths.max())} "
            f"(mean {data.lengths.mean():.0f}), label shares "
            + " ".join(f"{d}:{p:.3f}" for d, p in enumerate(share))
        )
        if split == "train":
            majority = int(np.argmax(share))
        elif majority is not None:
            print(
                f"{split}: always predicting the train majority label {majority} scores {share[majority]:.3f}"
            )
    return out


LISTOPS = DataCommand(
    name="listops",
    help="generate LRA ListOps (seeded) and write the official basic_{train,val,test}.tsv files",
    add_arguments=add_arguments,
    run=run,
)


def main(argv: Sequence[str] | None = None) -> Path:
    """``python -m ssmzoo.data.lra.listops``: the same as ``ssmzoo data listops``."""
    parser = argparse.ArgumentParser(prog="python -m ssmzoo.data.lra.listops", description=LISTOPS.help)
    add_arguments(parser)
    return run(parser.parse_args(argv))
