"""decode_image: every supported format and colour mode in, upright 8-bit RGB out; bad files out."""

from __future__ import annotations

import contextlib
import hashlib
import io
import struct
import time
import zlib

import numpy as np
import pillow_heif
import pytest
from PIL import Image

from mpoxscan.data.images import (
    IMAGE_SUFFIXES,
    ImageLimits,
    decode_cost,
    decode_image,
    image_sha256,
)
from mpoxscan.errors import InvalidImageError


def gradient(width: int = 48, height: int = 32) -> Image.Image:
    """An asymmetric RGB image, so flips and rotations are detectable."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


@pytest.mark.parametrize(
    ("fmt", "suffix", "tolerance"),
    [
        ("JPEG", ".jpg", 8),
        ("JPEG", ".jfif", 8),
        ("PNG", ".png", 0),
        ("WEBP", ".webp", 12),
        ("BMP", ".bmp", 0),
        ("TIFF", ".tif", 0),
        ("HEIF", ".heic", 12),
    ],
)
def test_each_format_decodes_to_the_same_rgb_photo(tmp_path, fmt, suffix, tolerance):
    pillow_heif.register_heif_opener()  # so Pillow can write the HEIC test file
    original = gradient()
    path = tmp_path / f"photo{suffix}"
    path.write_bytes(encode(original, fmt, **({"quality": 95} if fmt != "BMP" else {})))

    for source in (path, str(path), path.read_bytes()):
        img = decode_image(source)
        assert img.mode == "RGB"
        assert img.size == original.size
        assert np.abs(pixels(img) - pixels(original)).mean() <= tolerance
    assert suffix in IMAGE_SUFFIXES


def test_exif_rotated_photo_equals_upright_photo():
    upright = gradient(48, 32)
    # Orientation 6: the camera stored the photo turned 90 degrees anticlockwise.
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    png = encode(stored, "PNG", exif=exif)
    jpeg = encode(stored, "JPEG", exif=exif, quality=95)

    assert np.array_equal(pixels(decode_image(png)), pixels(upright))
    from_jpeg = decode_image(jpeg)
    assert from_jpeg.size == upright.size
    assert np.abs(pixels(from_jpeg) - pixels(upright)).mean() < 8


def test_grayscale_and_bilevel_become_gray_rgb():
    gray = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, "L")
    for img in (gray, gray.convert("1")):
        rgb = pixels(decode_image(encode(img, "PNG")))
        expected = pixels(img.convert("L"))
        assert rgb.shape == (8, 8, 3)
        for channel in range(3):
            assert np.array_equal(rgb[..., channel], expected)


def test_palette_image_keeps_its_colours():
    img = gradient().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    assert np.array_equal(pixels(decode_image(encode(img, "PNG"))), pixels(img.convert("RGB")))


def test_palette_transparency_is_composited_on_white():
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    img.putpixel((0, 0), 1)
    out = pixels(decode_image(encode(img, "PNG", transparency=0)))
    assert tuple(out[0, 0]) == (200, 30, 30)
    assert tuple(out[3, 3]) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_white(mode):
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((1, 1), (0, 0, 0, 255))
    rgba.putpixel((2, 2), (0, 0, 0, 128))
    out = pixels(decode_image(encode(rgba.convert(mode), "PNG")))
    assert tuple(out[0, 0]) == (255, 255, 255)  # fully transparent -> white, not black
    assert tuple(out[1, 1]) == (0, 0, 0)
    assert all(abs(v - 127) <= 1 for v in out[2, 2])


def test_cmyk_jpeg_becomes_rgb():
    cyan = Image.new("CMYK", (8, 8), (255, 0, 0, 0))
    out = pixels(decode_image(encode(cyan, "JPEG", quality=100)))
    assert out.shape == (8, 8, 3)
    r, g, b = out[4, 4]
    assert r < 30 and g > 225 and b > 225


def test_16_bit_png_is_scaled_not_clipped():
    values = np.array([[0, 257 * 100], [257 * 200, 65535]], dtype=np.uint16)
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    out = pixels(decode_image(encode(img, "PNG")))
    assert out[..., 0].tolist() == [[0, 100], [200, 255]]


def test_32_bit_integer_tiff_is_scaled():
    img = Image.fromarray(np.array([[0, 257 * 50], [257 * 100, 65535]], dtype=np.int32))
    assert img.mode == "I"
    out = pixels(decode_image(encode(img, "TIFF")))
    assert out[..., 1].tolist() == [[0, 50], [100, 255]]


def test_float_tiff_in_unit_range_is_scaled():
    img = Image.fromarray(np.array([[0.0, 0.5], [0.25, 1.0]], dtype=np.float32))
    assert img.mode == "F"
    out = pixels(decode_image(encode(img, "TIFF")))
    assert out[..., 2].tolist() == [[0, 128], [64, 255]]


def test_animated_gif_gives_its_first_frame():
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    gif = encode(red, "GIF", save_all=True, append_images=[blue], duration=100, loop=0)
    assert Image.open(io.BytesIO(gif)).n_frames == 2
    assert tuple(pixels(decode_image(gif))[4, 4]) == (255, 0, 0)


def test_empty_file(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for source in (empty, b""):
        with pytest.raises(InvalidImageError) as info:
            decode_image(source)
        assert info.value.code == "empty_file"


def test_file_too_large():
    data = encode(gradient(), "PNG")
    with pytest.raises(InvalidImageError) as info:
        decode_image(data, ImageLimits(max_bytes=len(data) - 1))
    assert info.value.code == "file_too_large"
    assert decode_image(data, ImageLimits(max_bytes=len(data))).size == (48, 32)


def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims ``width x height`` pixels."""
    data = bytearray(encode(Image.new("L", (8, 8)), "PNG"))
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize("side", [30_000, 7_000])
def test_too_many_pixels_is_caught_from_the_header_without_decoding(side):
    start = time.perf_counter()
    with pytest.raises(InvalidImageError) as info:
        decode_image(png_header_claiming(side, side))
    assert info.value.code == "too_many_pixels"
    assert time.perf_counter() - start < 0.5  # decoding 49-900 MP would take far longer


