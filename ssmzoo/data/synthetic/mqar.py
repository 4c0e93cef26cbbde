"""Multi-query associative recall (MQAR; Arora, Eyuboglu et al., "Zoology: Measuring and Improving Recall in
Efficient Language Models", arXiv 2312.04927, section 3): ``num_kv_pairs`` key-value pairs, then every key asked
again once, at places further on; reading a key, the model must give the value it was paired with. How many
pairs a model recalls at a given state size is what separates attention, gated convolutions and recurrences.

Layout (Zoology's ``multiquery_ar``): the context ``k_1 v_1 k_2 v_2 … k_N v_N`` (2N tokens), then a query region of
``seq_len − 2N`` tokens in which the N keys sit at even offsets 2·gap, each gap drawn without replacement with
probability ∝ a·i^(a−1) (i = 1..(seq_len − 2N)/2, a = ``power_a``: small a puts most queries soon after the
context, as repeated bigrams follow a power law in text; a = 1 is uniform). Every other position of the query
region is a blank (token 0) or, with ``random_non_queries``, a random token of the whole vocabulary.

Tokens: keys 1 .. V/2 − 1, values V/2 .. V − 1 (V = ``vocab_size``), keys distinct and values distinct within an
example. Targets are ``ignore_index`` except at each asked key, whose target is its value (chance 2/V).
"""

from __future__ import annotations

import torch
from torch import Tensor

BLANK = 0
IGNORE_INDEX = -100


def _power_law_gaps(num_samples: int, space: int, count: int, power_a: float, generator: torch.Generator) -> Tensor:
    """``count`` distinct gaps 0 .. space − 1 per sample, gap i drawn with probability ∝ (i + 1)^(a − 1)."""
    weights = torch.arange(1, space + 1, dtype=torch.float64) ** (power_a - 1)
    return torch.multinomial(weights.expand(num_samples, space), count, replacement=False, generator=generator)


def mqar(num_samples: int, seq_len: int, num_kv_pairs: int, vocab_size: int, generator: torch.Generator,
         power_a: float = 0.01, random_non_queries: bool = True) -> tuple[Tensor, Tensor]:
    """Returns (tokens, targets), both LongTensor (num_samples, seq_len)."""
    for name, value, low in (("num_samples", num_samples, 1), ("num_kv_pairs", num_kv_pairs, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"mqar: {name} must be an int >= {low}, got {value!r}")
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len % 2 or seq_len < 4 * num_kv_pairs:
        raise ValueError(f"mqar: seq_len must be an even int >= 4 · num_kv_pairs = {4 * num_kv_pairs} (the pairs, "
                         f"then a query region at least as long), got {seq_len!r}")
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 2 * num_kv_pairs + 2:
        raise ValueError(f"mqar: vocab_size must be an int >= 2 · num_kv_pairs + 2 = {2 * num_kv_pairs + 2} (distinct "
                         f"keys in 1 .. V/2 − 1 and values in V/2 .. V − 1), got {vocab_size!r}")
    if not isinstance(power_a, (int, float)) or isinstance(power_a, bool) or not 0 < power_a <= 1:
        raise ValueError(f"mqar: power_a must be a number in (0, 1], got {power_a!r}")
    half = vocab_size // 2
    # Distinct keys and distinct values per example: the first num_kv_pairs of a random permutation.
    keys = torch.rand(num_samples, half - 1, generator=generator).argsort(-1)[:, :num_kv_pairs] + 1
    values = torch.rand(num_samples, vocab_size - half, generator=generator).argsort(-1)[:, :num_kv_pairs] + half
    context = 2 * num_kv_pairs
    tokens = torch.full((num_samples, seq_len), BLANK, dtype=torch.long)
    tokens[:, 0:context:2], tokens[:, 1:context:2] = keys, values
    gaps = _power_law_gaps(num_samples, (seq_len - context) // 2, num_kv_pairs, float(power_a), generator)
    asked = context + 2 * gaps  # (num_samples, num_kv_pairs): where key j is asked again
    if random_non_queries:
        noise = torch.randint(0, vocab_size, (num_samples, seq_len - context), generator=generator)
        tokens[:, context:] = noise
    tokens.scatter_(1, asked, keys)
    targets = torch.full_like(tokens, IGNORE_INDEX)
    targets.scatter_(1, asked, values)
    return tokens, targets
