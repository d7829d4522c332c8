"""FeatureCache: arrays come back from disk as they were stored, and no half-written file."""

from __future__ import annotations

import numpy as np
import pytest

from mpoxscan.data.array_cache import FeatureCache


def test_arrays_written_by_one_run_are_read_by_the_next(tmp_path):
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    FeatureCache(tmp_path).put("photo-1", array)
    again = FeatureCache(tmp_path)
    np.testing.assert_array_equal(again.get("photo-1"), array)
    assert again.get("photo-2") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo-1.npy"]


def test_a_failed_write_leaves_neither_a_file_nor_a_partial_one(tmp_path, monkeypatch):
    def broken_save(file, array, allow_pickle):
        file.write(b"\x93NUMPY half")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        FeatureCache(tmp_path).put("photo-1", np.zeros(3))
    assert list(tmp_path.iterdir()) == []
    assert FeatureCache(tmp_path).get("photo-1") is None
