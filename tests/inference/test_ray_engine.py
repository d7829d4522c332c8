"""The Ray Data engine writes the same output as the single process, row for row."""

from __future__ import annotations

import csv

import pytest

from mpoxscan.inference.batch import BatchConfig, LocalEngine, predict_to_file
from mpoxscan.inference.predictor import Predictor

from testdata import make_lesion_photo

ray = pytest.importorskip("ray")

from mpoxscan.inference.ray_engine import RayConfig, RayEngine  # noqa: E402


@pytest.mark.slow
def test_ray_output_equals_the_single_process_output(onnx_bundle, tmp_path):
    folder = tmp_path / "photos"
    for i in range(40):
        sub = folder / ("x" if i % 2 else "y")
        sub.mkdir(parents=True, exist_ok=True)
        make_lesion_photo(i % 3 == 0, seed=i, size=64 + 8 * (i % 4)).save(sub / f"{i:02d}.jpg")
    (folder / "x" / "broken.jpg").write_bytes(b"not a photo")
    config = BatchConfig(batch_size=6)

    local_out = tmp_path / "local.csv"
    local = LocalEngine(Predictor.load(onnx_bundle, backend="onnx"), config)
    predict_to_file(local, [folder], local_out)

    ray_out = tmp_path / "ray.csv"
    # Two actors, so that rows from both must come back in input order.
    engine = RayEngine.load(onnx_bundle, config, RayConfig(num_cpus=2, actors=2, cpus_per_actor=1))
    summary = predict_to_file(engine, [folder], ray_out)

    assert (summary.predicted + summary.retake, summary.failed) == (40, 1)
    assert not ray.is_initialized()  # the engine started Ray, so it shut it down
    local_rows = list(csv.reader(local_out.open(newline="")))
    ray_rows = list(csv.reader(ray_out.open(newline="")))
    assert len(ray_rows) == len(local_rows) == 42
    for got, want in zip(ray_rows, local_rows, strict=True):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            if g != w:  # only the numbers may differ, and by rounding only
                assert float(g) == pytest.approx(float(w), abs=1e-6)
