"""Decoding one image file safely: EXIF orientation, mode conversion, decompression bombs, bad files.

Pillow decodes; torchvision.transforms.v2 resizes and crops. What is ours is the policy: a file that
will not decode raises BadImage with a short reason, so a loader can skip and list it instead of
crashing in the middle of an epoch.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import v2

from cnnlab.errors import ConfigError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}


class BadImage(Exception):
    """A file that is not a decodable image; the message is the reason, for the skipped-files list."""


def open_image(path: str | Path, channels: int, max_pixels: int) -> Image.Image:
    """Decode `path` fully into an 'L' (channels=1) or 'RGB' (channels=3) image, upright per EXIF.

    RGBA, LA and palette images with transparency are composited on white first, so transparent
    pixels do not turn black. Raises BadImage for anything that does not decode.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImage("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise BadImage(f"{w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} (data.max_pixels): refused as a decompression bomb")
                im.load()  # decodes now: a truncated file fails here, not in a later epoch
                im = ImageOps.exif_transpose(im) or im
                return _convert(im, channels)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"refused as a decompression bomb ({e})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # truncated or corrupt data
        raise BadImage(f"corrupt or truncated ({str(e).strip() or type(e).__name__})") from None


def _convert(im: Image.Image, channels: int) -> Image.Image:
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
    try:
        if Path(path).stat().st_size == 0:
            raise BadImage("empty file (0 bytes)")
        with Image.open(path) as im:
            w, h = im.size
            turned = im.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
            return ((h, w) if turned else (w, h)), im.mode
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image Pillow can read") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"refused as a decompression bomb ({e})") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise BadImage(f"corrupt ({str(e).strip() or type(e).__name__})") from None


_STEPS = {"resize": v2.Resize, "center_crop": v2.CenterCrop}


def preprocess_transform(steps: Sequence[dict[str, Any]]) -> v2.Transform:
    """torchvision transforms for the recipe's `preprocess` steps, e.g. [{resize: 256}, {center_crop: 224}].

    resize: an int resizes the shorter side (keeping the aspect), [h, w] resizes exactly.
    """
    ops = []
    for step in steps:
        if not isinstance(step, dict) or len(step) != 1 or next(iter(step)) not in _STEPS:
            raise ConfigError(f"data.preprocess step {step!r} is not one of: {', '.join(f'{{{k}: SIZE}}' for k in _STEPS)}")
        (kind, size), = step.items()
        if isinstance(size, list):
            size = [int(v) for v in size]
        ops.append(_STEPS[kind](size, antialias=True) if kind == "resize" else _STEPS[kind](size))
    return v2.Compose(ops) if ops else v2.Identity()  # Compose refuses an empty list


def output_size(steps: Sequence[dict[str, Any]], size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) after the preprocess steps for an image of (h, w) `size`."""
    h, w = size
    for step in steps:
        (kind, s), = step.items()
        if kind == "center_crop" or isinstance(s, list):
            h, w = (s, s) if isinstance(s, int) else (s[0], s[-1])
        else:  # resize the shorter side to s, keeping the aspect ratio (torchvision's rule)
            short, long = (h, w) if h <= w else (w, h)
            new_long = int(s * long / short)
            h, w = (s, new_long) if h <= w else (new_long, s)
    return h, w


def to_uint8_tensor(im: Image.Image, transform: v2.Transform) -> torch.Tensor:
    """(C, H, W) uint8 after the preprocess transform."""
    return transform(v2.functional.pil_to_tensor(im))
