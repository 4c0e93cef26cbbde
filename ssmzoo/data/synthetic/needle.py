"""Key-value needles in a haystack (the S-NIAH-PK test of the Titans paper, small): a haystack of
filler tokens hides ``pairs`` needles "key value" at random places; at the end every key is asked again, each
followed by its value, and the model must give the value when it reads the key.

Tokens: filler 0..F-1, keys F..F+K-1, values F+K..F+K+V-1 (vocabulary F + K + V). Needles sit at distinct
even offsets of the haystack (so a needle's key and value are adjacent and never overlap another); the last
2·pairs positions ask, in random order. Targets are ``ignore_index`` except at each asked key, whose target is
its value (chance 1/V).
"""

from __future__ import annotations

import torch
from torch import Tensor

IGNORE_INDEX = -100


def needles(num_samples: int, seq_len: int, pairs: int, filler: int, keys: int, values: int,
            generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Returns (tokens, targets), both LongTensor (num_samples, seq_len)."""
    for name, value, low in (("num_samples", num_samples, 1), ("pairs", pairs, 1), ("filler", filler, 1),
                             ("values", values, 2)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"needles: {name} must be an int >= {low}, got {value!r}")
    if not isinstance(keys, int) or isinstance(keys, bool) or keys < pairs:
        raise ValueError(f"needles: keys must be an int >= pairs={pairs} (each needle has its own key), got {keys!r}")
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 4 * pairs:
        raise ValueError(f"needles: seq_len must be an int >= 4 · pairs = {4 * pairs} (needles and questions), "
                         f"got {seq_len!r}")
    haystack = seq_len - 2 * pairs
    tokens = torch.randint(0, filler, (num_samples, seq_len), generator=generator)
    targets = torch.full((num_samples, seq_len), IGNORE_INDEX)
    for b in range(num_samples):
        key = torch.randperm(keys, generator=generator)[:pairs] + filler
        value = torch.randint(0, values, (pairs,), generator=generator) + filler + keys
        slots = torch.randperm(haystack // 2, generator=generator)[:pairs] * 2
        tokens[b, slots], tokens[b, slots + 1] = key, value
        order = torch.randperm(pairs, generator=generator)
        asked = haystack + 2 * torch.arange(pairs)
        tokens[b, asked], tokens[b, asked + 1] = key[order], value[order]
        targets[b, asked] = value[order]
    return tokens, targets
