"""How far one layer reaches at initialisation: |∂y_t / ∂x_s| against the distance |t - s|, for the mini-LRA
Pathfinder layers (d_model 64, their mini configs' layer arguments, bidirectional), on random inputs.

Pathfinder-32 needs a token to see pixels one row (32 tokens) and many rows (hundreds of tokens) away; a layer
whose influence has died out at those distances at initialisation must first learn to reach them. Prints the
influence at distances 1, 32, 128, 511 relative to distance 0, per layer (mean over channels and inputs);
``mamba*`` and ``mamba2*`` are the layers of configs/lra/mini/recipes/pathfinder_mamba{,2}_long_memory.yaml.

    python benchmarks/lra/memory_at_init.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ssmzoo import layers  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DISTANCES = (1, 32, 128, 511)


def layer_from(config: Path, **override) -> torch.nn.Module:
    args = yaml.safe_load(config.read_text())["model"]["init_args"]["model"]["init_args"]
    layer_args = dict(args["layer_args"], **override)
    return layers.build(args["layer"], d_model=args["d_model"], **layer_args).double().eval()


def influence(layer: torch.nn.Module, length: int = 1024, batch: int = 4, seed: int = 0) -> torch.Tensor:
    """Mean |∂y_t/∂x_s| over channels at t = length // 2, as a function of s (length,)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, layer.d_model, generator=g, dtype=torch.float64).requires_grad_()
    y = layer(x)
    t = length // 2
    weights = torch.randn(batch, layer.d_model, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad((y[:, t] * weights).sum(), x)
    return grad.abs().mean(dim=(0, 2))


def main() -> None:
    torch.manual_seed(0)
    mini = ROOT / "configs" / "lra" / "mini"
    cases = {name: layer_from(mini / f"pathfinder_{name}.yaml") for name in ("s4d", "s4", "s5", "lru", "mamba", "mamba2")}
    # the recipe trials: Mamba and Mamba-2 with -A in [0.01, 0.1] and Delta in [0.01, 0.1]
    cases["mamba*"] = layer_from(mini / "recipes" / "pathfinder_mamba_long_memory.yaml")
    cases["mamba2*"] = layer_from(mini / "recipes" / "pathfinder_mamba2_long_memory.yaml")
    print(f"{'layer':>8} " + " ".join(f"{'d=' + str(d):>10}" for d in DISTANCES) + "   (|dy_t/dx_s| at |t-s| = d, over d = 0)")
    for name, layer in cases.items():
        inf = influence(layer)
        t = inf.shape[0] // 2
        base = inf[t]
        # both sides of t for a bidirectional layer
        rel = [((inf[t - d] + inf[t + d]) / 2 / base).item() for d in DISTANCES]
        print(f"{name:>8} " + " ".join(f"{r:10.2e}" for r in rel))


if __name__ == "__main__":
    main()
