"""The IDX file format of MNIST and Fashion-MNIST (LeCun et al.), plain or gzip-compressed.

Layout: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
0x0E float64), a byte with the number of dimensions, one big-endian uint32 per dimension, then the
values in row-major order, big-endian."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (gzip or not, told apart by its first bytes).

    Raises FileNotFoundError if ``path`` is missing, and ValueError naming the file if its magic
    number, type or dimensions are wrong or it is truncated or has trailing bytes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX: no file {path}")
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
            raise ValueError(f"IDX: {path} is a damaged or truncated gzip file ({e})") from e
    if len(raw) < 4:
        raise ValueError(f"IDX: {path} is truncated: {len(raw)} bytes, shorter than the 4-byte magic number")
    zero, type_code, ndim = raw[:2], raw[2], raw[3]
    if zero != b"\x00\x00" or type_code not in IDX_TYPES or ndim == 0:
        raise ValueError(
            f"IDX: {path} has the magic number {raw[:4].hex(' ')}; expected 00 00 <type> <ndim> with type one of "
            f"{', '.join(f'{t:02x}' for t in IDX_TYPES)} and ndim >= 1 (is it an IDX file?)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"IDX: {path} is truncated inside its header: {len(raw)} bytes, expected at least {header} "
                         f"for {ndim} dimensions")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_TYPES[type_code])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise ValueError(f"IDX: {path} is {what}: {len(raw)} bytes, expected {expected} for shape {shape} of {dtype}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
