"""Building blocks shared by layers and models, one idea per file: RMSNorm (plain, grouped, gated),
the stateful short causal convolution, attention (causal / sliding window, grouped KV heads, rotary,
persistent and context tokens, KV cache), MLP/GLU, the SSM layers' output projection and FFT
convolution, S5's and the LRU's gated output, and padding helpers. Nothing here knows the layer contract (``ssmzoo.layers``)."""

from .attention import Attention, KVCache, attention_mask
from .fft_conv import fft_conv, ssm_convolution
from .gated_output import GatedOutput
from .mlp import MLP
from .output_projection import OutputProjection
from .padding import padding_mask, reverse_padded
from .rmsnorm import RMSNorm
from .rotary import rotary
from .short_conv import ShortConvolution

__all__ = [
    "Attention",
    "GatedOutput",
    "KVCache",
    "MLP",
    "OutputProjection",
    "RMSNorm",
    "ShortConvolution",
    "attention_mask",
    "fft_conv",
    "padding_mask",
    "reverse_padded",
    "rotary",
    "ssm_convolution",
]
