"""Writing files so that a kill at any moment loses nothing, and cleaning up only what we wrote.

A file is written under a temporary name in the folder of its final name (so the rename is on one filesystem:
atomic on POSIX), flushed to disk with ``fsync``, then renamed over the final name; the folder is fsynced so
the rename itself survives a power loss. Until the rename, the previous file stays whole.

A temporary name carries the host and process id of its writer (``.<name>.partial-<host>-<pid>-<random>``,
and ``<folder>.building-<host>-<pid>`` for folders), so a later process can tell the leftovers of a killed
writer (same host, process gone) from the work of a live one, and removes only those.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

PARTIAL = ".partial-"
BUILDING = ".building-"


def writer_tag() -> str:
    """``<host>-<pid>`` of this process, as temporary names carry it."""
    return f"{socket.gethostname()}-{os.getpid()}"


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (a reused id counts as alive: the safe side)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _stale(tag: str) -> bool:
    """Whether ``<host>-<pid>`` (or a bare ``<pid>``, as older caches named it) names a writer that has gone."""
    host, _, pid = tag.rpartition("-")
    if not pid.isdigit() or (host and host != socket.gethostname()):
        return False  # not ours to judge: another machine's writer may still be at work
    return not process_alive(int(pid))


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_PARTIAL_NAME = re.compile(r"\.(?P<name>.+)" + re.escape(PARTIAL) + r"(?P<tag>.+)-[0-9a-f]{8}")


def remove_stale_partials(folder: Path) -> list[Path]:
    """Remove the temporary files in ``folder`` (``.<name>.partial-<host>-<pid>-<random>``) whose writer, on
    this machine, is gone: what a killed save left, whichever file it was saving. Returns what was removed."""
    removed = []
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:
        return removed
    for entry in entries:
        match = _PARTIAL_NAME.fullmatch(entry.name)
        if match and _stale(match.group("tag")) and entry.is_file() and not entry.is_symlink():
            try:
                entry.unlink()
                removed.append(entry)
            except FileNotFoundError:
                pass
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a temporary file in the same folder, which is fsynced and
    renamed over ``path``. A kill leaves either the old file or the new one, whole. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path.parent)
    partial = path.with_name(f".{path.name}{PARTIAL}{writer_tag()}-{secrets.token_hex(4)}")
    try:
        with open(partial, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)  # ours, never finished
        raise
    fsync_dir(path.parent)
    return path


def building_folder(folder: Path) -> Path:
    """The name ``folder`` is built under by this process: ``<folder>.building-<host>-<pid>``."""
    return folder.with_name(f"{folder.name}{BUILDING}{writer_tag()}")


def remove_stale_building(folder: Path) -> list[Path]:
    """Remove ``<folder>.building-<host>-<pid>`` (and the older ``<folder>.building-<pid>``) folders whose
    builder, on this machine, is gone. Returns what was removed."""
    prefix = f"{folder.name}{BUILDING}"
    removed = []
    try:
        entries = list(folder.parent.iterdir())
    except FileNotFoundError:
        return removed
    for entry in entries:
        if entry.name.startswith(prefix) and _stale(entry.name[len(prefix):]) and entry.is_dir() \
                and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
