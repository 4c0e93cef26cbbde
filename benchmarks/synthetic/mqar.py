"""Multi-query associative recall (MQAR, Zoology, arXiv 2312.04927) for every causal layer at two state sizes:
test accuracy against the bytes of the model's recurrent state, each model trained through the ``ssmzoo`` command.

    python benchmarks/synthetic/mqar.py [--layers gated_deltanet mamba2 ...] [--sizes small large]
                                        [--max-minutes 10] [--threads 1] [-- extra ssmzoo fit arguments]

Every run is ``configs/synthetic/mqar/gated_deltanet.yaml`` (a 2-layer LM, d_model 64; 8 key-value pairs in 64
tokens, vocabulary 64, blanks between the queries) with the layer and its arguments replaced by
``SIZES[layer][size]``, stopped at the config's step budget or after ``--max-minutes``, whichever comes first, and
tested (best checkpoint by val/acc) on the held-out test split. The state bytes are those of the states the model's layers carry after reading one whole
sequence (``final_state`` of each layer on a 64-token input, float32, batch 1): what a recurrent layer keeps, the
key/value window of sliding-window attention, HSA's growing chunk cache. Results accumulate in
``results/mqar.json`` (a later run of some layers replaces only their rows) and the table in ``results/mqar.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))  # this checkout's ssmzoo, not an installed one

from ssmzoo.cli import run  # noqa: E402

CONFIG = REPO / "configs" / "synthetic" / "mqar" / "gated_deltanet.yaml"
SEQ_LEN, D_MODEL = 64, 64

# Two state sizes per causal layer (d_model 64): the argument that sets its state, small then large.
SIZES: dict[str, dict[str, dict]] = {
    "gated_deltanet": {"small": dict(num_k_heads=4, num_v_heads=4, head_k_dim=8, head_v_dim=8),
                       "large": dict(num_k_heads=4, num_v_heads=4, head_k_dim=16, head_v_dim=16)},
    "mamba2": {"small": dict(d_state=8, headdim=32), "large": dict(d_state=32, headdim=32)},
    "mamba3": {"small": dict(d_state=8, headdim=32), "large": dict(d_state=32, headdim=32)},
    "s5": {"small": dict(d_state=16), "large": dict(d_state=64)},
    "lru": {"small": dict(d_state=16), "large": dict(d_state=64)},
    "mamba": {"small": dict(d_state=4), "large": dict(d_state=16)},
    "s4d": {"small": dict(d_state=16), "large": dict(d_state=64)},
    "s4": {"small": dict(d_state=16), "large": dict(d_state=64)},
    "companion": {"small": dict(d_state=16), "large": dict(d_state=64)},
    "shift": {"small": dict(d_state=16), "large": dict(d_state=64)},
    "neural_memory": {"small": dict(heads=2, memory_expansion=1.0), "large": dict(heads=2, memory_expansion=4.0)},
    "swa": {"small": dict(heads=2, window=8), "large": dict(heads=2, window=32)},
    "hsa": {"small": dict(heads=2, kv_heads=1, chunk_size=8, top_k=2), "large": dict(heads=2, kv_heads=1,
                                                                                     chunk_size=8, top_k=6)},
    "memory_as_gate": {"small": dict(heads=2, window=8, memory_heads=2),
                       "large": dict(heads=2, window=32, memory_heads=2)},
    "memory_as_context": {"small": dict(heads=2, segment_len=8, memory_heads=2),
                          "large": dict(heads=2, segment_len=32, memory_heads=2)},
    "differencing": {"small": dict(orders=[1]), "large": dict(orders=[1, 2, 3])},
    "moving_average_residual": {"small": dict(windows=[4]), "large": dict(windows=[16])},
}


def causal_layers() -> list[str]:
    """Every registered layer that is causal in its default configuration."""
    from ssmzoo import layers

    names = []
    for name in layers.available():
        try:
            layer = layers.build(name, d_model=D_MODEL, **SIZES.get(name, {}).get("small", {}))
        except (ValueError, TypeError):  # a layer that needs arguments this script cannot choose (parallel: its layers)
            continue
        if layer.causal:
            names.append(name)
    return names


def state_bytes(model) -> int:
    """Bytes of the states the model's layers hold after one sequence of SEQ_LEN tokens (float32, batch 1)."""
    import torch

    from ssmzoo.layers import SequenceLayer

    def size(state) -> int:
        if isinstance(state, torch.Tensor):
            return state.numel() * state.element_size()
        if isinstance(state, dict):
            return sum(size(v) for v in state.values())
        if isinstance(state, (tuple, list)):
            return sum(size(v) for v in state)
        return 0

    total = 0
    with torch.no_grad():
        for layer in (m for m in model.modules() if isinstance(m, SequenceLayer)):
            x = torch.zeros(1, SEQ_LEN, layer.d_model)
            # the layer's dtype; a layer without parameters (fixed differencing taps) takes float32
            total += size(layer.final_state(x.to(next(layer.parameters(), x).dtype)))
    return total


