"""The tutorial's grid of sample photos (`mpoxscan samples`)."""

from __future__ import annotations

import random
from pathlib import Path

from mpoxscan.data.datasets import scan_dataset
from mpoxscan.data.images import decode_image
from mpoxscan.errors import DatasetError, InvalidImageError
from mpoxscan.evaluation.plots import plot_samples_grid

ROWS, COLS = 4, 3


def write_samples_grid(data_dir: Path, out: Path, *, seed: int = 0) -> Path:
    """Write a 4x3 grid of photos drawn evenly from each class folder, titled by class.

    Args:
        data_dir: a dataset in either layout.
        out: the PNG file to write.
        seed: which photos are drawn.

    Returns:
        The path written.
    """
    index = scan_dataset(data_dir, multiclass=True)
    by_class: dict[str, list] = {}
    for record in index.records:
        by_class.setdefault(record.class_name, []).append(record)
    if not by_class:
        raise DatasetError(f"no images found under {data_dir}")
    rng = random.Random(seed)
    for records in by_class.values():
        rng.shuffle(records)
    items = []
    while len(items) < ROWS * COLS and any(by_class.values()):
        for class_name, records in by_class.items():
            if records and len(items) < ROWS * COLS:
                record = records.pop()
                try:
                    items.append((decode_image(record.path), class_name))
                except InvalidImageError:
                    continue
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(plot_samples_grid(items, out, rows=ROWS, cols=COLS))
