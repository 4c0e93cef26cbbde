"""Image statistics of generated Pathfinder / Path-X samples, beside any reference we have.

    python benchmarks/lra/pathfinder_stats.py                      # 1,000 samples per size, contour length 14
    python benchmarks/lra/pathfinder_stats.py --n 200 --sizes 32 128
    python benchmarks/lra/pathfinder_stats.py --data 32=/data/lra_release/pathfinder32/curv_contour_length_14

Per size: mean intensity (pixels / 255), fraction of bright pixels (> half the image's maximum),
fraction of non-zero pixels (each averaged over images, ± the standard deviation across images),
the share of label 1, the distractor contours placed and the CPU time per sample. ``--data
SIZE=FOLDER`` measures a folder in the LRA layout the same way (for example the official release,
when you have it); its rows are marked as such. We found no published figures for these statistics
of the original images, so the reference column says so rather than inventing numbers.

Writes ``benchmarks/lra/results/pathfinder_stats.md`` (or ``--out``) and prints the same table.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))  # this checkout's ssmzoo, not another installed copy

from ssmzoo.data.lra.pathfinder import read_metadata  # noqa: E402
from ssmzoo.data.lra.pathfinder_generator import SIZE_CONFIGS, SIZES, _fit_table, make_sample  # noqa: E402

REFERENCE = "none published (not found in the LRA or Pathfinder papers or code)"


def image_stats(images: np.ndarray) -> dict[str, tuple[float, float]]:
    """Mean ± std over images of: mean intensity, fraction > half the image's max, fraction > 0."""
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    peak = x.max(axis=1, keepdims=True)
    per_image = {
        "mean intensity": x.mean(axis=1),
        "bright (> 0.5 max)": (x > 0.5 * peak).mean(axis=1),
        "non-zero": (x > 0).mean(axis=1),
    }
    return {k: (float(v.mean()), float(v.std())) for k, v in per_image.items()}


def generated(size: int, n: int, seed: int, contour_length: int) -> dict:
    for margin in SIZE_CONFIGS[size].margins:
        _fit_table(size, contour_length, margin)  # built once per process; not timed per sample
    start = time.process_time()
    samples = [make_sample(size, contour_length, seed, i) for i in range(n)]
    cpu_ms = (time.process_time() - start) / n * 1000
    labels = np.array([s.label for s in samples])
    distractors = np.array([len(s.contours) - 2 for s in samples])
    budget = SIZE_CONFIGS[size].distractor_budget // (contour_length // 3)
    return {
        "source": f"generated (seed {seed}, contour length {contour_length})",
        "size": size,
        "n": n,
        "stats": image_stats(np.stack([s.image for s in samples])),
        "label 1": float(labels.mean()),
        "distractors": f"{distractors.mean():.2f} of {budget}",
        "cpu ms": f"{cpu_ms:.1f}",
    }


def from_folder(size: int, folder: Path, n: int) -> dict:
    from PIL import Image

    samples = read_metadata(folder)[:n]
    images = np.stack([np.asarray(Image.open(p).convert("L")) for p, _ in samples])
    if images.shape[1:] != (size, size):
        raise ValueError(f"--data {size}={folder}: images are {images.shape[1:]}, expected ({size}, {size})")
    return {
        "source": f"folder {folder}",
        "size": size,
        "n": len(samples),
        "stats": image_stats(images),
        "label 1": float(np.mean([label for _, label in samples])),
        "distractors": "–",
        "cpu ms": "–",
    }


def table(rows: list[dict]) -> str:
    head = ("| size | source | images | mean intensity | bright (> 0.5 max) | non-zero | label 1 share "
            "| distractors placed | CPU ms / sample | published original |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        s = r["stats"]
        cells = [f"{s[k][0]:.4f} ± {s[k][1]:.4f}" for k in ("mean intensity", "bright (> 0.5 max)", "non-zero")]
        lines.append(f"| {r['size']} | {r['source']} | {r['n']} | " + " | ".join(cells)
                     + f" | {r['label 1']:.3f} | {r['distractors']} | {r['cpu ms']} | {REFERENCE} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", choices=SIZES, default=list(SIZES))
    parser.add_argument("--n", type=int, default=1000, help="samples per size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contour-length", type=int, choices=(6, 9, 14), default=14)
    parser.add_argument("--data", nargs="*", default=[], metavar="SIZE=FOLDER",
                        help="also measure these folders in the LRA layout (e.g. the official release)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "pathfinder_stats.md")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be >= 1, got {args.n}")
    rows = [generated(size, args.n, args.seed, args.contour_length) for size in args.sizes]
    for spec in args.data:
        size, _, folder = spec.partition("=")
        if not size.isdigit() or not folder:
            parser.error(f"--data expects SIZE=FOLDER, got {spec!r}")
        rows.append(from_folder(int(size), Path(folder), args.n))
    command = "python benchmarks/lra/pathfinder_stats.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = (
        "# Pathfinder generator: image statistics\n\n"
        "Per-image mean intensity (pixel / 255), fraction of pixels brighter than half the image's maximum,\n"
        "fraction of non-zero pixels (mean ± std over images), share of label 1 (markers on one contour),\n"
        "distractor contours placed (of the nominal number) and CPU time per sample.\n\n"
        + table(rows)
        + f"\n\nCommand: `{command.strip()}`  \n"
        f"Machine: {platform.machine()}, Python {platform.python_version()}, "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
