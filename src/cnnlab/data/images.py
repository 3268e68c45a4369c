"""Decoding one image file safely: EXIF orientation, mode conversion, decompression bombs, bad files.

Pillow decodes; torchvision.transforms.v2 resizes and crops. What is ours is the policy: a file that
will not decode raises BadImage with a short reason, so a loader can skip and list it instead of
crashing in the middle of an epoch.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
# The Pillow formats of those suffixes (JPEG's also opens a phone's multi-picture MPO). Only these are decoded:
# Pillow knows dozens more, and some hand the bytes to other programs (EPS to Ghostscript).
FORMATS = ("BMP", "GIF", "JPEG", "PNG", "PPM", "TIFF", "WEBP")
MAX_ASPECT = 100  # for new images (predict, serve), the most one side may exceed the other: a
#                   40,000,000 x 1 "image" resized to a 64-pixel short side would need 2.5 G pixels


class BadImage(Exception):
    """A file that is not a decodable image; the message is the reason, for the skipped-files list."""


class TooManyPixels(BadImage):
    """An image over the pixel limit (refused from its header, before decoding: a decompression bomb)."""


ImageSource = str | Path | bytes  # a file, or a whole file's bytes (an upload)


def check_pixels(
    size: tuple[int, int], max_pixels: int, setting: str = "data.max_pixels", max_aspect: float | None = None
) -> None:
    """Raise TooManyPixels where a (width, height) image has more than `max_pixels` pixels, and
    BadImage where one side is over `max_aspect` times the other (where given)."""
    w, h = size
    if w * h > max_pixels:
        raise TooManyPixels(
            f"{w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} ({setting}): refused as a decompression bomb"
        )
    if max_aspect is not None and (min(w, h) < 1 or max(w, h) > max_aspect * min(w, h)):
        raise BadImage(f"{w}x{h}: one side is over {max_aspect:g} times the other; crop it to the object")


@contextmanager
def decoding(kind: str = "corrupt or truncated", bomb_warning_is_error: bool = True):
    """Pillow's errors while opening or decoding, as BadImage (TooManyPixels for its own bomb check)."""
    try:
        with warnings.catch_warnings():
            # Pillow's notes on a file's damaged metadata ("Corrupt EXIF data", "Tag data larger than
            # file"): the image decodes or fails on its own, and a folder of them would flood the screen
            warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
            # reading sizes only, Pillow's bomb warning is not ours to show: open_image applies the pixel limit
            warnings.simplefilter("error" if bomb_warning_is_error else "ignore", Image.DecompressionBombWarning)
            yield
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise TooManyPixels(f"refused as a decompression bomb ({e})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # truncated or corrupt data
        raise BadImage(f"{kind} ({str(e).strip() or type(e).__name__})") from None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001  hostile bytes reach Pillow's parsers in ways their own errors do not cover:
        # struct.error from a bad EXIF entry (tests/corpus/images), TypeError inside exif_transpose. Whatever
        # its type, a failure while decoding one file is that file's problem: it is skipped or refused, never a crash.
        raise BadImage(f"{kind} ({type(e).__name__}: {str(e).strip()[:120]})") from None


_PILLOW_LIMIT = threading.Lock()
_PILLOW_DEFAULT = Image.MAX_IMAGE_PIXELS  # Pillow's own limit, as it was when cnnlab was imported


@contextmanager
def _pillow_limit(max_pixels: int | None):
    """Pillow's process-wide bomb limit raised to `max_pixels` where that is larger, for the block
    only: Pillow checks it while opening and, for some formats (TIFF), again while loading. Under a
    lock, and put back after, so other code in the process (a notebook's own Pillow use) keeps its
    limit; opens that need no raise take no lock."""
    if max_pixels is None or _PILLOW_DEFAULT is None or max_pixels <= _PILLOW_DEFAULT:
        yield
        return
    with _PILLOW_LIMIT:
        before = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = before


def _open(source: ImageSource) -> Image.Image:
    """Image.open on a file or bytes, only in FORMATS; BadImage for an empty one."""
    if (len(source) if isinstance(source, bytes) else Path(source).stat().st_size) == 0:
        raise BadImage("empty file (0 bytes)")
    return Image.open(io.BytesIO(source) if isinstance(source, bytes) else Path(source), formats=FORMATS)


def open_image(
    source: ImageSource,
    channels: int,
    max_pixels: int,
    setting: str = "data.max_pixels",
    max_aspect: float | None = None,
) -> Image.Image:
    """Decode a file (or its bytes) fully into an 'L' (channels=1) or 'RGB' (channels=3) image,
    upright per EXIF.

    RGBA, LA and palette images with transparency are composited on white first, so transparent
    pixels do not turn black. Raises BadImage for anything that does not decode (or whose sides
    differ over `max_aspect` times), TooManyPixels for an image over `max_pixels` (`setting` names
    the limit in the message).
    """
    with decoding(), _pillow_limit(max_pixels):  # our limit (checked from the header) is the one that counts
        with _open(source) as im:
            check_pixels(im.size, max_pixels, setting, max_aspect)
            im.load()  # decodes now: a truncated file fails here, not in a later epoch
            return upright(im, channels)


def upright(im: Image.Image, channels: int) -> Image.Image:
    """A decoded image turned upright per its EXIF orientation, in the model's mode ('L' or 'RGB')."""
    return _convert(ImageOps.exif_transpose(im) or im, channels)


def _convert(im: Image.Image, channels: int) -> Image.Image:
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        # 16-bit, 32-bit and float grayscale: Pillow's convert("L") clips at 255, so scale to 8 bits
        import numpy as np

        a = np.asarray(im)
        if im.mode.startswith("I;16"):  # in integers and in place: round(a * 255 / 65535) (never a tie)
            a = a.astype(np.uint32)
            a *= 255
            a += 32767
            a //= 65535
        else:  # 32-bit int or float: scaled by the image's own maximum, in float32 and in place
            a = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
            a *= np.float32(255.0 / max(float(a.max()), 1.0))
            np.clip(a, 0, 255, out=a)
            np.rint(a, out=a)
        im = Image.fromarray(a.astype(np.uint8), mode="L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA"):
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im.convert("RGBA"))
    return im.convert("L" if channels == 1 else "RGB")


