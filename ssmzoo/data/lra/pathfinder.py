"""LRA Pathfinder (32×32, 1,024 pixels) and Path-X (128×128, 16,384): are the two circles joined
by one dashed contour? 2 classes. :class:`PathfinderDataModule` reads the official release (or any folder in
its layout); :class:`GeneratedPathfinderDataModule` generates such a folder first, with ssmzoo's generator.

Reads the official release: ``<data_dir>/metadata/*.npy`` are text files whose lines read
``<image dir> <file name> <index> <label> ...``, and images lie at ``<data_dir>/<image dir>/<file name>``
(e.g. ``pathfinder32/curv_contour_length_14``). As in the S4 LRA setup, the samples are split
80 / 10 / 10 with a fixed seed, and pixels are scaled to [-1, 1]. Decoded arrays are cached under
``$SSMZOO_DATA/cache/pathfinder``, keyed by the names, sizes and modification times of the metadata and
image files and the decoder's version, so the PNGs are read once and a changed file is read again."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from ..paths import data_root
from .common import ClassificationDataModule, cache_file, files_key, holdout, require_dir

_HOW = ("Download the LRA release (lra_release.gz), extract it, and pass --data.init_args.data_dir "
        "<...>/lra_release/pathfinder32/curv_contour_length_14 (or pathfinder128 for Path-X; or extract the "
        "release to $SSMZOO_DATA).")
# Bump when decoding changes, so caches written by an older decoder are not reused.
DECODER_VERSION = 1


def default_data_dir(resolution: int) -> Path:
    """Where Pathfinder is looked for when data_dir is None."""
    return data_root() / "lra_release" / f"pathfinder{resolution}" / "curv_contour_length_14"


def metadata_files(folder: Path) -> list[Path]:
    """``metadata/*.npy`` in numeric order (0.npy, 1.npy, ..., 10.npy)."""
    return sorted((folder / "metadata").glob("*.npy"), key=lambda p: (len(p.stem), p.stem))


def read_metadata(folder: Path) -> list[tuple[Path, int]]:
    """(image path, label) for every line of every ``metadata/*.npy`` file, in file order."""
    files = metadata_files(folder)
    if not files:
        raise FileNotFoundError(f"Pathfinder: no metadata/*.npy files in {folder}. {_HOW}")
    samples = []
    for meta in files:
        for lineno, line in enumerate(meta.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 4 or fields[3] not in ("0", "1"):
                raise ValueError(f"Pathfinder: {meta}, line {lineno}: expected '<dir> <file> <index> <label 0|1> ...', "
                                 f"got {line!r}")
            samples.append((folder / fields[0] / fields[1], int(fields[3])))
    return samples


def read_image(path: Path, resolution: int) -> np.ndarray:
    from PIL import Image  # optional dependency, only needed for Pathfinder

    if not path.is_file():
        raise FileNotFoundError(f"Pathfinder: the metadata names {path}, which does not exist")
    img = np.asarray(Image.open(path).convert("L"), dtype=np.uint8)
    if img.shape != (resolution, resolution):
        raise ValueError(f"Pathfinder: {path} is {img.shape}, expected ({resolution}, {resolution})")
    return img.reshape(-1)


class PathfinderDataModule(ClassificationDataModule):
    """Args: data_dir (the folder holding ``metadata/`` and the image folders; default
    ``$SSMZOO_DATA/lra_release/pathfinder<resolution>/curv_contour_length_14``), resolution (32 for
    Pathfinder, 128 for Path-X), tokens (256 intensity tokens instead of real values),
    val_fraction, test_fraction, batch_size, num_workers, seed (of the split)."""

    num_classes = 2

    def __init__(
        self,
        data_dir: str | None = None,
        resolution: int = 32,
        tokens: bool = False,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 42,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        if resolution not in (32, 64, 128, 256):
            raise ValueError(f"PathfinderDataModule: resolution must be 32, 64, 128 or 256, got {resolution!r}")
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1:
                raise ValueError(f"PathfinderDataModule: {name} must be a number in (0, 1), got {value!r}")
        if val_fraction + test_fraction >= 1:
            raise ValueError(
                f"PathfinderDataModule: val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}"
            )
        self.data_dir, self.resolution, self.tokens = data_dir, resolution, tokens
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.vocab_size = 257 if tokens else 0
        self.d_input = 0 if tokens else 1
        self._all: tuple[np.ndarray, np.ndarray] | None = None

    def _folder(self) -> Path:
        return require_dir(self.data_dir or default_data_dir(self.resolution), "Pathfinder data_dir", _HOW)

    def _source(self, split: str) -> str:
        return str(Path(self.data_dir or default_data_dir(self.resolution)) / "metadata")

    def _decoded(self) -> tuple[np.ndarray, np.ndarray]:
        if self._all is None:
            folder = self._folder()
            samples = read_metadata(folder)
            if not samples:
                raise ValueError(
                    f"Pathfinder: the metadata files in {folder / 'metadata'} list no samples; point "
                    f"{self.data_flag} at a complete release. {_HOW}"
                )
            missing = [str(path) for path, _ in samples if not path.is_file()]
            if missing:
                raise FileNotFoundError(
                    f"Pathfinder: the metadata names {len(missing)} image(s) that do not exist, e.g. {missing[0]}"
                )
            key = {
                "decoder": DECODER_VERSION,
                "resolution": self.resolution,
                "files": files_key(metadata_files(folder) + [path for path, _ in samples]),
            }
            cache = cache_file("pathfinder", key)
            if cache.is_file():
                with np.load(cache) as z:
                    self._all = (z["images"], z["labels"])
            else:
                images = np.stack([read_image(p, self.resolution) for p, _ in samples])
                labels = np.array([label for _, label in samples], dtype=np.int64)
                # write beside, then rename: a concurrent reader never sees half a file
                partial = cache.with_suffix(f".{os.getpid()}.partial.npz")
                np.savez(partial, images=images, labels=labels)
                os.replace(partial, cache)
                self._all = (images, labels)
        return self._all

    def _load(self, split: str):
        images, labels = self._decoded()
        rest, test = holdout(len(labels), self.test_fraction, self.seed, "test_fraction")
        train, val = holdout(len(rest), self.val_fraction / (1 - self.test_fraction), self.seed + 1, "val_fraction")
        idx = {"train": rest[train], "val": rest[val], "test": test}[split]
        chosen = images[idx]
        seqs = list(chosen.astype(np.int64) + 1) if self.tokens else list((chosen / 127.5 - 1.0).astype(np.float32)[..., None])
        return seqs, labels[idx]


def generated_dir(resolution: int, contour_length: int, n: int, generator_seed: int) -> Path:
    """Where :class:`GeneratedPathfinderDataModule` keeps its data: under ``$SSMZOO_DATA/generated/`` (never
    ``lra_release/``, which holds the official files), one folder per generator version and arguments."""
    from .pathfinder_generator import FOLDER_NAMES, GENERATOR_VERSION

    name = f"n{n}-seed{generator_seed}-v{GENERATOR_VERSION}"
    return data_root() / "generated" / f"pathfinder{resolution}" / name / FOLDER_NAMES[contour_length]


class GeneratedPathfinderDataModule(PathfinderDataModule):
    """Pathfinder / Path-X drawn by ssmzoo's seeded generator (:mod:`.pathfinder_generator`), written once in the
    official layout under ``$SSMZOO_DATA/generated/pathfinder<resolution>/n<n>-seed<s>-v<version>/`` and read
    as :class:`PathfinderDataModule` reads the release. GENERATED data, not the LRA release: the ``generated``
    attribute says so for results tables, and the class name does in every run's config and results.json.

    Args:
        n: images to generate (split val_fraction / test_fraction / rest, as the release).
        resolution: 32 (Pathfinder), 64, or 128 (Path-X).
        contour_length: dashes per contour: 14 (LRA's hard level), 9 or 6.
        generator_seed: the generator's seed (image ``i`` depends only on it, ``i``, resolution and contour length).
        generator_workers: processes drawing the images the first time (the files are the same for any number).
        tokens, val_fraction, test_fraction, batch_size, num_workers, seed: as :class:`PathfinderDataModule`.
    """

    def __init__(
        self,
        n: int = 10_000,
        resolution: int = 32,
        contour_length: int = 14,
        generator_seed: int = 0,
        generator_workers: int = 1,
        tokens: bool = False,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 42,
    ) -> None:
        from .pathfinder_generator import CONTOUR_LENGTHS, SIZES

        owner = type(self).__name__
        if resolution not in SIZES:
            raise ValueError(f"{owner}: resolution must be one of {SIZES} (the generator's sizes), got {resolution!r}")
        if contour_length not in CONTOUR_LENGTHS:
            raise ValueError(f"{owner}: contour_length must be one of {CONTOUR_LENGTHS}, got {contour_length!r}")
        for name, value, low in (("n", n, 3), ("generator_seed", generator_seed, 0), ("generator_workers", generator_workers, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{owner}: {name} must be an int >= {low}, got {value!r}")
        super().__init__(
            data_dir=str(generated_dir(resolution, contour_length, n, generator_seed)),
            resolution=resolution,
            tokens=tokens,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
        )
        self.n, self.contour_length, self.generator_seed = n, contour_length, generator_seed
        self.generator_workers = generator_workers
        self.generated = (f"generated Pathfinder-{resolution} (ssmzoo's seeded generator, contour length "
                          f"{contour_length}, {n} images, seed {generator_seed}; not the LRA release)")

    @property
    def folder(self) -> Path:
        """The generated data set's folder (the ``data_dir`` it is read from)."""
        return Path(self.data_dir)

    def _is_complete(self) -> bool:
        return (self.folder / "params.json").is_file()

    def prepare_data(self) -> None:
        """Generate the images once (on one process); later runs with the same arguments reuse them."""
        if self._is_complete():
            return
        from .pathfinder_generator import GENERATOR_VERSION, generate_pathfinder

        folder = self.folder
        if folder.exists():  # ours are renamed into place complete, with params.json
            raise FileExistsError(f"{type(self).__name__}: {folder} exists but has no params.json, so it is not a "
                                  "complete generated data set (another program's files?); delete it to generate anew")
        folder.parent.mkdir(parents=True, exist_ok=True)  # <n>-<seed>-<version>/ holds one folder per contour length
        rank_zero_info(f"Generating {self.n} Pathfinder images into {folder} (once; later runs reuse them)")
        # Write a private folder, then rename it into place: a crash or a concurrent process never leaves a
        # half-written data set that looks complete.
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            written = generate_pathfinder(staging, size=self.resolution, n=self.n, seed=self.generator_seed,
                                          contour_length=self.contour_length, workers=self.generator_workers)
            params = {"generator_version": GENERATOR_VERSION, "n": self.n, "size": self.resolution,
                      "contour_length": self.contour_length, "seed": self.generator_seed,
                      "note": "generated by ssmzoo's Pathfinder generator; not the LRA release"}
            (written / "params.json").write_text(json.dumps(params, indent=1) + "\n")
            try:
                os.rename(written, folder)
            except OSError:
                if not self._is_complete():  # not a concurrent writer finishing first
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def setup(self, stage: str | None = None) -> None:
        rank_zero_info(f"{type(self).__name__}: {self.generated}, read from {self.folder}")
        super().setup(stage)

    def _decoded(self) -> tuple[np.ndarray, np.ndarray]:
        if self._all is None and not self._is_complete():
            self.prepare_data()  # setup without prepare_data (e.g. used outside a Trainer)
        return super()._decoded()