def train(layer: str, size: str, args: argparse.Namespace) -> dict:
    import torch

    load_before = os.getloadavg()[0]
    seconds = round(args.max_minutes * 60)
    layer_args = json.dumps(SIZES[layer][size])
    cli = run(["fit", "--config", str(CONFIG), f"--model.init_args.model.init_args.layer={layer}",
               f"--model.init_args.model.init_args.layer_args={layer_args}",
               "--trainer.default_root_dir", args.root, "--trainer.enable_progress_bar=false",
               f"--trainer.max_time=00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}",
               *args.cli_args])
    results = cli.results
    with open(Path(results["run_dir"]) / "metrics.csv") as f:
        curve = [{"step": int(r["step"]) + 1, "val_acc": float(r["val/acc"])} for r in csv.DictReader(f)
                 if r.get("val/acc")]
    model = cli.model.model
    return {"layer": layer, "size": size, "layer_args": SIZES[layer][size], "state_bytes": state_bytes(model),
            "params": sum(p.numel() for p in model.parameters()), "steps": results["steps"],
            "test_accuracy": 100 * results["test_acc"], "threads": torch.get_num_threads(),
            "wall_seconds": results["wall_time_s"], "load": [round(load_before, 1), round(os.getloadavg()[0], 1)],
            "curve": curve, "run_dir": results["run_dir"]}


def write_table(rows: list[dict], out: Path) -> str:
    rows = sorted(rows, key=lambda r: (r["layer"], r["state_bytes"]))
    lines = [
        "# MQAR (multi-query associative recall), every causal layer at two state sizes, CPU",
        "",
        f"`{CONFIG.relative_to(REPO)}` through `ssmzoo fit`, the layer replaced: a 2-layer LM, d_model 64; 8 key-value "
        "pairs then their 8 queries in 64 tokens, vocabulary 64 (chance 1/32), fresh samples every step; test "
        "accuracy over the asked keys (1,000 held-out sequences, the best checkpoint by validation accuracy). State: "
        "the bytes both layers carry after a 64-token sequence (float32, one sequence). Steps: the config's 1,500 or "
        "as many as fit in `--max-minutes`, whichever came first; load: the 1-minute load average of the machine "
        "before and after the run (– where not recorded), which sets how many steps fit.",
        "",
        "| layer | size | arguments | state bytes | parameters | steps | test accuracy | wall time | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        arguments = ", ".join(f"{k}={v}" for k, v in r["layer_args"].items())
        lines.append(f"| {r['layer']} | {r['size']} | {arguments} | {r['state_bytes']:,} | {r['params']:,} | "
                     f"{r['steps']} | {r['test_accuracy']:.1f}% | {r['wall_seconds'] / 60:.1f} min | "
                     + ("–" if "load" not in r else f"{r['load'][0]:g} → {r['load'][1]:g}") + " |")
    missing = sorted({f"{name} ({size})" if name in SIZES else f"{name} (no sizes chosen)"
                      for name in causal_layers() for size in ("small", "large")
                      if not any(r["layer"] == name and r["size"] == size for r in rows)})
    lines += ["", "Not run yet: " + (", ".join(missing) if missing else "none") + ".",
              "", "Reproduce (all, or name layers and sizes): `python benchmarks/synthetic/mqar.py --max-minutes 10` "
              "(`--layers gated_deltanet mamba2 --sizes small large`)."]
    text = "\n".join(lines) + "\n"
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, out.with_suffix(".md"))
    return text


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", nargs="+", default=None, help="layers to train (default: every causal layer)")
    parser.add_argument("--sizes", nargs="+", default=["small", "large"], choices=["small", "large"])
    parser.add_argument("--max-minutes", type=float, default=10.0, help="stop each run's training after this long")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--root", default="runs/benchmarks/mqar")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "mqar")
    parser.add_argument("cli_args", nargs="*", help="extra ssmzoo fit arguments (after --)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    names = args.layers if args.layers is not None else causal_layers()
    unknown = [n for n in names if n not in SIZES]
    if unknown and args.layers is not None:
        raise SystemExit(f"mqar.py: no state sizes chosen for {', '.join(unknown)}: add them to SIZES")
    if unknown:  # a layer registered after this script was written: say so, run the others
        print(f"mqar.py: skipping {', '.join(unknown)} (no state sizes chosen: add them to SIZES)", flush=True)
        names = [n for n in names if n in SIZES]
    store = args.out.with_suffix(".json")
    rows = json.loads(store.read_text()) if store.exists() else []
    for name in names:
        for size in args.sizes:
            result = train(name, size, args)
            rows = [r for r in rows if (r["layer"], r["size"]) != (name, size)] + [result]
            store.parent.mkdir(parents=True, exist_ok=True)
            tmp = store.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(rows, indent=2) + "\n")
            os.replace(tmp, store)
            print(f"mqar: {name} ({size}): {result['test_accuracy']:.1f}% at {result['state_bytes']:,} state bytes",
                  flush=True)
    print(write_table(rows, args.out))
    return rows


if __name__ == "__main__":
    main()
