"""The IDX file format of MNIST and Fashion-MNIST, read and written directly (plain or .gz).

Written by hand rather than with torchvision's `read_sn3_pascalvincent_tensor`: that one reads
only uncompressed files (the Debian package ships .gz), has no writer (the tests write fixtures in
the real format), and fails on a truncated or foreign file with a bare assertion or a reshape error
instead of naming the file.

Layout: 2 zero bytes, a type code, the number of dimensions n, then n big-endian uint32 sizes,
then the data in row-major order, big-endian.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from cnnlab.errors import DataError

# IDX type code -> numpy dtype (big-endian, as the format stores it)
_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in _TYPES.items()}


GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped where it starts with the gzip magic (whatever its suffix)."""
    with open(path, "rb") as f:
        raw = f.read()
    return gzip.decompress(raw) if raw[:2] == GZIP_MAGIC else raw


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file, plain or gzipped, into a tensor of its stored shape and type."""
    path = Path(path)
    try:
        raw = _read_bytes(path)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read IDX file {path}: {e}; replace it with an intact copy") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _TYPES or raw[3] == 0:
        raise DataError(f"{path} is not an IDX file (its first bytes are no IDX header); check the path")
    dtype, ndim = _TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is not an IDX file (its header is cut short); check the path")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"IDX file {path} is truncated or corrupt: {len(raw)} bytes where its header promises {expected}; replace it with an intact copy")
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write `array` as an IDX file (`.gz` by suffix): uint8, int8, int16, int32, float32 or float64."""
    path = Path(path)
    array = np.ascontiguousarray(array)
    code = _CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    data = header + array.astype(_TYPES[code], copy=False).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
