"""Optimiser parameter groups from the tags that layers put on their SSM parameters."""

from __future__ import annotations

from torch import nn


def param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """Split ``model``'s trainable parameters into optimiser groups.

    - parameters tagged with :func:`ssmzoo.layers.base.tag_param` get their own settings
      (the S4 recipe: SSM A/B/dt with a smaller lr and no weight decay);
    - biases and normalisation weights (parameters with fewer than 2 dimensions) get no weight decay;
    - everything else gets ``lr`` and ``weight_decay``.
    """
    groups: dict[tuple, dict] = {}
    # tags by parameter name, where sharding replaced the tagged parameters (ssmzoo.tasks.base.Task.configure_model)
    by_name = getattr(model, "param_tags_by_name", {})
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        hp = {"lr": lr, "weight_decay": weight_decay if p.dim() >= 2 else 0.0}
        hp.update(getattr(p, "_optim", None) or by_name.get(name, {}))
        key = tuple(sorted(hp.items()))
        group = groups.setdefault(key, {"params": [], "names": [], **hp})
        group["params"].append(p)
        group["names"].append(name)
    return list(groups.values())
