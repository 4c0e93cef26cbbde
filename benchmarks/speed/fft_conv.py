"""fft_conv's written-out gradients and two-sided kernel against the plain autograd form, in an S4D model.

Times one forward + backward of a mini-LRA-sized S4D classifier (B 16, L 1,024, d_model 64, 4 bidirectional
layers, N 16; the mini-LRA Pathfinder/Fashion-MNIST shape) with the layers' convolution done (a) the plain way —
autograd through rfft/irfft, the backward direction run on each sequence reversed within its length — and (b)
by ``ssmzoo.modules.ssm_convolution``; interleaved in one process, CPU time, median over repetitions.

    python benchmarks/speed/fft_conv.py [--reps 6] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from einops import rearrange

import ssmzoo.layers.s4d as s4d_module
from ssmzoo import SequenceModel
from ssmzoo.modules.fft_conv import fft_conv_reference, ssm_convolution
from ssmzoo.modules.padding import reverse_padded


def plain_convolution(x, k, channels, lengths):
    """The convolution as written before the fast path: autograd's FFT gradients, one FFT per direction."""
    u = rearrange(x, "b l h -> b h l")
    y = fft_conv_reference(u[:, None], k[:channels].to(u.dtype))
    if k.shape[0] > channels:
        u_rev = rearrange(reverse_padded(x, lengths), "b l h -> b h l")
        y_rev = fft_conv_reference(u_rev[:, None], k[channels:].to(u.dtype))
        y = y + rearrange(reverse_padded(rearrange(y_rev, "b c h l -> b l c h"), lengths), "b l c h -> b c h l")
    return y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = SequenceModel(d_output=2, d_input=1, d_model=64, n_layers=4, layer="s4d", norm="batch", prenorm=True,
                          layer_args=dict(d_state=16, bidirectional=True, init="legs"))
    x, y = torch.randn(16, 1024, 1), torch.randint(0, 2, (16,))
    impls = {"plain autograd": plain_convolution, "ssmzoo fft_conv": ssm_convolution}
    outputs = {}

    def step(name: str) -> float:
        s4d_module.ssm_convolution = impls[name]
        model.zero_grad()
        start = time.process_time()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        outputs[name] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
        return time.process_time() - start

    for name in impls:  # warm-up
        step(name)
    times: dict[str, list[float]] = {name: [] for name in impls}
    for r in range(args.reps):
        for name in (list(impls) if r % 2 == 0 else list(impls)[::-1]):
            times[name].append(step(name))
    (l0, g0), (l1, g1) = outputs.values()
    agree = max([float((l0 - l1).abs())] + [float((a - b).abs().max()) for a, b in zip(g0, g1)])
    print(f"load average {os.getloadavg()[0]:.2f}; {args.threads} thread(s); torch {torch.__version__}")
    for name, t in times.items():
        print(f"{name:16s} median {statistics.median(t):.3f} CPU s  ({', '.join(f'{v:.3f}' for v in t)})")
    ratio = statistics.median(times["plain autograd"]) / statistics.median(times["ssmzoo fft_conv"])
    print(f"ratio {ratio:.2f}x; largest difference of loss and gradients {agree:.1e}")


if __name__ == "__main__":
    main()
