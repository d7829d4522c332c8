"""A small cache of numpy arrays keyed by strings, in memory and optionally on disk."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


class FeatureCache:
    """Embeddings of photos (float32 arrays) keyed by a string such as a file hash.

    Held in memory for the run; with ``cache_dir`` also written as ``<key>.npy`` files (plain
    arrays, never pickles) that later runs read back.

    Args:
        cache_dir: folder for the ``.npy`` files, created on the first write; ``None`` keeps the
            cache in memory only.
    """

    def __init__(self, cache_dir: str | Path | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.memory: dict[str, np.ndarray] = {}

    def get(self, key: str) -> np.ndarray | None:
        """The cached array for ``key``, from memory or disk; ``None`` when absent."""
        if key in self.memory:
            return self.memory[key]
        if self.cache_dir is not None and (path := self.cache_dir / f"{key}.npy").is_file():
            self.memory[key] = np.load(path, allow_pickle=False)
            return self.memory[key]
        return None

    def put(self, key: str, array: np.ndarray) -> None:
        """Store ``array`` under ``key`` (and on disk when the cache has a folder)."""
        self.memory[key] = array
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            # written beside and renamed: a killed run or a second run reading the same cache
            # never sees half a file
            handle, temporary = tempfile.mkstemp(dir=self.cache_dir, suffix=".partial")
            try:
                with os.fdopen(handle, "wb") as file:
                    np.save(file, array, allow_pickle=False)
                os.replace(temporary, self.cache_dir / f"{key}.npy")
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
