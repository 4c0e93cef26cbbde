"""``generate``'s arguments that used to pass silently: ``max_length`` not above the prompt (returned the prompt),
``eos_token_id`` outside the vocabulary (never matched; as the pad of finished rows it crashed the next step)."""

from __future__ import annotations

import pytest
import torch

from ssmzoo.models import RAMba, LanguageModel, TitansLM

VOCAB = 20


def models():
    torch.manual_seed(0)
    return {
        "lm": LanguageModel(VOCAB, d_model=8, n_layers=1, layer="mamba", layer_args={"d_state": 4}).eval(),
        "titans": TitansLM("mag", VOCAB, d_model=16, n_layers=1, heads=2).eval(),
        "ramba": RAMba(VOCAB, d_model=16, n_lower_layers=1, n_hsa_layers=1, local_per_hsa=1, heads=2, chunk_size=4,
                       top_k=2, lower_layer="mamba", local_layer="mamba", lower_layer_args={"d_state": 4},
                       local_layer_args={"d_state": 4}).eval(),
    }


@pytest.fixture(scope="module", params=["lm", "titans", "ramba"])
def model(request):
    return models()[request.param]


@pytest.mark.parametrize("max_length", [1, 3, 4])
def test_max_length_not_above_the_prompt(model, max_length):
    prompt = torch.randint(0, VOCAB, (2, 4))
    with pytest.raises(ValueError, match=rf"max_length={max_length} counts the prompt, which already has 4 tokens"):
        model.generate(prompt, max_length=max_length)
    assert model.generate(prompt, max_length=5).shape == (2, 5)  # one above: one new token


@pytest.mark.parametrize("eos", [VOCAB, VOCAB + 5, -1, [3, VOCAB], [-2, 3]])
def test_eos_outside_the_vocabulary(model, eos):
    prompt = torch.randint(0, VOCAB, (2, 3))
    with pytest.raises(ValueError, match=rf"eos_token_id must lie in the vocabulary \[0, {VOCAB}\)"):
        model.generate(prompt, max_new_tokens=4, eos_token_id=eos)


def test_eos_at_the_vocabulary_ends_is_accepted(model):
    prompt = torch.randint(0, VOCAB, (2, 3))
    for eos in (0, VOCAB - 1, [0, VOCAB - 1]):
        out = model.generate(prompt, max_new_tokens=3, eos_token_id=eos)
        assert out.shape[0] == 2 and 4 <= out.shape[1] <= 6
