"""A language model's one-token decode step as an AOTInductor package: compiled ahead of time into a ``.pt2`` file
that PyTorch loads and runs without ssmzoo (no Python model code, no ssmzoo kernels: only PyTorch's operators).

    package_decode_step(model, "mamba_step.pt2")                  # torch.export, then AOTInductor (C++ compile)
    step = torch._inductor.aoti_load_package("mamba_step.pt2")    # later, anywhere PyTorch runs
    ids = generate_greedy(step, prompt_ids, max_new_tokens=50)    # the same tokens as model.generate(greedy)

The package's step is ``(token (batch,), *state) -> (logits (batch, vocab_size), *next state)`` with the batch size
dynamic; the state is the flat list of the model's state tensors (``LanguageModel.init_state``), and the package's
metadata says their shapes and dtypes, so a loop starts a fresh stream from zeros without the model.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from ..files import atomic_write

METADATA_KEY = "ssmzoo_decode_step"
FORMAT = 1
ENV_VAR = "SSMZOO_BACKEND"  # the documented default backend of every op (models reach ops only through layers)


class DecodeStep(nn.Module):
    """``model.step`` on tensors only: ``(token (batch,), *state tensors) -> (logits (batch, vocab_size), *next state
    tensors)``, the state flattened as ``torch.utils._pytree`` flattens ``model.init_state(batch)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.spec = pytree.tree_structure(model.init_state(1))

    def forward(self, token: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        logits, new = self.model.step(token, pytree.tree_unflatten(list(state), self.spec))
        # Contiguous: a compiled package takes its inputs in the layout it was traced with and does not check strides,
        # and a state that comes out as a view (Mamba's conv window, a slice) goes back in as the next input.
        return (logits, *(t.contiguous() for t in pytree.tree_leaves(new)))


@contextlib.contextmanager
def _pytorch_backends() -> Iterator[None]:
    """Every op whose backend is left to the dispatcher takes its PyTorch reference while the step is traced, so the
    graph holds PyTorch's operators only (the package then needs no ssmzoo kernel to load)."""
    before = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = "reference"
    try:
        yield
    finally:
        if before is None:
            del os.environ[ENV_VAR]
        else:
            os.environ[ENV_VAR] = before


def _state_layout(model: nn.Module) -> list[tuple[list[int], str]]:
    """Per state tensor: its shape without the batch and its dtype; a ValueError where the state is not a fixed set
    of tensors that start at zero with the batch first (what a loop without the model can start from)."""
    name = type(model).__name__
    one, two = (pytree.tree_leaves(model.init_state(b)) for b in (1, 2))
    if not one or not all(isinstance(t, Tensor) for t in one + two):
        raise ValueError(f"package_decode_step: {name}'s state must be a structure of tensors, got "
                         f"{[type(t).__name__ for t in one]}")
    for t1, t2 in zip(one, two):
        if t1.dim() == 0 or t1.shape[0] != 1 or t2.shape[0] != 2 or t1.shape[1:] != t2.shape[1:]:
            raise ValueError(f"package_decode_step: {name}'s state tensors must have the batch first, got shape "
                             f"{tuple(t1.shape)} for batch 1 and {tuple(t2.shape)} for batch 2")
        if bool((t1 != 0).any()):
            raise ValueError(f"package_decode_step: {name}'s fresh state must be zeros (a loop without the model "
                             "starts from zeros), got a nonzero tensor")
    return [(list(t.shape[1:]), str(t.dtype).removeprefix("torch.")) for t in one]


def export_decode_step(model: nn.Module) -> torch.export.ExportedProgram:
    """``torch.export`` of ``DecodeStep(model)`` with a dynamic batch size, every dispatched op on its PyTorch
    reference. A ValueError where the state grows while decoding (an attention KV cache): a compiled step needs
    the state to keep its shape."""
    name = type(model).__name__
    _state_layout(model)
    step = DecodeStep(model)
    state = pytree.tree_leaves(model.init_state(2))
    token = torch.zeros(2, dtype=torch.long, device=model.embedding.weight.device)
    with torch.no_grad():
        _, *new = step(token, *state)
    if [t.shape for t in new] != [t.shape for t in state]:
        raise ValueError(f"package_decode_step: {name}'s state changes shape while decoding (from "
                         f"{[tuple(t.shape) for t in state]} to {[tuple(t.shape) for t in new]}: a growing cache); "
                         "a compiled decode step needs a fixed-size state (Mamba, Mamba-2, ... layers)")
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with torch.no_grad(), _pytorch_backends():
        program = torch.export.export(step, (token, *state), dynamic_shapes=({0: batch}, tuple({0: batch} for _ in state)))
    own = sorted({str(n.target) for n in program.graph.nodes
                  if n.op == "call_function" and str(n.target).startswith("ssmzoo.")})
    if own:
        raise ValueError(f"package_decode_step: {name}'s decode step calls ssmzoo's own kernels ({', '.join(own)}): "
                         "a layer names its backend; build it with the backends left to the dispatcher (None)")
    return program


def decode_metadata(model: nn.Module) -> dict[str, str]:
    """What a package's metadata says about the step, under ``METADATA_KEY`` (JSON): the vocabulary size and each
    state tensor's shape without the batch and its dtype."""
    return {METADATA_KEY: json.dumps({"format": FORMAT, "vocab_size": int(model.vocab_size),
                                      "state": _state_layout(model)})}


def package_decode_step(model: nn.Module, path: str | os.PathLike) -> Path:
    """Compile ``model``'s one-token decode step ahead of time (AOTInductor: C++ generated and compiled, about half
    a minute) into the package ``path`` (``.pt2``, written atomically). The model's current mode counts (call
    ``model.eval()`` first where it has dropout). Returns the path."""
    path = Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"package_decode_step: path must end with .pt2, got {str(path)!r}")
    metadata = decode_metadata(model)
    program = export_decode_step(model)
    return atomic_write(path, lambda f: torch._inductor.aoti_compile_and_package(
        program, package_path=f, inductor_configs={"aot_inductor.metadata": metadata}))


