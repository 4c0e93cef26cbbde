"""The LRA ListOps generator (Nangia & Bowman 2018, as set up by Tay et al., Long Range Arena, ICLR 2021).

A sample is a nested list operation, e.g. ``[MAX 2 9 [MIN 4 7 ] 0 ]`` (value 9); the label is its value
0-9. Trees are drawn from the LRA generator's distribution (Tay et al., arXiv 2011.04006, after Nangia & Bowman's ListOps, arXiv 1804.06028): below the maximum depth 10
a node is a digit with probability 0.75, else an operator (MIN, MAX, MED = integer median, SM = sum mod 10)
with 2-10 arguments drawn uniformly; at the maximum depth it is always a digit. Only trees with
``min_length < tokens < max_length`` are kept (500 and 2,000 in LRA), all distinct. Samples come out in the
official textual form (see ``tsv.py``), and ``generate_listops`` writes the three official files.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

from .tsv import write_tsv

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
# LRA's VALUE_P: below the maximum depth a node is an operator with probability 0.25, else a digit.
OPERATOR_PROBABILITY = 0.25
# Bump whenever the same seed would give other samples: it keys the cache of generated files.
GENERATOR_VERSION = 2
# Give up when this many candidates in a row are rejected: the length window (or the number of distinct
# trees in it) cannot supply the requested samples.
MAX_CONSECUTIVE_REJECTIONS = 1_000_000
_DIGIT_ARGUMENTS = tuple(f" {d} )" for d in range(10))  # a digit argument in the Source form


def _median(arguments: Sequence[int]) -> int:
    ordered = sorted(arguments)
    half = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[half]
    return (ordered[half - 1] + ordered[half]) // 2


def _sum_mod_10(arguments: Sequence[int]) -> int:
    return sum(arguments) % 10


# In the order of OPERATORS.
_OPERATIONS = (min, max, _median, _sum_mod_10)


def apply_operator(operator: str, arguments: Sequence[int]) -> int:
    """The value of ``operator`` on digit ``arguments``, as LRA defines it.

    MED is ``int(np.median(...))``: the middle element, or for an even count the mean of the two middle
    elements rounded down (all values are non-negative). SM is the sum modulo 10."""
    if operator not in OPERATORS:
        raise ValueError(f"operator must be one of {OPERATORS}, got {operator!r}")
    return _OPERATIONS[OPERATORS.index(operator)](arguments)


class _TooLong(Exception):
    """Raised inside the shape sampler once a tree reaches the length limit (it would be rejected)."""


# The shape of an operator node: (number of arguments, shapes of the arguments that are operators).
Shape = tuple[int, list["Shape"]]


class ListOpsSampler:
    """Draws trees from the LRA ListOps distribution, in two stages so rejection stays cheap.

    In LRA's generator the tree's shape (which nodes are operators, how many arguments each has) does not
    depend on which digits and operators fill it, and only the shape decides the length. So a shape is
    drawn first, and filled with digits and operators only if its length is kept. Two more savings leave
    the distribution unchanged: (1) for an operator node the shape needs only the argument count n
    (uniform on 2..max_args) and the number k of arguments that are operators (Binomial(n, 0.25) below
    the maximum depth), one draw; which k of the n positions they take is a uniform k-subset, drawn when
    filling, because the arguments are i.i.d.; (2) a shape stops growing once it reaches ``max_length``
    tokens, as it would be rejected anyway, and the next shape uses fresh random numbers.

    Shapes and labels come from two ``random.Random`` streams seeded from ``seed`` and drawn only through
    ``random()``, the one method whose sequence Python promises to keep for a given seed."""

    def __init__(self, seed: int, max_depth: int = 10, max_args: int = 10) -> None:
        self.max_depth = max_depth
        self.max_args = max_args
        self._shape_uniform = random.Random(f"ssmzoo-listops-v{GENERATOR_VERSION}:{seed}:shape").random
        self._label_uniform = random.Random(f"ssmzoo-listops-v{GENERATOR_VERSION}:{seed}:labels").random
        # Joint law of (n, k) for a node whose arguments may be operators.
        outcomes, cumulative, total = [], [], 0.0
        for n in range(2, max_args + 1):
            for k in range(n + 1):
                p = math.comb(n, k) * OPERATOR_PROBABILITY**k * (1 - OPERATOR_PROBABILITY) ** (n - k)
                total += p / (max_args - 1)
                outcomes.append((n, k))
                cumulative.append(total)
        cumulative[-1] = 1.0  # random() < 1, so bisect never runs past the last outcome
        self._outcomes = outcomes
        self._cumulative = cumulative

    def shape(self, length_limit: int) -> tuple[Shape | None, int] | None:
        """One tree shape and its token count (None for a single-digit tree), or None once the tree
        reaches ``length_limit`` tokens."""
        uniform = self._shape_uniform
        if self.max_depth == 1 or uniform() >= OPERATOR_PROBABILITY:
            return (None, 1) if length_limit > 1 else None  # the root is a digit
        outcomes, cumulative, max_depth, max_args = (
            self._outcomes,
            self._cumulative,
            self.max_depth,
            self.max_args,
        )
        n_tokens = 0

        def operator_shape(depth: int) -> Shape:
            nonlocal n_tokens
            if depth + 1 < max_depth:
                n, k = outcomes[bisect.bisect_right(cumulative, uniform())]
            else:  # arguments at the maximum depth are digits
                n, k = 2 + int(uniform() * (max_args - 1)), 0
            n_tokens += 2 + n - k  # operator, closing bracket, digit arguments
            if n_tokens >= length_limit:
                raise _TooLong
            return n, [operator_shape(depth + 1) for _ in range(k)]

        try:
            root = operator_shape(1)
        except _TooLong:
            return None
        return root, n_tokens

    def fill(self, shape: Shape | None) -> tuple[str, int]:
        """Digits and operators for ``shape``: ``(source in the official form, value)``."""
        uniform = self._label_uniform
        if shape is None:
            digit = int(uniform() * 10)
            return str(digit), digit

        def operator_node(node: Shape) -> tuple[str, int]:
            n, children = node
            which = int(uniform() * len(OPERATORS))
            digits = [int(uniform() * 10) for _ in range(n - len(children))]
            # ( ( ... ( OP a1 ) a2 ) ... an ) ] ): LRA's to_string of ((((OP, a1), a2), ...), END).
            if not children:
                text = "".join(map(_DIGIT_ARGUMENTS.__getitem__, digits))
                return f"{'( ' * (n + 1)}{OPERATORS[which]}{text} ] )", _OPERATIONS[which](digits)
            k = len(children)
            # The operator arguments take a uniform k-subset of the n positions (partial Fisher-Yates).
            positions = list(range(n))
            for j in range(k):
                r = j + int(uniform() * (n - j))
                positions[j], positions[r] = positions[r], positions[j]
            branch_at = set(positions[:k])
            filled = [operator_node(child) for child in children]
            values = digits + [value for _, value in filled]  # every operator ignores argument order
            parts = ["( " * (n + 1), OPERATORS[which]]
            next_child, next_digit = iter(filled).__next__, iter(digits).__next__
            for i in range(n):
                parts.append(f" {next_child()[0]} )" if i in branch_at else _DIGIT_ARGUMENTS[next_digit()])
            parts.append(" ] )")
            return "".join(parts), _OPERATIONS[which](values)

        return operator_node(shape)


def max_tree_tokens(max_depth: int, max_args: int) -> int:
    """The most tokens a tree can have: every node above the last level an operator with max_args args."""
    tokens = 1
    for _ in range(max_depth - 1):
        tokens = 2 + max_args * tokens
    return tokens


def check_generator_args(
    n_train: int, n_val: int, n_test: int, min_length: int, max_length: int, max_depth: int, max_args: int
) -> None:
    counts = (("n_train", n_train), ("n_val", n_val), ("n_test", n_test), ("min_length", min_length))
    sizes = (("max_length", max_length), ("max_depth", max_depth), ("max_args", max_args))
    for name, value in counts + sizes:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} must be an int, got {value!r}")
    for name, value in counts[:3]:
        if value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if max_depth < 1:
        raise ValueError(f"max_depth must be >= 1, got {max_depth}")
    if max_args < 2:
        raise ValueError(f"max_args must be >= 2, got {max_args}")
    if min_length < 0 or max_length <= min_length + 1:
        raise ValueError(
            "need 0 <= min_length and min_length + 1 < max_length (kept trees have "
            f"min_length < tokens < max_length), got min_length={min_length}, max_length={max_length}"
        )
    most = max_tree_tokens(max_depth, max_args)
    if min_length >= most:
        raise ValueError(
            f"min_length={min_length} cannot be exceeded: trees with max_depth={max_depth} and "
            f"max_args={max_args} have at most {most} tokens"
        )


def iter_samples(
    seed: int,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
) -> Iterator[tuple[str, int]]:
    """Endless distinct ``(source, value)`` pairs with ``min_length < tokens < max_length``.

    Rejection sampling from the LRA distribution; as in LRA, duplicates are dropped, so no sample is in
    two splits (only a 16-byte digest of each is kept to spot them). Same seed, same samples."""
    check_generator_args(0, 0, 0, min_length, max_length, max_depth, max_args)
    sampler = ListOpsSampler(seed, max_depth, max_args)
    seen: set[bytes] = set()
    rejected_in_a_row = 0
    while True:
        drawn = sampler.shape(length_limit=max_length)
        if drawn is not None and drawn[1] > min_length:
            source, value = sampler.fill(drawn[0])
            digest = hashlib.blake2b(source.encode(), digest_size=16).digest()
            if digest not in seen:
                seen.add(digest)
                rejected_in_a_row = 0
                yield source, value
                continue
        rejected_in_a_row += 1
        if rejected_in_a_row >= MAX_CONSECUTIVE_REJECTIONS:
            raise ValueError(
                f"ListOps generation stalled after {len(seen)} samples: {MAX_CONSECUTIVE_REJECTIONS} "
                f"candidates in a row were outside min_length={min_length} < tokens < "
                f"max_length={max_length} or duplicates; widen the length window"
            )


def generate_samples(
    n_samples: int,
    seed: int,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
) -> list[tuple[str, int]]:
    """The first ``n_samples`` of ``iter_samples``."""
    check_generator_args(n_samples, 0, 0, min_length, max_length, max_depth, max_args)
    return list(itertools.islice(iter_samples(seed, min_length, max_length, max_depth, max_args), n_samples))


def generate_listops(
    out_dir: str | os.PathLike,
    n_train: int = 96_000,
    n_val: int = 2_000,
    n_test: int = 2_000,
    seed: int = 0,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
) -> Path:
    """Generate ListOps and write ``basic_{train,val,test}.tsv`` in ``out_dir`` (created if needed).

    Defaults are LRA's (96k / 2k / 2k, 500 < tokens < 2,000, depth 10, up to 10 arguments). Returns
    ``out_dir`` as a Path."""
    check_generator_args(n_train, n_val, n_test, min_length, max_length, max_depth, max_args)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = iter_samples(seed, min_length, max_length, max_depth, max_args)
    for split, count in (("train", n_train), ("val", n_val), ("test", n_test)):
        write_tsv(out / f"basic_{split}.tsv", itertools.islice(samples, count))
    return out
