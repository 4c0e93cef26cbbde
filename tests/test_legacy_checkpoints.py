"""Checkpoints of RAMba and the Titans models from before the one language-model stack (written by ssmzoo 3fca13b
with its own classes; tests/data/legacy_*.safetensors holds each tiny model's weights, a batch of tokens and that
code's logits for them): renamed by ssmzoo.models.legacy, they load into today's classes and give the same logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from ssmzoo.models import MAC, MAG, MAL, RAMba
from ssmzoo.models.legacy import legacy_kind, main, upgrade_state_dict

DATA = Path(__file__).parent / "data"
CLASSES = {"ramba": RAMba, "mac": MAC, "mag": MAG, "mal": MAL}


def _load(kind):
    with safe_open(DATA / f"legacy_{kind}.safetensors", "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        args = json.loads(f.metadata()["args"])
    return tensors.pop("__tokens__"), tensors.pop("__logits__"), tensors, args


@pytest.mark.parametrize("kind", CLASSES)
def test_an_old_checkpoint_upgrades_to_the_same_function(kind):
    tokens, logits, old, args = _load(kind)
    assert legacy_kind(list(old)) == kind
    model = CLASSES[kind](**args).double().eval()
    with pytest.raises(RuntimeError):
        model.load_state_dict(old)  # the old names do not load as they are
    model.load_state_dict(upgrade_state_dict(old))  # strict: every parameter named, none left over
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), logits, rtol=1e-10, atol=1e-10)
    assert upgrade_state_dict(model.state_dict()).keys() == model.state_dict().keys()  # current layout: unchanged


def test_the_one_line_converter_rewrites_a_lightning_checkpoint(tmp_path, capsys):
    tokens, logits, old, args = _load("mag")
    source, target = tmp_path / "old.ckpt", tmp_path / "new.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in old.items()}, "epoch": 3}, source)
    main([str(source), str(target)])
    assert "renamed a mag checkpoint" in capsys.readouterr().out
    new = torch.load(target, weights_only=True)
    assert new["epoch"] == 3
    model = MAG(**args).double().eval()
    model.load_state_dict({k.removeprefix("model."): v for k, v in new["state_dict"].items()})
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), logits, rtol=1e-10, atol=1e-10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.ckpt", "old.ckpt"]  # no temporary file left
