"""Text that came from the file system, made safe to print, log and put in JSON.

Python decodes a file name that is not UTF-8 with surrogate escapes (os.fsdecode): `caf\udce9.png`
for the Latin-1 bytes of "café.png". Such a string cannot be encoded as UTF-8, so writing it to
log.txt, a terminal, JSON for a browser or a hash raises UnicodeEncodeError, far from where it came
in. `printable` turns each undecodable byte into a visible `\\xe9`, the same way every time.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """`text` with each surrogate-escaped byte written as `\\xNN` (unchanged if it is proper UTF-8)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte (possible in Windows names)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def fs_bytes(text: str) -> bytes:
    """The bytes the file system holds for a name or path (for hashing: exact, never an error)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")
