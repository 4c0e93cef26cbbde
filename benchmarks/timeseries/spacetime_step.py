"""Seconds per SpaceTime training batch at the paper's ETT settings (configs/timeseries/etth1/spacetime_*_96.yaml:
d_model 128, d_state 64, batch 50, lookback 336, horizon 96): forward, loss, backward and AdamW on random data.

    python benchmarks/timeseries/spacetime_step.py                 # M (7 channels, channel-independent) and S
    PYTHONPATH=/other/checkout python benchmarks/timeseries/spacetime_step.py   # another checkout, to compare

One intra-op thread. Prints the median wall time and the median CPU time of the process per step (the CPU time
moves less than the wall time on a machine other jobs share), and which checkout's ssmzoo ran.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import ssmzoo
from ssmzoo.models import SpaceTime


def paper_model(channels: int, lookback: int, horizon: int) -> SpaceTime:
    return SpaceTime(channels, channels, lookback, horizon, d_model=128, d_state=64, n_blocks=1, encoder_kernels=16,
                     embedding="repeat", diff_orders=[0, 1, 2, 3], ma_per_group=4, ma_window_range=[4, 720],
                     dropout=0.25, instance_norm="mean", lag_weight=1.0, input_weight=1.0, loss="rmse",
                     channel_independent=True)


def time_steps(channels: int, steps: int, batch: int = 50, lookback: int = 336, horizon: int = 96) -> tuple[float, float]:
    torch.manual_seed(0)
    model = paper_model(channels, lookback, horizon)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch, lookback, channels), torch.randn(batch, horizon, channels)

    def step() -> None:
        optimizer.zero_grad()
        model.loss(x, y).backward()
        optimizer.step()

    step()  # warm-up
    wall, cpu = [], []
    for _ in range(steps):
        t, c = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", nargs="+", default=["M", "S"], choices=["M", "S"])
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(ssmzoo.__file__)))
    for features in args.features:
        wall, cpu = time_steps(7 if features == "M" else 1, args.steps)
        print(f"{checkout}  {features}: {wall:.2f} s / batch wall, {cpu:.2f} s CPU (median of {args.steps}; "
              f"load {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
