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
import math
import os
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
# The largest array a header may claim: 16 GiB (Fashion-MNIST's training images are 47 MB). A claim
# beyond it is refused before anything is read or allocated.
MAX_IDX_BYTES = 1 << 34


class _Gunzip:
    """read(n) of a gzip file's contents, inflated by zlib from 1 MiB pieces of the file at a time.

    Written by hand rather than with gzip.GzipFile: GzipFile inflates in pieces of a few kB, each a
    call that takes and gives back the GIL, and in a run the GIL is wanted meanwhile by the thread that
    imports torch._dynamo (run._import_dynamo_meanwhile): Fashion-MNIST's training images then took
    2.4 s to read instead of 0.5 s. A 1 MiB piece is one call, the GIL released throughout. zlib
    checks each member's CRC and length (wbits 31), and a file of several members (concatenated
    .gz files, zero bytes of padding between or after them) reads as GzipFile reads it."""

    PIECE = 1 << 20

    def __init__(self, file) -> None:
        self.file = file
        self.inflate = zlib.decompressobj(31)

    def read(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            d = self.inflate
            if d.eof:  # the end of a member: another may follow, after zero bytes of padding (as GzipFile reads it)
                rest = d.unused_data.lstrip(b"\0")
                while not rest:
                    more = self.file.read(self.PIECE)
                    if not more:
                        break
                    rest = more.lstrip(b"\0")
                if not rest:  # the end of the file
                    break
                self.inflate = d = zlib.decompressobj(31)
                out += d.decompress(rest, n - len(out))
                continue
            data = d.unconsumed_tail or self.file.read(self.PIECE)
            if not data:
                raise EOFError("the gzip stream ends before its end-of-stream marker")
            out += d.decompress(data, n - len(out))  # at most what is asked: memory follows the data read
        return bytes(out)


def _read_up_to(stream, n: int, chunk: int = 64 << 20) -> bytes:
    """Up to `n` bytes of `stream`, read 64 MiB at a time: memory grows with the data that is there,
    not with what a header claims (read(n) allocates n bytes first)."""
    buf = bytearray()
    while len(buf) < n:
        part = stream.read(min(chunk, n - len(buf)))
        if not part:
            break
        buf += part
    return bytes(buf)


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file, plain or gzipped (by its first bytes, whatever its suffix), into a tensor of
    its stored shape and type.

    The header is read first, from the (decompressing) stream, and its sizes are multiplied in
    Python integers: a file that is not IDX is refused after 4 bytes, not after gunzipping all of it,
    and a claimed shape whose product overflows 64 bits cannot pass the length check. Then exactly
    the promised bytes are read, so memory never exceeds the data that is there, up to the claim."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            gz = file.read(2) == GZIP_MAGIC
            file.seek(0)
            stream = _Gunzip(file) if gz else file
            head = stream.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _TYPES or head[3] == 0:
                raise DataError(f"{path} is not an IDX file (its first bytes are no IDX header); check the path")
            dtype, ndim = _TYPES[head[2]], head[3]
            sizes = stream.read(4 * ndim)
            if len(sizes) < 4 * ndim:
                raise DataError(f"{path} is not an IDX file (its header is cut short); check the path")
            shape = tuple(int.from_bytes(sizes[4 * i : 4 * i + 4], "big") for i in range(ndim))
            expected = math.prod(shape) * dtype.itemsize
            if expected > MAX_IDX_BYTES:
                raise DataError(
                    f"IDX file {path} claims a {'x'.join(map(str, shape))} array ({expected:,} bytes), "
                    f"over the {MAX_IDX_BYTES >> 30} GiB cnnlab reads; it is corrupt or not a dataset"
                )
            size = os.fstat(file.fileno()).st_size
            if not gz and size != 4 + 4 * ndim + expected:  # a plain file must hold what it claims, before it is read
                raise DataError(
                    f"IDX file {path} is truncated or corrupt: {size:,} bytes where its header promises "
                    f"{4 + 4 * ndim + expected:,}; replace it with an intact copy"
                )
            data = _read_up_to(stream, expected)
            extra = stream.read(1)
    except MemoryError:
        raise DataError(
            f"IDX file {path} claims more than this machine's memory holds; it is corrupt or too large"
        ) from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read IDX file {path}: {e}; replace it with an intact copy") from None
    if len(data) != expected or extra:
        found = f"{len(data) + len(head) + len(sizes)} bytes" if not extra else "more bytes"
        raise DataError(
            f"IDX file {path} is truncated or corrupt: {found} where its header promises "
            f"{expected + len(head) + len(sizes)}; replace it with an intact copy"
        )
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
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