def test_pixel_limit_is_configurable():
    data = encode(gradient(48, 32), "PNG")
    with pytest.raises(InvalidImageError) as info:
        decode_image(data, ImageLimits(max_pixels=48 * 32 - 1))
    assert info.value.code == "too_many_pixels"
    assert "48x32" in info.value.message


@pytest.mark.parametrize(
    "content",
    [
        b"just some notes, not a photo\n",
        b"<!DOCTYPE html><html><body><img src='x.jpg'></body></html>",
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>',
        b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n",
        b"P6\n2 2\n255\n" + bytes(12),  # PPM: an image, but not a format mpoxscan accepts
        b"x\n",  # shorter than the 4 bytes a BMP header check reads (was a struct.error)
    ],
)
def test_not_an_image_even_when_named_jpg(tmp_path, content):
    path = tmp_path / "photo.jpg"
    path.write_bytes(content)
    with pytest.raises(InvalidImageError) as info:
        decode_image(path)
    assert info.value.code == "not_an_image"
    assert content.decode("latin-1")[:12] not in info.value.message  # never echo file bytes


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_image(fmt):
    data = encode(gradient(64, 64), fmt)
    with pytest.raises(InvalidImageError) as info:
        decode_image(data[: len(data) // 2])
    assert info.value.code == "truncated_image"


#: The first bytes of every format decode_image accepts (BMP's DIB header size field too).
SIGNATURES = {
    "JPEG": b"\xff\xd8\xff",
    "PNG": b"\x89PNG",
    "GIF": b"GIF8",
    "BMP": b"BM\x00\x00",
    "DIB": b"\x28\x00\x00\x00",
    "TIFF-le": b"II*\x00",
    "TIFF-be": b"MM\x00*",
    "WEBP": b"RIFF",
    "HEIF": b"\x00\x00\x00\x18ftypheic",
}


@pytest.mark.parametrize("name", list(SIGNATURES))
def test_files_of_zero_to_three_bytes_are_refused_with_a_designed_error(name):
    """Shorter than any header: each gets a stable code, never struct.error (issue 17)."""
    signature = SIGNATURES[name]
    for length in range(4):
        for data in {signature[:length], signature[:length] + b"B"[: 3 - length]}:
            with pytest.raises(InvalidImageError) as info:
                decode_image(data)
            expected = "empty_file" if not data else {"not_an_image", "truncated_image"}
            assert info.value.code in expected, (data, info.value.code)


def test_truncations_and_damaged_bytes_of_every_format_give_designed_errors():
    """Every prefix of small files of each format, and copies with bytes flipped, either decode
    or raise InvalidImageError: no decoder error escapes as another exception."""
    rng = np.random.default_rng(17)
    pillow_heif.register_heif_opener()
    for fmt in ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "HEIF"):
        data = encode(gradient(24, 20), fmt)
        variants = [data[:n] for n in range(0, len(data), max(1, len(data) // 150))]
        for _ in range(60):
            damaged = np.frombuffer(data, np.uint8).copy()
            damaged[rng.integers(0, len(data), 4)] = rng.integers(0, 256, 4, dtype=np.uint8)
            variants.append(damaged.tobytes())
        for variant in variants:
            with contextlib.suppress(InvalidImageError):
                decode_image(variant)


def png_of_zeros(width: int, height: int, depth: int, colour: int, channels: int) -> bytes:
    """A valid PNG of zeros written row by row (small on disk, large when decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    row = b"\0" + bytes(width * channels * depth // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_a_photo_whose_decoding_needs_too_much_memory_is_refused_from_its_header():
    """A 7000x7000 16-bit RGBA PNG is about 100 KB but under the pixel limit; decoding it took
    the server from 540 MB to 1,445 MB (issue 17). Its cost is counted before decoding."""
    data = png_of_zeros(7000, 7000, 16, 6, 4)
    limits = ImageLimits(max_bytes=len(data), max_pixels=50_000_000, max_side=2048)
    unlimited = ImageLimits(
        max_bytes=len(data), max_pixels=50_000_000, max_side=2048, max_decoded_bytes=2**40
    )
    # The decoded pixels, the copy premultiplied by alpha while shrinking, the conversions.
    assert decode_cost(data, unlimited) > limits.max_decoded_bytes
    started = time.perf_counter()
    with pytest.raises(InvalidImageError) as info:
        decode_image(data, limits)
    assert info.value.code == "too_many_pixels"
    assert "MiB" in info.value.message
    assert time.perf_counter() - started < 1.0  # from the header, nothing decoded


@pytest.mark.parametrize(
    ("make", "mode"),
    [
        (lambda: png_of_zeros(3000, 2000, 16, 0, 1), "16-bit gray"),
        (lambda: png_of_zeros(3000, 2000, 8, 6, 4), "RGBA"),
        (lambda: encode(gradient(3000, 2000).convert("P"), "PNG"), "palette"),
    ],
    ids=["gray16", "rgba", "palette"],
)
def test_max_side_shrinks_before_any_conversion(make, mode):
    """With max_side, no full-size float or numpy copy is ever made: numpy's allocations
    (traced by tracemalloc) stay at the shrunk size, 100x below a full-size float copy."""
    import tracemalloc

    data = make()
    limits = ImageLimits(max_bytes=len(data), max_pixels=10_000_000, max_side=300)
    tracemalloc.start()
    try:
        image = decode_image(data, limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.mode == "RGB" and max(image.size) == 300, mode
    assert peak < 3000 * 2000 * 4 / 20, (mode, peak)
    assert decode_cost(data, limits) <= limits.max_decoded_bytes


def test_jpeg_is_decoded_at_a_reduced_scale_with_max_side():
    data = encode(gradient(1600, 1200), "JPEG", quality=90)
    full = decode_image(data)
    small = decode_image(data, ImageLimits(max_side=400))
    assert max(small.size) == 400 and small.size[0] / small.size[1] == pytest.approx(4 / 3)
    reference = np.asarray(full.resize(small.size, Image.Resampling.BILINEAR), dtype=np.int16)
    assert np.abs(pixels(small) - reference).mean() < 3
    # At 1/2 scale libjpeg decodes a quarter of the pixels: the cost says so.
    assert decode_cost(data, ImageLimits(max_side=400)) < decode_cost(data, ImageLimits())


def test_image_too_small():
    data = encode(gradient(40, 10), "PNG")
    with pytest.raises(InvalidImageError) as info:
        decode_image(data, ImageLimits(min_side=16))
    assert info.value.code == "image_too_small"
    assert decode_image(data, ImageLimits(min_side=10)).size == (40, 10)


def test_image_sha256_is_the_sha256_of_the_bytes():
    data = encode(gradient(), "PNG")
    assert image_sha256(data) == hashlib.sha256(data).hexdigest()
    assert image_sha256(data) != image_sha256(data + b"\0")
