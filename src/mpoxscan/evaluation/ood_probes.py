"""Pictures that are not photos of skin, to check that the out-of-domain detector refuses them.

People upload whatever is at hand: a screenshot, a page of a letter, a drawing, a pet, noise
from a broken camera. :func:`non_skin_probes` makes such pictures without any download:
generated noise, rendered screenshots and text pages (Pillow's bundled font), line drawings,
and the sample photos that ship inside scikit-image (animals, objects, people, a microscope
slide). The tests and ``benchmarks/ood_sources.py`` use them.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: scikit-image samples bundled with the package (no download), by what they show.
SKIMAGE_SAMPLES: dict[str, str] = {
    "astronaut": "person",
    "camera": "person",
    "chelsea": "animal",
    "cat": "animal",
    "horse": "animal",
    "coffee": "object",
    "rocket": "object",
    "stereo_motorcycle": "object",
    "coins": "object",
    "clock": "object",
    "hubble_deep_field": "space",
    "immunohistochemistry": "microscopy",
    "brick": "texture",
    "gravel": "texture",
}

_WORDS = [
    "mpox",
    "screening",
    "result",
    "privacy",
    "upload",
    "photo",
    "model",
    "card",
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "report",
    "patient",
    "data",
    "cross",
    "validation",
    "threshold",
    "sensitivity",
    "specificity",
    "interval",
    "source",
    "healthy",
    "skin",
]


def non_skin_probes(seed: int = 0, size: int = 512) -> dict[str, list[Image.Image]]:
    """Non-skin pictures by kind: ``noise``, ``screenshot``, ``text``, ``drawing``, ``photo``.

    Args:
        seed: the same seed gives the same pictures.
        size: side of the generated pictures (the scikit-image photos keep their size).

    Returns:
        ``{kind: [RGB images]}``; ``photo`` holds the scikit-image samples in the order of
        :data:`SKIMAGE_SAMPLES`.
    """
    rng = np.random.default_rng(seed)
    return {
        "noise": noise_images(rng, size),
        "screenshot": [screenshot(rng, size, dark=dark) for dark in (False, True, False)],
        "text": [text_page(rng, size) for _ in range(2)],
        "drawing": [drawing(rng, size) for _ in range(3)],
        "photo": skimage_photos(),
    }


def noise_images(rng: np.random.Generator, size: int) -> list[Image.Image]:
    """Uniform noise, Gaussian grey noise, and coloured blocks."""
    uniform = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    grey = np.clip(rng.normal(128, 50, (size, size, 1)), 0, 255).astype(np.uint8).repeat(3, 2)
    blocks = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    blocky = Image.fromarray(blocks, "RGB").resize((size, size), Image.Resampling.NEAREST)
    return [Image.fromarray(uniform, "RGB"), Image.fromarray(grey, "RGB"), blocky]


def screenshot(rng: np.random.Generator, size: int, *, dark: bool = False) -> Image.Image:
    """A web page as a screenshot: a header bar, headings, paragraphs, a button, a form."""
    background, ink = ((24, 26, 30), (230, 230, 230)) if dark else ((250, 250, 250), (29, 29, 31))
    img = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(img)
    accent = tuple(int(v) for v in rng.integers(20, 200, 3))
    draw.rectangle([0, 0, size, size // 10], fill=accent)
    draw.text((12, size // 40), "mpoxscan", fill=(255, 255, 255), font=_font(size // 20))
    y = size // 8
    while y < size - 40:
        if rng.random() < 0.2:
            draw.rounded_rectangle([16, y, 16 + size // 3, y + 28], radius=6, fill=accent)
            draw.text((26, y + 6), "Upload photos", fill=(255, 255, 255), font=_font(14))
            y += 44
        elif rng.random() < 0.2:
            draw.rectangle([16, y, size - 16, y + 26], outline=ink, width=1)
            y += 40
        else:
            draw.text((16, y), _sentence(rng, 9), fill=ink, font=_font(18 if y < size // 4 else 13))
            y += 22
    return img


def text_page(rng: np.random.Generator, size: int) -> Image.Image:
    """A page of a letter or article: black text on off-white paper."""
    img = Image.new("RGB", (size, size), (246, 244, 238))
    draw = ImageDraw.Draw(img)
    for line, y in enumerate(range(20, size - 20, 18)):
        width = 10 if line % 7 else 6
        draw.text((24, y), _sentence(rng, width), fill=(20, 20, 20), font=_font(13))
    return img


def drawing(rng: np.random.Generator, size: int) -> Image.Image:
    """A line drawing: a house, a sun and a stick figure, or coloured shapes, on white."""
    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    s = size
    colour = tuple(int(v) for v in rng.integers(0, 200, 3))
    draw.rectangle([s * 0.15, s * 0.5, s * 0.5, s * 0.85], outline=colour, width=4)
    draw.polygon([(s * 0.12, s * 0.5), (s * 0.325, s * 0.3), (s * 0.53, s * 0.5)], outline=colour)
    draw.ellipse([s * 0.7, s * 0.08, s * 0.9, s * 0.28], outline=(230, 180, 0), width=4)
    head = (s * 0.72, s * 0.45)
    draw.ellipse([head[0] - 20, head[1] - 20, head[0] + 20, head[1] + 20], outline=(0, 0, 0))
    draw.line([head[0], head[1] + 20, head[0], s * 0.75], fill=(0, 0, 0), width=3)
    draw.line([head[0] - 40, s * 0.6, head[0] + 40, s * 0.6], fill=(0, 0, 0), width=3)
    for dx in (-30, 30):
        draw.line([head[0], s * 0.75, head[0] + dx, s * 0.9], fill=(0, 0, 0), width=3)
    for _ in range(int(rng.integers(3, 8))):
        x, y = rng.integers(0, s, 2)
        r = int(rng.integers(10, 40))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.rectangle([x - r, y - r, x + r, y + r], outline=fill, width=3)
    return img


def skimage_photos() -> list[Image.Image]:
    """The scikit-image sample photos of :data:`SKIMAGE_SAMPLES`, as RGB images."""
    from skimage import data

    photos = []
    for name in SKIMAGE_SAMPLES:
        loaded = getattr(data, name)()
        array = np.asarray(loaded[0] if isinstance(loaded, tuple) else loaded)  # stereo pairs
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        photos.append(Image.fromarray(array[..., :3].astype(np.uint8), "RGB"))
    return photos


def _sentence(rng: np.random.Generator, words: int) -> str:
    return " ".join(str(w) for w in rng.choice(_WORDS, size=words)).capitalize() + "."


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at ``size`` pixels (no system font needed)."""
    return ImageFont.load_default(size=size)
