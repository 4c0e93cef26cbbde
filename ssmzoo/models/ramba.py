"""RAMba (Hu, Leng, Zhao, Tu, Wu 2025; PAPERS.md): a language model whose upper layers read a chunk memory
of the lower layers' output through hierarchical sparse attention, so any token of a very long context
can be reached in O(K · S) per token while the memory stays off the accelerator.

    embedding
    lower      n_lower_layers × [x + lower_layer(norm(x))]                      (the paper: Mamba-2)
    chunking   the lower output, split into chunks of S, encoded once into keys, values and landmarks
               (``ssmzoo.layers.hsa.ChunkMemory``: [CLS] + a bidirectional encoder per chunk)
    retrieval  one selection query per token and retrieval head, from the lower output
    upper      n_hsa_layers × ( [x + HSA(norm(x))],  local_per_hsa × [x + local_layer(norm(x))] )
    head       RMSNorm, a linear head tied to the embedding

Every HSA layer has its own queries and output projection and reads the one memory with the one
selection, as in the authors' code (``modeling_ramba.py``: ChunkingLayer, RetrievalLayer, then groups of
HierarchicalSparseAttention + ``num_mamba_per_gca`` Mamba2 blocks). With ``lower_layer = local_layer =
"swa"`` and ``d_intermediate > 0`` (an MLP after every mixer) it is the SWA + HSA Transformer of the
authors' later HSA-UltraLong ("Every Token Counts", 2025), which they recommend for very long pretraining.

RAMba is a configuration of :class:`~ssmzoo.models.LanguageModel`: its pattern is the lower blocks, a shared
chunk memory (``{"memory": "chunks"}``), then groups of an HSA read and the local blocks. Checkpoints written
before the LM stack was one class name their parameters ``lower.*``, ``memory.*``, ``upper.*``; ``upgrade_state_dict``
(``ssmzoo.models.legacy``) renames them.

Where we differ from the authors: the selection is recomputed by each HSA layer's op call from the shared
selection queries and landmarks (the same chunks and weights; they compute it once); no segment-wise
state resets while training (``segment_size``); the lower and local mixers are any registered causal
layer by name (default "mamba2", the paper's).
"""

from __future__ import annotations

from typing import Any, Literal

from ..layers import get as get_layer
from ..layers.hsa import check_hsa_args
from ..modules.checks import check_float, check_int
from .lm import LanguageModel

DEFAULT_MIXER = "mamba2"  # the paper's


