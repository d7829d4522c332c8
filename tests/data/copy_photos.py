"""Photos and disguised copies of them, for the copy-finder tests (no files from outside).

Originals are the photographs that ship with scikit-image; copies are cropped (50-90 % of the
area), rotated (within ±10°), rescaled (0.4-3x), re-encoded (JPEG quality 30-95), mirrored,
colour-jittered and captioned, alone and combined.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

#: scikit-image's bundled photographs (``cat`` is ``chelsea`` again, so it is left out).
PHOTO_NAMES = (
    "astronaut",
    "camera",
    "coffee",
    "chelsea",
    "rocket",
    "coins",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "retina",
    "clock",
    "cell",
    "horse",
    "page",
    "brick",
    "gravel",
)


def original_photos() -> dict[str, Image.Image]:
    """scikit-image's photographs as RGB images, longer side at most 640 px."""
    photos = {}
    for name in PHOTO_NAMES:
        pixels = np.asarray(getattr(skimage.data, name)())
        if pixels.dtype == bool:
            pixels = pixels.astype(np.uint8) * 255
        img = Image.fromarray(pixels).convert("RGB")
        img.thumbnail((640, 640), Image.Resampling.LANCZOS)
        photos[name] = img
    return photos


Edit = Callable[[Image.Image, np.random.Generator], Image.Image]


def crop(img: Image.Image, rng: np.random.Generator, low: float = 0.5, high: float = 0.9):
    """Keep a random window of ``low``-``high`` of the area."""
    area = rng.uniform(low, high)
    aspect = rng.uniform(0.8, 1.25)
    w, h = img.size
    cw = min(w, round(w * np.sqrt(area * aspect)))
    ch = min(h, round(h * area * w / cw))
    x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
    return img.crop((x, y, x + cw, y + ch))


def rotate(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotate within ±10° and cut away the corners the rotation leaves empty."""
    angle = rng.uniform(-10, 10)
    w, h = img.size
    turned = img.rotate(angle, Image.Resampling.BICUBIC)
    cut = np.sin(np.radians(abs(angle)))
    dx, dy = round(h * cut / 2) + 1, round(w * cut / 2) + 1
    return turned.crop((dx, dy, w - dx, h - dy))


def rescale(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Resize by 0.4-3x (at least 64 px on the shorter side)."""
    factor = rng.uniform(0.4, 3.0)
    w, h = img.size
    factor = max(factor, 64 / min(w, h))
    return img.resize((round(w * factor), round(h * factor)), Image.Resampling.BICUBIC)


def jpeg(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Re-encode as JPEG at quality 30-95."""
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=int(rng.integers(30, 96)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def mirror(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Left-right mirror image."""
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def colour(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast and saturation each changed by up to ±30 %."""
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhancer(img).enhance(rng.uniform(0.7, 1.3))
    return img


def caption(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A white caption bar with text over the bottom or top of the photo."""
    img = img.copy()
    w, h = img.size
    bar = max(12, h // 8)
    top = 0 if rng.random() < 0.5 else h - bar
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, top, w, top + bar), fill=(255, 255, 255))
    font = ImageFont.load_default(size=max(10, bar * 2 // 3))
    draw.text((4, top + 2), "Case report, figure 2 ©", fill=(0, 0, 0), font=font)
    return img


#: Each kind of copy the tests make, alone and combined (applied left to right).
RECIPES: dict[str, tuple[Edit, ...]] = {
    "crop": (crop,),
    "rotate": (rotate,),
    "scale": (rescale,),
    "jpeg": (jpeg,),
    "mirror": (mirror,),
    "colour": (colour,),
    "caption": (caption,),
    "crop+scale+jpeg": (crop, rescale, jpeg),
    "crop+rotate+mirror": (crop, rotate, mirror, jpeg),
    "crop+colour+caption": (crop, colour, caption, jpeg),
    "everything": (crop, rotate, rescale, mirror, colour, caption, jpeg),
}


def make_copy(img: Image.Image, recipe: str, seed: int) -> Image.Image:
    """A copy of ``img`` made by ``RECIPES[recipe]``, deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    for edit in RECIPES[recipe]:
        img = edit(img, rng)
    return img


def write_copies(folder: Path, per_photo: int = 4) -> list[tuple[str, str]]:
    """Write every original and ``per_photo`` copies of it in ``folder/Photos``.

    The recipes go round: each original gets the next ``per_photo`` of ``RECIPES``, so every
    recipe is used about equally often and no photo has more copies than the finder's ``top_k``.
    File ``<photo>_0.jpg`` is an original, ``<photo>-<recipe>_<k>.jpg`` a copy of it (the photo
    group is the stem up to its first ``_``, so an original and its copies share none).

    Returns:
        ``(original file name, copy file name)`` of every copy written.
    """
    out = folder / "Photos"
    out.mkdir(parents=True, exist_ok=True)
    recipes = list(RECIPES)
    made = []
    for n, (full_name, img) in enumerate(original_photos().items()):
        name = full_name.replace("_", "")
        img.save(out / f"{name}_0.jpg", quality=92)
        for k in range(per_photo):
            recipe = recipes[(n * per_photo + k) % len(recipes)]
            copy_name = f"{name}-{recipe}_{k + 1}.jpg"
            make_copy(img, recipe, seed=n * 100 + k).save(out / copy_name, quality=92)
            made.append((f"{name}_0.jpg", copy_name))
    return made
