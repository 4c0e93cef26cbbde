"""``ssmzoo generate``: text in, text out, from a trained language model.

    ssmzoo generate --ckpt_path runs/lm_mamba/version_0 --prompt "ROMEO:" --max_new_tokens 200

``--ckpt_path`` is a run folder of ``ssmzoo fit`` (its best checkpoint) or a ``.ckpt`` file; the model comes from
:func:`ssmzoo.models.pretrained.load_run` (``weights_only`` loading, ssmzoo's model classes only) and the tokenizer
from :func:`load_tokenizer`. The continuation is printed as it is generated.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from .threads import apply_threads, check_threads, choose_threads

TOKENIZER_KEY = "ssmzoo_tokenizer"  # as ssmzoo.tasks.language_modeling writes it into every checkpoint
TOKENIZER_FILE = "tokenizer.json"


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer of a language-model run (its folder or a ``.ckpt`` of it): the one the checkpoint carries
    (``ssmzoo_tokenizer``: the byte tokenizer, or a BPE as its JSON), else the run folder's ``tokenizer.json``,
    else the ``tokenizer`` named in the run's ``config.yaml`` when that is ``byte``."""
    import torch
    import yaml

    from ..data.lm.tokenizer import BPETokenizer, ByteTokenizer
    from ..models.pretrained import run_checkpoint

    path = Path(path).expanduser().resolve()
    file = path if path.is_file() else run_checkpoint(path)
    checkpoint = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    described = checkpoint.get(TOKENIZER_KEY) if isinstance(checkpoint, dict) else None
    if isinstance(described, dict) and described.get("kind") == "byte":
        return ByteTokenizer()
    if isinstance(described, dict) and described.get("kind") == "bpe" and isinstance(described.get("json"), str):
        from tokenizers import Tokenizer

        return BPETokenizer(Tokenizer.from_str(described["json"]), described.get("eos_token"), source=str(file))
    run_dir = file.parent.parent if file.parent.name == "checkpoints" else file.parent
    if (run_dir / TOKENIZER_FILE).is_file():
        return BPETokenizer.from_file(run_dir / TOKENIZER_FILE)
    config = run_dir / "config.yaml"
    if config.is_file():
        data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
        if (data.get("init_args") or {}).get("tokenizer", "byte") == "byte":
            return ByteTokenizer()
    raise FileNotFoundError(f"{file}: no tokenizer found (not in the checkpoint, no {TOKENIZER_FILE} or config.yaml "
                            f"with a byte tokenizer in {run_dir}); was this a language-model run of `ssmzoo fit`?")


class TextStreamer:
    """Prints the text of the tokens ``generate`` hands it, as they come. Decodes everything so far and prints
    what is new, holding back a trailing replacement character (a multi-byte character or merge not complete yet)."""

    def __init__(self, tokenizer: Any, out: TextIO | None = None) -> None:
        self.tokenizer, self.out = tokenizer, out if out is not None else sys.stdout
        self.ids: list[int] = []
        self.shown = 0
        self.prompt_seen = False

    def put(self, ids: Any) -> None:
        if not self.prompt_seen:  # the prompt comes first; the caller printed it
            self.prompt_seen = True
            return
        self.ids.extend(int(i) for i in ids.flatten().tolist())
        text = self.tokenizer.decode(self.ids)
        stable = len(text.rstrip("\ufffd"))
        if stable > self.shown:
            self.out.write(text[self.shown:stable])
            self.out.flush()
            self.shown = stable

    def end(self) -> None:
        text = self.tokenizer.decode(self.ids)
        self.out.write(text[self.shown:] + "\n")
        self.out.flush()

    @property
    def text(self) -> str:
        return self.tokenizer.decode(self.ids)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssmzoo generate", allow_abbrev=False,
        description="Continue a prompt with a trained language model, printing the text as it is generated.")
    parser.add_argument("--ckpt_path", required=True,
                        help="a run folder of `ssmzoo fit` (runs/<name>/version_<n>: its best checkpoint) or a .ckpt")
    parser.add_argument("--prompt", default="", help="the text to continue (default: start a document)")
    parser.add_argument("--max_new_tokens", type=int, default=200, help="tokens to generate (default 200)")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default 0.8)")
    parser.add_argument("--top_k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    parser.add_argument("--top_p", type=float, default=0.0, help="nucleus sampling mass (0 or 1: off)")
    parser.add_argument("--greedy", action="store_true", help="the most likely token at every step (no sampling)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the sampling (default 0)")
    parser.add_argument("--stop_at_document_end", action="store_true",
                        help="stop at the document separator (<|endoftext|>) instead of running on")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: $OMP_NUM_THREADS, else the CPUs available)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    return parser


def generate_text(args: argparse.Namespace, out: TextIO | None = None) -> str:
    """Run ``ssmzoo generate`` on parsed ``args``; returns the continuation (also written to ``out``, default the
    standard output at the time of the call)."""
    import torch

    out = out if out is not None else sys.stdout
    from ..models.pretrained import load_run

    threads, _ = choose_threads(check_threads(args.threads))
    apply_threads(threads)
    model = load_run(args.ckpt_path).to(args.device)
    if not callable(getattr(model, "generate", None)):
        raise ValueError(f"--ckpt_path {args.ckpt_path}: its model ({type(model).__name__}) does not generate text; "
                         "pass a language-model run")
    tokenizer = load_tokenizer(args.ckpt_path)
    ids = [tokenizer.eos_id] + [int(i) for i in tokenizer.encode(args.prompt)]
    streamer = TextStreamer(tokenizer, out)
    out.write(args.prompt)
    out.flush()
    model.generate(torch.tensor([ids], device=args.device), max_new_tokens=args.max_new_tokens,
                   do_sample=not args.greedy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   eos_token_id=tokenizer.eos_id if args.stop_at_document_end else None, streamer=streamer,
                   seed=args.seed)
    return streamer.text


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    try:
        generate_text(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"ssmzoo generate: error: {error}", file=sys.stderr)
        sys.exit(2)
