"""open_engine picks the batch-prediction engine: this process, or Ray Data."""

from __future__ import annotations

import pytest
from inference_support import build_bundle

from mpoxscan.inference.batch import BatchConfig, LocalEngine
from mpoxscan.inference.engines import open_engine


def test_the_local_engine_loads_the_bundle_with_the_batch_settings(tmp_path):
    bundle = build_bundle(tmp_path / "b")
    engine = open_engine(bundle, config=BatchConfig(batch_size=3))
    assert isinstance(engine, LocalEngine)
    assert engine.classes_ == ["Others", "Monkey Pox"]
    assert engine.predictor.batch_size == 3


def test_an_unknown_engine_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'local' or 'ray'"):
        open_engine(tmp_path, engine="spark")  # type: ignore[arg-type]
