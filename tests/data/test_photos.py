"""read_photo: reduced JPEG decoding, the same reduction for other formats, EXIF, idempotence."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mpoxscan.data.images import decode_image
from mpoxscan.data.photos import photo_pixels, read_photo, reduce_photo, reduction_factor
from mpoxscan.errors import InvalidImageError

from testdata import make_lesion_photo


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def phone_photo(width: int = 1000, height: int = 750) -> Image.Image:
    return make_lesion_photo(True, seed=3, size=200).resize((width, height), Image.BICUBIC)


@pytest.mark.parametrize(
    ("size", "input_size", "scale", "factor"),
    [
        ((1000, 750), 64, 1, 8),  # 750 // 64 = 11: the largest power of two below is 8
        ((1000, 750), 64, 2, 4),  # 750 // 128 = 5
        ((4000, 3000), 224, 1, 8),
        ((4000, 3000), 224, 2, 4),
        ((447, 900), 224, 1, 1),  # the shorter side must stay >= 224
        ((448, 448), 224, 1, 2),
        ((224, 224), 224, 1, 1),
        ((20, 20), 224, 1, 1),
        ((8000, 6000), 224, 1, 16),  # no cap: a box reduce can go past libjpeg's 1/8
    ],
)
def test_reduction_factor_keeps_the_shorter_side_at_least_scale_times_the_input(
    size, input_size, scale, factor
):
    assert reduction_factor(size, input_size, scale) == factor
    assert min(size) // factor >= min(min(size), scale * input_size)


def test_a_large_jpeg_is_decoded_at_a_reduced_dct_scale():
    data = encode(phone_photo(), "JPEG", quality=92)
    image = read_photo(data, 64)
    # 1/8 DCT scale of 1000x750: libjpeg rounds up.
    assert image.size == (125, 94) and image.mode == "RGB"
    with Image.open(io.BytesIO(data)) as reference:
        reference.draft("RGB", (64, 64))
        assert np.array_equal(np.asarray(image), np.asarray(reference.convert("RGB")))
    # Close to a full decode shrunk the same way (DCT scaling is a box-like low-pass filter).
    full = np.asarray(decode_image(data).reduce(8), np.float32)
    assert np.abs(np.asarray(image, np.float32) - full).mean() < 3


def test_other_formats_are_decoded_in_full_then_reduced_by_the_same_factor():
    photo = phone_photo()
    image = read_photo(encode(photo, "PNG"), 64)
    assert image.size == (125, 94)
    assert np.array_equal(np.asarray(image), np.asarray(photo.reduce(8)))


def test_small_photos_are_read_as_they_are():
    photo = make_lesion_photo(False, seed=1, size=100)
    data = encode(photo, "PNG")
    assert np.array_equal(np.asarray(read_photo(data, 64)), np.asarray(decode_image(data)))


def test_exif_orientation_is_applied_to_the_reduced_photo():
    upright = phone_photo(1000, 750)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned 90 degrees anticlockwise
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    image = read_photo(encode(stored, "JPEG", exif=exif, quality=95), 64)
    assert image.size == (125, 94)
    expected = np.asarray(upright.reduce(8), np.float32)
    assert np.abs(np.asarray(image, np.float32) - expected).mean() < 4


def test_reading_is_idempotent_and_pil_images_are_reduced_alike():
    data = encode(phone_photo(), "JPEG", quality=92)
    image = read_photo(data, 64)
    assert reduce_photo(image, 64) is image or np.array_equal(
        np.asarray(reduce_photo(image, 64)), np.asarray(image)
    )
    assert np.array_equal(photo_pixels(image, 64), np.asarray(image.resize((64, 64), 2)))
    # A full decode given as a PIL image (the Python API) goes through the same reduction.
    from_pil = read_photo(decode_image(data), 64)
    assert from_pil.size == image.size
    assert np.abs(np.asarray(from_pil, np.float32) - np.asarray(image, np.float32)).mean() < 3


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_every_scale_gives_a_photo_of_at_least_scale_times_the_input(scale):
    for width, height in ((1600, 1200), (1200, 1600), (700, 300)):
        image = read_photo(encode(phone_photo(width, height), "JPEG"), 64, scale=scale)
        assert min(image.size) >= min(64 * scale, width, height)
        assert min(image.size) < 2 * 64 * scale or min(width, height) < 2 * 64 * scale


def test_the_decoders_errors_come_through():
    with pytest.raises(InvalidImageError) as info:
        read_photo(b"not a photo at all", 64)
    assert info.value.code == "not_an_image"
