"""Checkpoints of RAMba and the Titans models written before the language-model stack was one class.

They named their parameters after their own blocks (RAMba: ``lower.*``, ``memory.*``, ``upper.*``; Titans:
``embed``, ``blocks.*``, ``norm``, ``head``); now every language model is a ``LanguageModel`` with ``embedding``,
``layers.*``, ``norm_f`` and ``lm_head``. The functions are the same, so renaming the parameters is all an old
checkpoint needs::

    python -m ssmzoo.models.legacy old.ckpt new.ckpt          # a Lightning checkpoint of ssmzoo fit
    model.load_state_dict(upgrade_state_dict(old_state_dict))  # a bare state dict
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def _ramba(keys: list[str]) -> dict[str, str]:
    lowers = {int(k.split(".")[1]) for k in keys if k.startswith("lower.")}
    memory = len(lowers)  # the chunk memory's index in the pattern: right after the lower blocks
    names = {}
    for k in keys:
        new = k
        if m := re.match(r"(lower|upper)\.(\d+)\.(.*)", k):
            part, i, rest = m.group(1), int(m.group(2)), m.group(3)
            i = i if part == "lower" else memory + 1 + i
            rest = re.sub(r"^mlp\.0\.", "norm2.", rest)  # the old MLP was Sequential(RMSNorm, MLP)
            rest = re.sub(r"^mlp\.1\.", "mlp.", rest)
            rest = re.sub(r"^read\.", "mixer.", rest)  # an HSA block's read is its mixer
            new = f"layers.{i}.{rest}"
        elif k.startswith(("memory.", "norm_selection.", "proj_selection.")):
            new = f"layers.{memory}.{k}"
        names[k] = new
    return names


_TITANS_TOP = {"embed.weight": "embedding.weight", "head.weight": "lm_head.weight", "norm.weight": "norm_f.weight"}


def _titans(keys: list[str], variant: str) -> dict[str, str]:
    names = {}
    for k in keys:
        if k in _TITANS_TOP:
            names[k] = _TITANS_TOP[k]
            continue
        m = re.match(r"blocks\.(\d+)\.([a-z_]+)(\..*)?$", k)
        if m is None:
            names[k] = k
            continue
        i, part, rest = int(m.group(1)), m.group(2), m.group(3) or ""
        if variant == "mac":
            where = {"attn": "mixer.attn", "memory": "mixer.memory", "norm_attn": "norm", "norm_mlp": "norm2",
                     "mlp": "mlp"}
            names[k] = f"layers.{i}.{where[part]}{rest}"
        elif variant == "mag":
            where = {"attn": "mixer.attn.attn", "memory": "mixer.memory", "norm_mlp": "norm2", "mlp": "mlp"}
            names[k] = f"layers.{i}.{where.get(part, 'mixer.' + part)}{rest}"
        else:  # mal: a block of the memory, then a block of sliding-window attention
            where = {"memory": (0, "mixer"), "norm_mem": (0, "norm"), "attn": (1, "mixer.attn"),
                     "norm_attn": (1, "norm"), "norm_mlp": (1, "norm2"), "mlp": (1, "mlp")}
            offset, target = where[part]
            names[k] = f"layers.{2 * i + offset}.{target}{rest}"
    return names


def legacy_kind(keys: list[str]) -> str | None:
    """"ramba", "mac", "mag" or "mal" for an old state dict's keys (without a prefix), None for a current one."""
    if any(k.startswith(("lower.", "upper.")) for k in keys):
        return "ramba"
    if not any(k.startswith("blocks.") for k in keys):
        return None
    if any(".gate_norm_attn." in k for k in keys):
        return "mag"
    return "mal" if any(".norm_mem." in k for k in keys) else "mac"


def upgrade_state_dict(state_dict: dict[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """The state dict with an old RAMba / MAC / MAG / MAL layout renamed to the LanguageModel one (keys under
    ``prefix``, e.g. "model." in a Lightning checkpoint; other keys untouched); a current one unchanged."""
    ours = [k[len(prefix):] for k in state_dict if k.startswith(prefix)]
    kind = legacy_kind(ours)
    if kind is None:
        return dict(state_dict)
    names = _ramba(ours) if kind == "ramba" else _titans(ours, kind)
    return {(prefix + names[k[len(prefix):]] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def upgrade_checkpoint(source: str | Path, target: str | Path) -> str | None:
    """Rewrite a Lightning checkpoint of ``ssmzoo fit`` with its model's parameters renamed (loaded with
    ``weights_only=True``; written to a temporary file in ``target``'s folder, then renamed). Returns the kind
    found ("ramba", "mac", "mag", "mal"), or None when the checkpoint already has the current layout."""
    checkpoint: dict[str, Any] = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"upgrade_checkpoint: {source} is not a Lightning checkpoint (no state_dict)")
    kind = legacy_kind([k[len("model."):] for k in checkpoint["state_dict"] if k.startswith("model.")])
    checkpoint["state_dict"] = upgrade_state_dict(checkpoint["state_dict"], prefix="model.")
    target = Path(target)
    handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return kind


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ssmzoo.models.legacy",
                                     description="Rename an old RAMba / Titans checkpoint's parameters to the "
                                                 "LanguageModel layout.")
    parser.add_argument("source", help="the old Lightning checkpoint (.ckpt)")
    parser.add_argument("target", help="where to write the upgraded one")
    args = parser.parse_args(argv)
    kind = upgrade_checkpoint(args.source, args.target)
    print(f"{args.target}: " + (f"renamed a {kind} checkpoint" if kind else "already in the current layout, copied"))


if __name__ == "__main__":
    main()
