"""Photo-style changes that carry no disease information, for training and for shortcut checks.

Every mpox photo we have comes from one web source, so a model can learn the *style* of that
source (its JPEG artefacts, its size, watermarks, colour balance) instead of the disease. The
changes here alter only such style: re-encoding at a low JPEG quality, resizing down and back
up, a stock-photo-style text overlay and a white-balance shift. Training on photos with random
style changes removes those cues; scoring held-out photos after one fixed change
(:data:`STYLE_PROBES`) measures how much a model relies on them.

Pillow and numpy only, on uint8 ``(H, W, 3)`` arrays.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Words of the text overlay: what stock-photo and news-site watermarks say.
OVERLAY_WORDS = ("shutterstock", "stock photo", "© 2022", "alamy", "dreamstime", "SAMPLE", "CDC")


@dataclass
class StyleConfig:
    """Random style changes, each applied with its own probability.

    Attributes:
        jpeg: probability of re-encoding as JPEG at a quality drawn from ``jpeg_quality``.
        jpeg_quality: range of JPEG qualities (inclusive).
        rescale: probability of resizing down to a share of the side drawn from
            ``rescale_range`` and back up (bilinear both ways).
        rescale_range: range of that share.
        text: probability of a semi-transparent watermark-like text overlay.
        white_balance: probability of scaling the red and blue channels in opposite
            directions by up to ``white_balance_shift``.
        white_balance_shift: largest relative gain change of red and blue.
    """

    jpeg: float = 0.5
    jpeg_quality: tuple[int, int] = (10, 50)
    rescale: float = 0.5
    rescale_range: tuple[float, float] = (0.25, 0.6)
    text: float = 0.3
    white_balance: float = 0.5
    white_balance_shift: float = 0.15

    def __post_init__(self) -> None:
        self.jpeg_quality = tuple(int(q) for q in self.jpeg_quality)
        self.rescale_range = tuple(float(s) for s in self.rescale_range)
        for name in ("jpeg", "rescale", "text", "white_balance"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"StyleConfig.{name} is a probability, got {value}")
        low, high = self.jpeg_quality
        if not 1 <= low <= high <= 95:
            raise ValueError(f"StyleConfig.jpeg_quality must lie in 1..95, got {self.jpeg_quality}")
        low_s, high_s = self.rescale_range
        if not 0.0 < low_s <= high_s <= 1.0:
            raise ValueError(
                f"StyleConfig.rescale_range must lie in (0, 1], got {self.rescale_range}"
            )


def jpeg_reencode(pixels: np.ndarray, quality: int) -> np.ndarray:
    """The photo after saving it as a JPEG of ``quality`` and decoding it again."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def rescale(pixels: np.ndarray, share: float) -> np.ndarray:
    """The photo resized to ``share`` of its side and back to its size (detail is lost)."""
    height, width = pixels.shape[:2]
    img = Image.fromarray(pixels)
    small = img.resize(
        (max(8, round(width * share)), max(8, round(height * share))), Image.Resampling.BILINEAR
    )
    return np.asarray(small.resize((width, height), Image.Resampling.BILINEAR))


def text_overlay(
    pixels: np.ndarray, text: str, *, xy: tuple[float, float], size: float, alpha: float
) -> np.ndarray:
    """The photo with ``text`` drawn in semi-transparent white with a dark outline.

    Args:
        pixels: the photo.
        text: what to write.
        xy: top-left corner as shares of width and height.
        size: font height as a share of the photo's height.
        alpha: opacity of the text, 0 to 1.
    """
    height, width = pixels.shape[:2]
    base = Image.fromarray(pixels).convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    font = ImageFont.load_default(size=max(6, round(size * height)))
    opacity = round(255 * alpha)
    ImageDraw.Draw(layer).text(
        (xy[0] * width, xy[1] * height),
        text,
        font=font,
        fill=(255, 255, 255, opacity),
        stroke_width=1,
        stroke_fill=(0, 0, 0, opacity),
    )
    return np.asarray(Image.alpha_composite(base, layer).convert("RGB"))


def white_balance(pixels: np.ndarray, shift: float) -> np.ndarray:
    """Warmer (``shift > 0``: more red, less blue) or cooler (``shift < 0``) colours."""
    gains = np.array([1.0 + shift, 1.0, 1.0 - shift], dtype=np.float32)
    return np.clip(pixels.astype(np.float32) * gains, 0, 255).round().astype(np.uint8)


def random_style(pixels: np.ndarray, cfg: StyleConfig, rng: np.random.Generator) -> np.ndarray:
    """The photo with random style changes of ``cfg`` (white balance, text, rescale, JPEG).

    The draws come from ``rng`` in a fixed order, so a seeded generator repeats the result.
    """
    draws = rng.random(4)
    out = pixels
    if draws[0] < cfg.white_balance:
        out = white_balance(out, float(rng.uniform(-1, 1)) * cfg.white_balance_shift)
    if draws[1] < cfg.text:
        word = OVERLAY_WORDS[int(rng.integers(len(OVERLAY_WORDS)))]
        xy = (float(rng.uniform(0.0, 0.5)), float(rng.uniform(0.0, 0.85)))
        size, alpha = float(rng.uniform(0.06, 0.15)), float(rng.uniform(0.3, 0.8))
        out = text_overlay(out, word, xy=xy, size=size, alpha=alpha)
    if draws[2] < cfg.rescale:
        out = rescale(out, float(rng.uniform(*cfg.rescale_range)))
    if draws[3] < cfg.jpeg:
        low, high = cfg.jpeg_quality
        out = jpeg_reencode(out, int(rng.integers(low, high + 1)))
    return out


def _probe_text(pixels: np.ndarray) -> np.ndarray:
    return text_overlay(pixels, "shutterstock", xy=(0.15, 0.45), size=0.12, alpha=0.6)


#: Fixed style changes for shortcut checks: name -> change of a uint8 ``(H, W, 3)`` photo.
STYLE_PROBES = {
    "jpeg-q10": lambda p: jpeg_reencode(p, 10),
    "rescale-0.25": lambda p: rescale(p, 0.25),
    "text-overlay": _probe_text,
    "warmer-0.15": lambda p: white_balance(p, 0.15),
    "cooler-0.15": lambda p: white_balance(p, -0.15),
}
