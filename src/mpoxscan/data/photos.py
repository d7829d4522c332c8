"""The one way mpoxscan reads a photo for a model: training, evaluation, batch, web and API.

A phone photo has 10-50 times the pixels a 224-px model sees. :func:`read_photo` decodes a
JPEG at a reduced DCT scale (libjpeg's 1/2, 1/4 or 1/8, several times faster than a full
decode) and shrinks any other format by the same power of two with a box filter, so the
photo's shorter side stays at least ``READ_SCALE`` times the model's input side; then
:func:`photo_pixels` resizes it to the input like every other path. Because every path reads
photos through these functions, a photo gets the same pixels, and so the same probability,
whichever way it takes.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from mpoxscan.data.images import ImageLimits, decode_image
from mpoxscan.data.images import reduction_factor as _factor
from mpoxscan.data.preprocessing import as_rgb, resize_image

#: A photo is read at the smallest power-of-two reduction whose shorter side is still at least
#: this many times the model's input side. Chosen by measurement (benchmarks/speed.md,
#: ``benchmarks/read_scale.py``): probabilities of 1 agree with a full decode as closely as
#: those of 2 and 4 on phone-sized photos, and 1 decodes fastest.
READ_SCALE = 1

#: The EXIF tag that says how the camera was turned.
EXIF_ORIENTATION = 0x0112


def reduction_factor(size: tuple[int, int], input_size: int, scale: int = READ_SCALE) -> int:
    """The largest power of two by which a photo of ``size`` may be shrunk.

    The rule is libjpeg's (``Image.draft``): both sides divided by the factor stay at least
    ``scale * input_size``.

    Args:
        size: ``(width, height)`` of the photo.
        input_size: the model's input side.
        scale: ``READ_SCALE``.

    Returns:
        1, 2, 4, 8, ... (1: read as it is).
    """
    return _factor(size, max(1, scale * input_size))


def reduce_photo(image: Image.Image, input_size: int, scale: int = READ_SCALE) -> Image.Image:
    """Shrink a decoded photo by :func:`reduction_factor` with a box filter (RGB out).

    It is what libjpeg's DCT scaling does to a JPEG, so a photo given to the Python API as a
    ``PIL.Image`` is read (nearly) as its file would be; an EXIF orientation that
    ``Image.open`` left pending is applied first. Applying it twice changes nothing.

    Args:
        image: a decoded photo.
        input_size: the model's input side.
        scale: ``READ_SCALE``.

    Returns:
        The reduced RGB photo (the photo itself when there is nothing to reduce).
    """
    image = as_rgb(_upright(image))
    while (factor := reduction_factor(image.size, input_size, scale)) > 1:
        image = image.reduce(factor)
    return image


def read_photo(
    source: bytes | str | Path | Image.Image,
    input_size: int,
    limits: ImageLimits | None = None,
    *,
    scale: int = READ_SCALE,
) -> Image.Image:
    """Read a photo as mpoxscan's models see it, at a reduced size.

    EXIF orientation is applied and any colour mode becomes RGB
    (:func:`~mpoxscan.data.images.decode_image`); a JPEG is decoded at a reduced DCT scale
    and any photo is then reduced with :func:`reduce_photo`, so its shorter side stays at
    least ``scale * input_size`` (smaller photos are read in full).

    Args:
        source: the file's bytes, a path to it, or an image (its EXIF orientation is applied
            when ``Image.open`` left it pending).
        input_size: the model's input side (the bundle's ``preprocessing.image_size``).
        limits: decoding limits; ``ImageLimits()`` when ``None``.
        scale: ``READ_SCALE``; other values are for benchmarks.

    Returns:
        An upright RGB image.

    Raises:
        InvalidImageError: the file cannot be decoded (see ``decode_image``).
        OSError: ``source`` is a path that cannot be read.
    """
    if isinstance(source, Image.Image):
        return reduce_photo(source, input_size, scale)
    # decode_image reduces (DCT scaling for a JPEG, a box filter in the photo's own mode for
    # the rest) before converting to RGB; reduce_photo then has nothing left to do.
    image = decode_image(source, limits, min_side=max(1, scale * input_size))
    return reduce_photo(image, input_size, scale)


def _upright(image: Image.Image) -> Image.Image:
    """Apply an EXIF orientation still pending on a PIL image (``Image.open`` leaves it)."""
    try:
        if image.getexif().get(EXIF_ORIENTATION, 1) in (1, None):
            return image
        return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError, struct.error):
        return image  # a broken EXIF block: used as stored, as decode_image does


def photo_pixels(image: Image.Image, input_size: int, scale: int = READ_SCALE) -> np.ndarray:
    """The model input of a photo: reduced as :func:`read_photo` does, resized, uint8 HWC.

    Args:
        image: a photo from :func:`read_photo` (or any decoded image).
        input_size: the model's input side.
        scale: ``READ_SCALE``.

    Returns:
        ``(input_size, input_size, 3)`` uint8 RGB array.
    """
    reduced = reduce_photo(image, input_size, scale)
    return np.asarray(resize_image(reduced, input_size), dtype=np.uint8)
