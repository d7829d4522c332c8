"""A contact sheet of copy pairs, side by side with their score (`mpoxscan audit --pairs-png`).

People check duplicates by looking at them: each row shows the two photos of a pair, the stage
that found it and its score, and both file names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from mpoxscan.data.copies import CopyPair
from mpoxscan.data.images import decode_image
from mpoxscan.errors import InvalidImageError

#: Side of each thumbnail in pixels.
THUMB = 150
#: Height of the text under each pair.
_TEXT_HEIGHT = 46
_MARGIN = 8


def write_pairs_sheet(
    pairs: Sequence[CopyPair],
    out: Path,
    *,
    columns: int = 2,
    max_pairs: int = 60,
    name: Callable[[Path], str] = lambda path: path.name,
) -> Path:
    """Write a PNG with up to ``max_pairs`` pairs, ``columns`` pairs per row.

    Args:
        pairs: the pairs, shown in order (the weakest geometric matches are worth a look).
        out: the PNG file to write.
        columns: pairs side by side on one row.
        max_pairs: pairs shown at most; the sheet says how many were left out.
        name: how a file is labelled (e.g. relative to its dataset).

    Returns:
        The path written.
    """
    shown = list(pairs[:max_pairs])
    cell_w = 2 * THUMB + 3 * _MARGIN
    cell_h = THUMB + _TEXT_HEIGHT + _MARGIN
    rows = max(1, -(-len(shown) // columns))
    footer = 20
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h + footer), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=11)
    for n, pair in enumerate(shown):
        x0, y0 = (n % columns) * cell_w, (n // columns) * cell_h
        for k, path in enumerate((pair.a, pair.b)):
            thumb = _thumbnail(path)
            x = x0 + _MARGIN + k * (THUMB + _MARGIN) + (THUMB - thumb.width) // 2
            sheet.paste(thumb, (x, y0 + _MARGIN + (THUMB - thumb.height) // 2))
        text_y = y0 + _MARGIN + THUMB + 2
        lines = [
            f"{pair.stage}: {pair.describe()}" + (f" [{pair.where}]" if pair.where else ""),
            _clip(name(pair.a), 44),
            _clip(name(pair.b), 44),
        ]
        for k, line in enumerate(lines):
            draw.text((x0 + _MARGIN, text_y + 13 * k), line, fill=(0, 0, 0), font=font)
    left_out = len(pairs) - len(shown)
    summary = f"{len(shown)} of {len(pairs)} pairs shown" + (
        f" ({left_out} more in the JSON report)" if left_out else ""
    )
    draw.text((_MARGIN, rows * cell_h + 3), summary, fill=(90, 90, 90), font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)
    return out


def _thumbnail(path: Path) -> Image.Image:
    try:
        img = decode_image(path)
    except (InvalidImageError, OSError):
        return Image.new("RGB", (THUMB, THUMB), (200, 200, 200))
    img.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
    return img


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]