class RAMba(LanguageModel):
    """Tokens (batch, length) -> next-token logits (batch, length, vocab_size): a :class:`LanguageModel` whose
    pattern is RAMba's.

    Args:
        vocab_size: number of tokens (under the ``ssmzoo`` command: from the datamodule).
        d_model: width.
        n_lower_layers: mixer blocks below the chunk memory.
        n_hsa_layers: HSA blocks above it (>= 1), each followed by ``local_per_hsa`` local blocks.
        local_per_hsa: local mixer blocks after each HSA block (the authors' ``num_mamba_per_gca``).
        lower_layer, local_layer: registered names of causal layers ("mamba2", "mamba", "swa", ...).
        lower_layer_args, local_layer_args: their constructor arguments (d_model is added).
        heads, kv_heads, head_dim, chunk_size, top_k, combine, retrieval_heads, retrieval_dim, encoder_layers,
            encoder_heads, encoder_d_intermediate, encoder_checkpoint, qk_norm, cache_device, hsa_backend: as in
            :class:`ssmzoo.layers.HSA` (the memory's and every HSA block's).
        d_intermediate: hidden width of a SwiGLU MLP after every mixer (0: none, as in Mamba LMs; the SWA
            design is a Transformer and wants one).
        norm_eps: epsilon of the RMSNorms.
        tie_embeddings: share the head's weight with the embedding.
        initializer_range: std of the embedding init.
        rescale_prenorm_residual: divide every block's output projections by sqrt(residual branches) at
            init (GPT-2's scheme), so the residual stream does not grow with depth.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        n_lower_layers: int = 2,
        n_hsa_layers: int = 1,
        local_per_hsa: int = 2,
        lower_layer: str = DEFAULT_MIXER,
        lower_layer_args: dict[str, Any] | None = None,
        local_layer: str = DEFAULT_MIXER,
        local_layer_args: dict[str, Any] | None = None,
        heads: int = 4,
        kv_heads: int = 1,
        head_dim: int | None = None,
        chunk_size: int = 64,
        top_k: int = 8,
        combine: Literal["stick_breaking", "softmax"] = "stick_breaking",
        retrieval_heads: int | None = None,
        retrieval_dim: int | None = None,
        encoder_layers: int = 1,
        encoder_heads: int | None = None,
        encoder_d_intermediate: int | None = None,
        encoder_checkpoint: bool = False,
        qk_norm: bool = False,
        cache_device: str | None = None,
        hsa_backend: str | None = None,
        d_intermediate: int = 0,
        norm_eps: float = 1e-5,
        tie_embeddings: bool = True,
        initializer_range: float = 0.02,
        rescale_prenorm_residual: bool = True,
    ) -> None:
        check_int("RAMba", "vocab_size", vocab_size)
        check_int("RAMba", "d_model", d_model)
        check_int("RAMba", "n_lower_layers", n_lower_layers, minimum=0)
        check_int("RAMba", "n_hsa_layers", n_hsa_layers)
        check_int("RAMba", "local_per_hsa", local_per_hsa, minimum=0)
        check_int("RAMba", "d_intermediate", d_intermediate, minimum=0)
        check_float("RAMba", "initializer_range", initializer_range, above=0.0)
        check_hsa_args("RAMba", d_model, heads, kv_heads, head_dim, chunk_size, top_k, combine, retrieval_heads,
                       retrieval_dim, encoder_layers, encoder_heads, encoder_d_intermediate, encoder_checkpoint,
                       qk_norm, cache_device, hsa_backend, norm_eps)
        for arg, name, args in (("lower_layer", lower_layer, lower_layer_args),
                                ("local_layer", local_layer, local_layer_args)):
            if not isinstance(name, str):
                raise ValueError(f"RAMba: {arg} must be a registered layer name, got {name!r}")
            try:
                get_layer(name)
            except ValueError as e:
                raise ValueError(f"RAMba: {arg}: {e}") from e
            if args is not None and not isinstance(args, dict):
                raise ValueError(f"RAMba: {arg}_args must be a dict of {name}'s arguments, got {args!r}")
        memory = dict(kv_heads=kv_heads, head_dim=head_dim, heads=heads, chunk_size=chunk_size,
                      retrieval_heads=retrieval_heads, retrieval_dim=retrieval_dim, encoder_layers=encoder_layers,
                      encoder_heads=encoder_heads, encoder_d_intermediate=encoder_d_intermediate,
                      encoder_checkpoint=encoder_checkpoint, qk_norm=qk_norm, cache_device=cache_device,
                      norm_eps=norm_eps)
        pattern = [
            {"layer": lower_layer, "args": dict(lower_layer_args or {}), "repeat": n_lower_layers},
            {"memory": "chunks", "args": memory},
        ]
        for _ in range(n_hsa_layers):
            pattern += [
                {"read": "hsa", "args": dict(heads=heads, top_k=top_k, combine=combine, hsa_backend=hsa_backend)},
                {"layer": local_layer, "args": dict(local_layer_args or {}), "repeat": local_per_hsa},
            ]
        try:
            super().__init__(vocab_size, d_model, pattern=pattern, d_intermediate=d_intermediate, norm_eps=norm_eps,
                             tie_embeddings=tie_embeddings, initializer_range=initializer_range,
                             rescale_prenorm_residual=rescale_prenorm_residual)
        except ValueError as e:
            raise ValueError(f"RAMba: {e}") from e
        self.chunk_size = chunk_size
