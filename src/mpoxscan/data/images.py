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
        max_decoded_bytes: most memory decoding one photo may take (``decode_cost``: the
            decoded pixels as Pillow stores them, channels and bit depth counted, plus the
            decoder's own buffers); a photo that needs more is refused from its header with
            ``too_many_pixels``. 320 MiB holds a 50 MP 8-bit RGB PNG or a 12 MP HEIC; a 48 MP
            HEIC or a 7000x7000 16-bit PNG needs more.
        max_side: when set, a larger photo is shrunk to at most this many pixels a side right
            after decoding and *before* any conversion (a JPEG is decoded at libjpeg's reduced
            DCT scale), so 16-bit, float or transparent data is never converted at full size.
    """

    max_bytes: int = 20 * _MIB
    max_pixels: int = 40_000_000
    min_side: int = 1
    max_decoded_bytes: int = 320 * _MIB
    max_side: int | None = None


def image_sha256(data: bytes) -> str:
    """Return the SHA-256 hex digest of a file's bytes (used to find exact duplicates)."""
    return hashlib.sha256(data).hexdigest()


def decode_image(
    source: bytes | str | Path,
    limits: ImageLimits | None = None,
    *,
    min_side: int | None = None,
) -> Image.Image:
    """Decode a photo into an upright RGB image.

    EXIF orientation is applied; grayscale, palette, CMYK, 16-bit and float images are converted
    to 8-bit RGB; transparent pixels are composited on white; animations give their first frame.

    Args:
        source: the file's bytes, or a path to it.
        limits: size bounds; ``ImageLimits()`` when ``None``.
        min_side: reduce the photo by the largest power of two that keeps both sides at least
            this long (:func:`reduction_factor`): a JPEG through libjpeg's DCT scaling
            (``Image.draft``), then any format with a box filter in its own mode, before any
            conversion. It replaces ``limits.max_side``. Photos are read this way by
            :func:`mpoxscan.data.photos.read_photo`, which sets it.

    Returns:
        A fully loaded RGB ``PIL.Image.Image``.

    Raises:
        InvalidImageError: with ``code`` ``empty_file``, ``file_too_large``, ``too_many_pixels``,
            ``not_an_image``, ``truncated_image`` or ``image_too_small``.
        OSError: when ``source`` is a path that cannot be read.
    """
    limits = limits or ImageLimits()
    data = _read_bytes(source, limits)
    img = _open_for_decoding(data, limits, min_side)
    try:
        img.seek(0)
        img.load()
    # pillow_heif raises RuntimeError for a corrupt HEIC (e.g. a damaged size field).
    except (OSError, SyntaxError, EOFError, ValueError, RuntimeError, struct.error) as exc:
        raise _truncated() from exc
    if min_side is not None:
        img = _reduce(img, min_side)
    elif limits.max_side is not None:
        img = _shrink(img, limits.max_side)
    img = _exif_upright(img)
    return _to_rgb(img)


def decode_cost(source: bytes, limits: ImageLimits | None = None) -> int:
    """The bytes of memory ``decode_image(source, limits)`` needs at its peak, from the header.

    Nothing is decoded: the header gives the size and the colour mode. The cost is the decoded
    pixels as Pillow holds them (``_BYTES_PER_PIXEL``: channels and bit depth counted), a
    full-size converted copy for modes that cannot be shrunk as they are (palette, 1-bit,
    16-bit grayscale), the decoder's own frame for HEIF and WebP (decoded outside Pillow, then
    copied), and libjpeg's coefficient buffer for a progressive JPEG. With
    ``limits.max_side`` a JPEG counts at its reduced DCT scale.

    Raises:
        InvalidImageError: what ``decode_image`` would raise from the header.
    """
    limits = limits or ImageLimits()
    _check_file_size(len(source), limits)
    return _cost(_open_for_decoding(source, limits), limits.max_side)


#: Bytes per pixel of each Pillow mode's storage (8-bit RGB is kept in 4 bytes a pixel).
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
#: Modes that are converted (to ``_CONVERT_TO_SHRINK``) at full size before they can be shrunk.
_CONVERT_TO_SHRINK = {"1": "L", "P": "RGBA", "I;16": "I", "I;16B": "I", "I;16L": "I", "I;16N": "I"}
#: Modes Pillow premultiplies by alpha (a full-size copy) before it resamples them.
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA"})
#: Copies of the shrunk photo that its conversion to RGB holds at once (float data: 5).
_CONVERSION_COPIES = 5
#: Formats whose library decodes into a frame of its own that Pillow then copies.
_DECODED_OUTSIDE_PILLOW = frozenset({"HEIF", "WEBP"})


def _cost(img: Image.Image, max_side: int | None) -> int:
    pixels = img.size[0] * img.size[1]
    cost = pixels * _BYTES_PER_PIXEL.get(img.mode, 4)
    if img.mode in _CONVERT_TO_SHRINK or img.mode in _ALPHA_MODES:
        # Converted to a shrinkable mode, or premultiplied by its alpha, while it is resampled.
        cost += pixels * 4
    if img.format in _DECODED_OUTSIDE_PILLOW:
        cost += pixels * 4
    if img.format == "JPEG" and img.info.get("progressive"):
        # libjpeg keeps every DCT coefficient (2 bytes) of the whole file, at full size.
        width, height = getattr(img, "_full_size", img.size)
        cost += int(width * height * 2 * _jpeg_component_share(img))
    if max_side is not None:
        # Conversions to 8-bit RGB of the shrunk photo: a few copies of it at most.
        cost += _CONVERSION_COPIES * 4 * min(pixels, max_side * max_side)
    return cost


def _jpeg_component_share(img: Image.Image) -> float:
    """Coefficients per pixel over all components (3 for 4:4:4 colour, 1.5 for 4:2:0)."""
    layers = getattr(img, "layer", None) or []
    if not layers:
        return float(len(img.getbands()))
    h_max = max(layer[1] for layer in layers)
    v_max = max(layer[2] for layer in layers)
    return sum(layer[1] * layer[2] for layer in layers) / (h_max * v_max)


def _open_for_decoding(
    data: bytes, limits: ImageLimits, min_side: int | None = None
) -> Image.Image:
    """Open the header, check the limits, choose JPEG's reduced scale, check the cost."""
    pillow_heif.register_heif_opener()
    img = _open_checked(data, limits)
    side = min_side if min_side is not None else limits.max_side
    if side is not None and img.format == "JPEG":
        full_size = img.size
        # libjpeg decodes at 1/2, 1/4 or 1/8 scale; draft keeps both sides >= the request.
        img.draft(img.mode, (side, side))
        img._full_size = full_size  # for _cost: the coefficient buffer stays full size
    cost = _cost(img, limits.max_side)
    if cost > limits.max_decoded_bytes:
        width, height = img.size
        raise InvalidImageError(
            f"The image ({width}x{height} pixels, {img.mode}) needs {cost / _MIB:.0f} MiB to "
            f"decode, above the {limits.max_decoded_bytes / _MIB:.0f} MiB limit; export it as "
            "an 8-bit JPEG of at most 4000 pixels on its long side and retry.",
            code="too_many_pixels",
        )
    return img


def _shrink(img: Image.Image, max_side: int) -> Image.Image:
    """Shrink a decoded image to ``max_side`` in its own mode, before any conversion.

    Palette, 1-bit and 16-bit grayscale images cannot be resampled as they are: they become
    RGB(A), L or 32-bit integer first (never float). The EXIF orientation is kept, so the
    photo is turned upright afterwards as before.
    """
    if max(img.size) <= max_side:
        return img
    img = _resizable(img)
    img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return img


def _resizable(img: Image.Image) -> Image.Image:
    """The image in a mode Pillow can resample (never float), its EXIF block kept.

    Palette, 1-bit and 16-bit grayscale images cannot be resampled as they are: they become
    RGB(A), L or 32-bit integer first.
    """
    if img.mode not in _CONVERT_TO_SHRINK:
        return img
    exif = _exif_bytes(img)
    target = _CONVERT_TO_SHRINK[img.mode]
    if img.mode == "P" and "transparency" not in img.info:
        target = "RGB"
    img = img.convert(target)
    if exif:
        img.info["exif"] = exif
    return img


def reduction_factor(size: tuple[int, int], min_side: int) -> int:
    """The largest power of two by which ``size`` may be divided keeping both sides at least
    ``min_side`` (libjpeg's rule for ``Image.draft``, without its 1/8 cap)."""
    fits = min(size) // max(1, min_side)
    factor = 1
    while factor * 2 <= fits:
        factor *= 2
    return factor


def _reduce(img: Image.Image, min_side: int) -> Image.Image:
    """Box-reduce a decoded image by :func:`reduction_factor`, in its own mode (as ``_shrink``).

    Repeated until nothing is left to reduce (libjpeg rounds its reduced sides up), so reducing
    the result again changes nothing.
    """
    if reduction_factor(img.size, min_side) == 1:
        return img
    img = _resizable(img)
    exif = _exif_bytes(img)
    while (factor := reduction_factor(img.size, min_side)) > 1:
        img = img.reduce(factor)
    if exif:
        img.info["exif"] = exif  # reduce() keeps no metadata; the orientation is applied later
    return img


def _exif_bytes(img: Image.Image) -> bytes | None:
    try:
        exif = img.getexif()
        return exif.tobytes() if exif else None
    except (OSError, SyntaxError, ValueError, KeyError, TypeError, struct.error):
        return None


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
