"""Instruments for looking inside the Titans models while they train and after (the MAC investigation in
``results/mac.md``). Not part of ssmzoo: benchmark tooling, imported by class path from ``ssmzoo fit``
(``niah.py`` puts this folder on the path).

- ``GradNorms``: a callback logging, before every optimiser step, the gradient norm of each part of each block
  (``grad/block{i}.memory``, ``.attn``, ``.mlp``) and of the embedding and head, to the run's metrics.
"""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer


def part_of(name: str) -> str:
    """``blocks.1.memory.to_qkv.weight`` -> ``block1.memory``; ``embed.weight`` -> ``embed``."""
    pieces = name.split(".")
    if pieces[0] == "blocks":
        part = pieces[2]
        part = "norm" if part.startswith(("norm", "gate_norm")) else part
        return f"block{pieces[1]}.{part}"
    return pieces[0]


class GradNorms(Callback):
    """Logs ``grad/<part>`` (see the module docstring) every ``every`` optimiser steps."""

    def __init__(self, every: int = 25) -> None:
        self.every = every

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        if trainer.global_step % self.every:
            return
        sums: dict[str, float] = {}
        for name, p in pl_module.model.named_parameters():
            if p.grad is not None:
                key = part_of(name)
                sums[key] = sums.get(key, 0.0) + float(p.grad.detach().pow(2).sum())
        for key, total in sums.items():
            pl_module.log(f"grad/{key}", total**0.5, on_step=True, on_epoch=False)
        pl_module.log("grad/total", sum(sums.values()) ** 0.5, on_step=True, on_epoch=False)
