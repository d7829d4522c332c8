"""Decoding photos safely: any common format and colour mode in, an upright RGB image out."""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError

from mpoxscan.errors import InvalidImageError

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff", ".heic", ".heif"}
)

#: Pillow format names we let Pillow try. Restricting them keeps the many exotic decoders
#: (and their bugs) away from uploads, and stops text files being read as PPM or XPM images.
#: (Phone JPEGs that Pillow reads as MPO open through JPEG.) GIF gives its first frame.
_ALLOWED_FORMATS: tuple[str, ...] = (
    "JPEG",
    "PNG",
    "WEBP",
    "BMP",
    "DIB",
    "TIFF",
    "GIF",
    "HEIF",
)

_MIB = 1024 * 1024


@dataclass(frozen=True)
class ImageLimits:
    """Bounds an image must be within before mpoxscan decodes it.

    Attributes:
        max_bytes: largest file accepted; phone photos are 2-8 MiB, so 20 MiB leaves room.
        max_pixels: largest width x height accepted (40 MP covers every phone camera) and the
            guard against decompression bombs: it is checked from the header, before decoding.
        min_side: smallest width or height accepted, in pixels.
    """

    max_bytes: int = 20 * _MIB
    max_pixels: int = 40_000_000
    min_side: int = 1


def image_sha256(data: bytes) -> str:
    """Return the SHA-256 hex digest of a file's bytes (used to find exact duplicates)."""
    return hashlib.sha256(data).hexdigest()


def decode_image(source: bytes | str | Path, limits: ImageLimits | None = None) -> Image.Image:
    """Decode a photo into an upright RGB image.

    EXIF orientation is applied; grayscale, palette, CMYK, 16-bit and float images are converted
    to 8-bit RGB; transparent pixels are composited on white; animations give their first frame.

    Args:
        source: the file's bytes, or a path to it.
        limits: size bounds; ``ImageLimits()`` when ``None``.

    Returns:
        A fully loaded RGB ``PIL.Image.Image``.

    Raises:
        InvalidImageError: with ``code`` ``empty_file``, ``file_too_large``, ``too_many_pixels``,
            ``not_an_image``, ``truncated_image`` or ``image_too_small``.
        OSError: when ``source`` is a path that cannot be read.
    """
    limits = limits or ImageLimits()
    data = _read_bytes(source, limits)
    pillow_heif.register_heif_opener()
    img = _open_checked(data, limits)
    try:
        img.seek(0)
        img.load()
    # pillow_heif raises RuntimeError for a corrupt HEIC (e.g. a damaged size field).
    except (OSError, SyntaxError, EOFError, ValueError, RuntimeError, struct.error) as exc:
        raise _truncated() from exc
    img = _exif_upright(img)
    return _to_rgb(img)


def _read_bytes(source: bytes | str | Path, limits: ImageLimits) -> bytes:
    """Take the bytes, or read the file after checking its size so a huge file is never read."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        _check_file_size(len(data), limits)
        return data
    path = Path(source)
    _check_file_size(path.stat().st_size, limits)
    return path.read_bytes()


def _check_file_size(size: int, limits: ImageLimits) -> None:
    if size == 0:
        raise InvalidImageError(
            "The file is empty (0 bytes); choose the photo again.", code="empty_file"
        )
    if size > limits.max_bytes:
        raise InvalidImageError(
            f"The file is {size / _MIB:.1f} MiB, above the {limits.max_bytes / _MIB:.0f} MiB "
            "limit; export a smaller JPEG of the photo.",
            code="file_too_large",
        )


def _open_checked(data: bytes, limits: ImageLimits) -> Image.Image:
    """Open the image lazily (header only) and enforce the pixel and side limits."""
    try:
        # Our own max_pixels check below replaces Pillow's warning; its hard error still applies.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=_ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise _too_many_pixels(None, limits) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error) as exc:
        if _has_image_signature(data):
            raise _truncated() from exc
        raise InvalidImageError(
            "The file is not a photo mpoxscan can read; upload a JPEG, PNG, WebP, BMP, TIFF or "
            "HEIC image.",
            code="not_an_image",
        ) from exc
    width, height = img.size
    if width * height > limits.max_pixels:
        raise _too_many_pixels((width, height), limits)
    if min(width, height) < limits.min_side:
        raise InvalidImageError(
            f"The image is {width}x{height} pixels; each side must be at least "
            f"{limits.min_side} pixels. Use a larger, closer photo of the lesion.",
            code="image_too_small",
        )
    return img


def _has_image_signature(data: bytes) -> bool:
    """Whether the first bytes are those of an allowed format (so a failure means corruption)."""
    prefix = data[:16]
    for name in _ALLOWED_FORMATS:
        accept = Image.OPEN.get(name, (None, None))[1]
        try:
            if accept is not None and accept(prefix):
                return True
        except (struct.error, IndexError, ValueError):
            # Some checks unpack a fixed-size field (BMP/DIB read 4 bytes): a file of 1 to 3
            # bytes is shorter than that, so it cannot be that format.
            continue
    return False


def _truncated() -> InvalidImageError:
    return InvalidImageError(
        "The image file is truncated or corrupt and cannot be decoded; "
        "copy or export the photo again and retry.",
        code="truncated_image",
    )


def _too_many_pixels(size: tuple[int, int] | None, limits: ImageLimits) -> InvalidImageError:
    shown = f"{size[0]}x{size[1]} pixels" if size else "more pixels than Pillow allows"
    return InvalidImageError(
        f"The image has {shown}, above the limit of {limits.max_pixels:,} pixels; "
        "resize the photo (e.g. to 4000 pixels on its long side) and retry.",
        code="too_many_pixels",
    )


def _exif_upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a photo whose EXIF block is broken is used as stored."""
    try:
        return ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError, struct.error):
        return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_rgb(img)
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise InvalidImageError(
            f"The image uses the {mode} colour mode, which mpoxscan cannot convert; "
            "export it as an RGB JPEG or PNG.",
            code="not_an_image",
        ) from exc


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """Scale a 16-bit, 32-bit or float grayscale image to 8 bits and make it RGB.

    16-bit data is divided by 257 (65535 -> 255). A 32-bit integer image is read as 8-bit when its
    values fit 0-255 and as 16-bit when they fit 0-65535; a float image as 0-1 when it fits;
    anything else is stretched from its minimum to its maximum.
    """
    values = np.asarray(img, dtype=np.float32)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if img.mode.startswith("I;16"):
        scaled = values / 257.0
    elif img.mode == "F" and low >= 0.0 and high <= 1.0:
        scaled = values * 255.0
    elif img.mode == "I" and low >= 0.0 and high <= 255.0:
        scaled = values
    elif img.mode == "I" and low >= 0.0 and high <= 65535.0:
        scaled = values / 257.0
    else:
        scaled = (values - low) * (255.0 / (high - low)) if high > low else values * 0.0
    gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")
