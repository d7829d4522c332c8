"""ImageDataset and load_image_batch: decoded once, unreadable files named and dropped."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from mpoxscan.data.datasets import scan_dataset
from mpoxscan.data.loading import ImageDataset, load_image_batch
from mpoxscan.data.photos import photo_pixels, read_photo
from mpoxscan.data.preprocessing import Preprocessing
from mpoxscan.data.transforms import to_unit_tensor


def test_dataset_yields_unit_tensors_and_labels(tiny_dataset):
    records = scan_dataset(tiny_dataset).records
    dataset = ImageDataset(records, 32)
    assert len(dataset) == len(records) == 48
    assert dataset.records == records
    image, label = dataset[5]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1
    assert isinstance(label, int) and label == records[5].label
    # Training sees the same pixels as serving would (read_photo, photo_pixels, /255).
    expected = to_unit_tensor(read_photo(records[5].path, 32), 32)
    assert np.array_equal(
        (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(),
        photo_pixels(read_photo(records[5].path, 32), 32),
    )
    assert torch.allclose(image, expected)


def test_dataset_accepts_a_preprocessing(tiny_dataset):
    records = scan_dataset(tiny_dataset).records[:3]
    prep = Preprocessing(image_size=24, mean=(127.0,) * 3, std=(128.0,) * 3)
    assert ImageDataset(records, prep)[0][0].shape == (3, 24, 24)


def test_unreadable_files_are_named_in_a_warning_and_dropped(tiny_dataset, tmp_path):
    root = tmp_path / "set"
    shutil.copytree(tiny_dataset, root)
    good = root / "Others" / "N0_1.jpg"
    (root / "Others" / "N0_9.jpg").write_bytes(good.read_bytes()[:300])
    (root / "Monkey Pox" / "P0_9.jpg").write_text("<html>not a photo</html>")
    records = scan_dataset(root).records
    with pytest.warns(UserWarning) as caught:
        dataset = ImageDataset(records, 16)
    messages = [str(w.message) for w in caught]
    assert any("N0_9.jpg" in m and "truncated" in m for m in messages)
    assert any("P0_9.jpg" in m and "not a photo" in m for m in messages)
    assert len(dataset) == len(records) - 2 == 48
    assert {r.path.name for r in dataset.records}.isdisjoint({"N0_9.jpg", "P0_9.jpg"})
    assert [dataset[i][1] for i in range(len(dataset))] == [r.label for r in dataset.records]


def test_load_image_batch_gives_uint8_batch(tiny_dataset):
    records = scan_dataset(tiny_dataset).records[:4]
    images, labels, kept = load_image_batch(records, 20)
    assert images.shape == (4, 3, 20, 20) and images.dtype == torch.uint8
    assert labels.tolist() == [r.label for r in records] and kept == records
    empty, no_labels, none_kept = load_image_batch([], 20)
    assert empty.shape == (0, 3, 20, 20) and no_labels.shape == (0,) and none_kept == []
