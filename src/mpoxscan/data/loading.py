"""Loading a dataset's photos into memory once, as small resized uint8 arrays."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mpoxscan.data.datasets import ImageRecord
from mpoxscan.data.photos import photo_pixels, read_photo
from mpoxscan.data.preprocessing import Preprocessing
from mpoxscan.errors import DatasetError, InvalidImageError


def load_image_batch(
    records: Sequence[ImageRecord], image_size: int | Preprocessing
) -> tuple[torch.Tensor, torch.Tensor, list[ImageRecord]]:
    """Read photos (:func:`~mpoxscan.data.photos.read_photo`) and resize them into one uint8 batch.

    A file that cannot be decoded is named in a ``UserWarning`` and left out; the others load.

    Args:
        records: the photos.
        image_size: side of the square output, or the model's ``Preprocessing``.

    Returns:
        ``(images, labels, kept)``: a uint8 ``(N, 3, size, size)`` tensor, an int64 ``(N,)``
        tensor of labels and the ``N`` records that loaded, in input order.
    """
    size = _side(image_size)
    arrays: list[np.ndarray] = []
    kept: list[ImageRecord] = []
    for record in records:
        try:
            img = read_photo(record.path, size)
        except (InvalidImageError, OSError) as exc:
            reason = str(exc).rstrip(".")
            warnings.warn(
                f"Skipping {record.path}: {reason}. The run goes on without this photo.",
                UserWarning,
                stacklevel=2,
            )
            continue
        arrays.append(photo_pixels(img, size).transpose(2, 0, 1))
        kept.append(record)
    images = (
        torch.from_numpy(np.stack(arrays))
        if arrays
        else torch.empty((0, 3, size, size), dtype=torch.uint8)
    )
    labels = torch.tensor([r.label for r in kept], dtype=torch.int64)
    return images, labels, kept


class ImageDataset(Dataset):
    """A torch ``Dataset`` of ``(image, label)`` pairs, decoded once when it is made.

    Images are float32 ``(3, size, size)`` tensors in [0, 1] (augment, then normalise with
    ``normalize_batch``); labels are ints. Files that fail to decode are named in a
    ``UserWarning`` and dropped; ``records`` lists the photos that were kept.

    Args:
        records: the photos.
        image_size: side of the square images, or the model's ``Preprocessing``.

    Raises:
        DatasetError: photos were given but none of them could be read.
    """

    def __init__(self, records: Sequence[ImageRecord], image_size: int | Preprocessing):
        self.images, self.labels, self.records = load_image_batch(records, image_size)
        if records and not self.records:
            folder = Path(records[0].path).parent
            raise DatasetError(
                f"None of the {len(records)} photos (e.g. in {folder}) could be read, so there "
                "is nothing to train or test on. Check that the dataset holds JPEG or PNG photos.",
                code="no_readable_photos",
            )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i].float().div_(255.0), int(self.labels[i])


def _side(image_size: int | Preprocessing) -> int:
    return image_size.image_size if isinstance(image_size, Preprocessing) else int(image_size)