def generate_greedy(step: Any, input_ids: Tensor, max_new_tokens: int) -> Tensor:
    """Continue ``input_ids`` (batch, length) by ``max_new_tokens`` greedy tokens with a loaded package's step
    (``torch._inductor.aoti_load_package(path)``): the prompt goes through the step token by token from a zero
    state, then each argmax is fed back. Returns (batch, length + max_new_tokens), as ``model.generate`` does.
    Uses nothing but ``step`` and its metadata."""
    described = step.get_metadata().get(METADATA_KEY) if callable(getattr(step, "get_metadata", None)) else None
    if described is None:
        raise ValueError(f"generate_greedy: step must be a package written by package_decode_step, loaded with "
                         f"torch._inductor.aoti_load_package; got {type(step).__name__} without its metadata")
    layout = json.loads(described)
    if (not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long
            or 0 in input_ids.shape):
        raise ValueError("generate_greedy: input_ids must be a non-empty (batch, length) int64 tensor, got "
                         f"{getattr(input_ids, 'dtype', type(input_ids).__name__)} of shape "
                         f"{tuple(getattr(input_ids, 'shape', ()))}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"generate_greedy: max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if bool((input_ids < 0).any()) or bool((input_ids >= layout["vocab_size"]).any()):
        raise ValueError(f"generate_greedy: input_ids must lie in [0, vocab_size={layout['vocab_size']})")
    batch, out = input_ids.shape[0], [input_ids]
    state = [torch.zeros((batch, *shape), dtype=getattr(torch, dtype), device=input_ids.device)
             for shape, dtype in layout["state"]]
    with torch.no_grad():
        for t in range(input_ids.shape[1]):
            logits, *state = step(input_ids[:, t].contiguous(), *state)
        for i in range(max_new_tokens):
            token = logits.argmax(-1)
            out.append(token[:, None])
            if i + 1 < max_new_tokens:
                logits, *state = step(token, *state)
    return torch.cat(out, dim=1)
