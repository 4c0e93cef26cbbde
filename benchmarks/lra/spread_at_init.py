"""How much a mini-LRA model's output depends on its input at initialisation, on real batches of its task.

For each config: the whole model (encoder, layers, pooling, decoder) as the config builds it, in training mode, on
the first training batch of its datamodule (the config's seed). Prints the spread of the logits across the batch's
images (standard deviation over the batch, mean over classes), the loss, and the gradient norm of the layers'
parameters grouped by name (e.g. Mamba's ``dt_proj``, ``A_log``; S4D's ``log_dt``). A model whose logits hardly
vary between images starts on a plateau: every image gets the same prediction, and the gradient that would make
the output depend on the image is small.

    python benchmarks/lra/spread_at_init.py configs/lra/mini/pathfinder_s4d.yaml configs/lra/mini/pathfinder_mamba.yaml

Builds the model and the data through the CLI (``ssmzoo fit`` with ``--trainer.max_steps 0``: set up, seeded by the
config, no optimizer step), so the figures are those of the initial weights on the run's first batch.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ssmzoo.cli import run  # noqa: E402


def spread(config: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as root:
        cli = run(["fit", "--config", str(config), "--trainer.default_root_dir", root, "--trainer.max_steps", "0",
                   "--trainer.limit_val_batches", "0", "--test_after_fit", "false",
                   "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"])
    task, datamodule = cli.model, cli.datamodule
    tokens, lengths, labels = next(iter(datamodule.train_dataloader()))
    task.train()
    logits = task(tokens, lengths)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    loss.backward()
    grads: dict[str, float] = defaultdict(float)
    for name, p in task.model.named_parameters():
        if p.grad is not None and name.startswith("blocks."):
            grads[name.split(".")[-2] + "." + name.split(".")[-1]] += float(p.grad.pow(2).sum())
    out = {"logit spread": float(logits.std(0).mean()), "loss": float(loss)}
    out.update({f"|grad| {k}": v ** 0.5 for k, v in sorted(grads.items())})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="+", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"1-min load {os.getloadavg()[0]:.1f}")
    for config in args.configs:
        figures = spread(config)
        print(f"\n{config}")
        for key, value in figures.items():
            print(f"  {key:40s} {value:.3g}")


if __name__ == "__main__":
    main()