EXIF_ORIENTATION = 274  # the EXIF tag; values 5 to 8 turn the image by 90 degrees


def header_info(path: str | Path) -> tuple[tuple[int, int], str]:
    """((width, height), mode) from the header alone, cheap, as open_image will return it (EXIF
    orientation applied); raises BadImage where there is no header."""
    with decoding("corrupt", bomb_warning_is_error=False):  # sizes only: open_image applies the pixel limit
        with _open(path) as im:
            w, h = im.size
            turned = im.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
            return ((h, w) if turned else (w, h)), im.mode


def preprocess_transform(steps: Sequence[dict[str, Any]]):
    """torchvision transforms for checked preprocess steps (v2.Resize keeps the aspect for an int)."""
    from torchvision.transforms import v2  # here, not at import: torchvision takes a second to load

    ops = []
    for step in steps:
        ((kind, size),) = step.items()
        size = list(size) if isinstance(size, list) else size
        ops.append(v2.Resize(size, antialias=True) if kind == "resize" else v2.CenterCrop(size))
    return v2.Compose(ops) if ops else v2.Identity()  # Compose refuses an empty list


def output_size(steps: Sequence[dict[str, Any]], size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) after the preprocess steps for an image of (h, w) `size`: torchvision's own answer,
    from running the steps on an empty 1-channel image of that size."""
    if steps and "center_crop" in steps[-1]:  # a crop's output is its size, whatever goes in
        crop = steps[-1]["center_crop"]
        return (crop, crop) if isinstance(crop, int) else (crop[0], crop[-1])
    out = preprocess_transform(steps)(torch.zeros(1, *size, dtype=torch.uint8))
    return tuple(out.shape[-2:])  # type: ignore[return-value]


def to_uint8_tensor(im: Image.Image, transform) -> torch.Tensor:
    """(C, H, W) uint8 after the preprocess transform."""
    from torchvision.transforms.v2.functional import pil_to_tensor

    return transform(pil_to_tensor(im))
