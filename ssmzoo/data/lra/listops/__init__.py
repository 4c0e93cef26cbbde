"""LRA ListOps in three pieces: the seeded generator (``generator.py``), the official file format and its
tokenisation (``tsv.py``) and the datamodule (``datamodule.py``); ``command.py`` is ``ssmzoo data listops``."""

from .datamodule import ListOpsDataModule
from .generator import (
    GENERATOR_VERSION,
    OPERATORS,
    ListOpsSampler,
    apply_operator,
    generate_listops,
    generate_samples,
    iter_samples,
    max_tree_tokens,
)
from .tsv import NUM_CLASSES, PAD, VOCAB, VOCAB_SIZE, ListOpsSplit, read_listops_tsv, tokenize, write_tsv

__all__ = [
    "GENERATOR_VERSION",
    "NUM_CLASSES",
    "OPERATORS",
    "PAD",
    "VOCAB",
    "VOCAB_SIZE",
    "ListOpsDataModule",
    "ListOpsSampler",
    "ListOpsSplit",
    "apply_operator",
    "generate_listops",
    "generate_samples",
    "iter_samples",
    "max_tree_tokens",
    "read_listops_tsv",
    "tokenize",
    "write_tsv",
]
