"""Batch prediction to CSV / JSON Lines: rows, unreadable files, resume, constant memory."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image
from typer.testing import CliRunner

from mpoxscan.cli import app
from mpoxscan.data.images import IMAGE_SUFFIXES
from mpoxscan.data.photos import read_photo
from mpoxscan.inference.batch import (
    BatchConfig,
    LocalEngine,
    iter_image_files,
    predict_paths,
    predict_to_file,
    prepare_batch,
    read_finished,
)
from mpoxscan.inference.predictor import Predictor, images_to_pixels
from mpoxscan.inference.quality import check_photo

from testdata import make_lesion_photo

BATCH = 8
N_PHOTOS = 30
BAD_CODES = {"broken.jpg": "not_an_image", "empty.png": "empty_file"}


@pytest.fixture(scope="module")
def predictor(onnx_bundle) -> Predictor:
    return Predictor.load(onnx_bundle, backend="onnx")


def write_photo(path: Path, index: int) -> None:
    """Photos of assorted sizes, formats and colour modes, as a real folder has."""
    size = (64, 64, 96, 150)[index % 4]
    img = make_lesion_photo(index % 2 == 0, seed=index, size=size)
    if index % 5 == 1:
        img = img.resize((size, size * 2 // 3))
    if index % 7 == 3:
        img = img.convert("L")
    if index % 6 == 2:
        img.convert("RGBA").save(path.with_suffix(".png"))
    else:
        img.save(path, quality=90)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """30 photos in nested folders, an unreadable and an empty "photo", and a text file."""
    root = tmp_path_factory.mktemp("photos")
    for i in range(N_PHOTOS):
        folder = root / ("a" if i % 3 else "b/c")
        folder.mkdir(parents=True, exist_ok=True)
        write_photo(folder / f"p{i:02d}.jpg", i)
    (root / "b" / "broken.jpg").write_bytes(b"this is not a photo")
    (root / "a" / "empty.png").write_bytes(b"")
    (root / "a" / "notes.txt").write_text("not an image suffix: never listed")
    return root


def read_rows(out: Path) -> list[dict]:
    """Rows of a CSV or JSON Lines output, as dicts in the JSON Lines shape."""
    if out.suffix == ".jsonl":
        return [json.loads(line) for line in out.read_text().splitlines()]
    rows = []
    with out.open(newline="") as handle:
        for cells in csv.DictReader(handle):
            probabilities = {k[2:]: float(v) for k, v in cells.items() if k.startswith("p_") and v}
            rows.append(
                {
                    "file": cells["file"],
                    "status": cells["status"],
                    "label": cells["label"] or None,
                    "probability": float(cells["probability"]) if cells["probability"] else None,
                    "band": cells["band"] or None,
                    "probabilities": probabilities or None,
                    "reason": cells["reason"] or None,
                    "error": cells["error"] or None,
                    "code": cells["code"] or None,
                }
            )
    return rows


def assert_same_rows(actual: list[dict], expected: list[dict], atol: float = 1e-6) -> None:
    assert [r["file"] for r in actual] == [r["file"] for r in expected]
    for got, want in zip(actual, expected, strict=True):
        keys = ("status", "label", "band", "reason", "error", "code")
        assert [got[key] for key in keys] == [want[key] for key in keys]
        if want["probabilities"] is None:
            assert got["probabilities"] is None and got["probability"] is None
            continue
        assert got["probability"] == pytest.approx(want["probability"], abs=atol)
        assert got["probabilities"].keys() == want["probabilities"].keys()
        for name, p in want["probabilities"].items():
            assert got["probabilities"][name] == pytest.approx(p, abs=atol)


def count_predicted(predictor: Predictor, monkeypatch) -> list[int]:
    """Record the number of photos of every forward pass of ``predictor``."""
    sizes: list[int] = []
    original = predictor.predict_pixels

    def counting(pixels):
        sizes.append(len(pixels))
        return original(pixels)

    monkeypatch.setattr(predictor, "predict_pixels", counting)
    return sizes


def run(predictor: Predictor, paths, out: Path, **kwargs):
    engine = LocalEngine(predictor, BatchConfig(batch_size=BATCH, workers=2))
    return predict_to_file(engine, paths, out, **kwargs)


def test_folders_are_walked_in_sorted_rglob_order(photos):
    expected = [
        p for p in sorted(photos.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    given = photos / "a" / "notes.txt"  # a file named directly is kept, whatever its suffix
    assert list(iter_image_files([photos, given])) == [*expected, given]
    assert len(expected) == N_PHOTOS + 2


def test_prepared_pixels_equal_images_to_pixels(photos):
    files = list(iter_image_files([photos]))
    batch = prepare_batch(files, 48)
    good = [f for f in files if f.name not in BAD_CODES]
    # Each readable photo is checked as the web service checks it; those that pass are input.
    issues = {f: check_photo(read_photo(f, 48)) for f in good}
    assert [batch.issues[files.index(f)] for f in good] == list(issues.values())
    assert any(issues.values()) and not all(issues.values())
    passed = [f for f in good if not issues[f]]
    expected = images_to_pixels([read_photo(f, 48) for f in passed], 48)
    np.testing.assert_array_equal(batch.pixels, expected)
    failures = {f.name: fail for f, fail in zip(files, batch.failures, strict=True) if fail}
    assert {name: code for name, (_, code) in failures.items()} == BAD_CODES


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_output_has_a_row_per_file_matching_predict(predictor, photos, tmp_path, suffix):
    missing = tmp_path / "gone.jpg"  # named on the command line, then deleted
    out = tmp_path / f"results{suffix}"
    summary = run(predictor, [photos, missing], out)

    files = [*iter_image_files([photos]), missing]
    rows = read_rows(out)
    assert [row["file"] for row in rows] == [str(f) for f in files]
    assert (summary.predicted + summary.retake, summary.failed, summary.skipped) == (N_PHOTOS, 3, 0)
    if suffix == ".csv":
        header = out.read_text().splitlines()[0].split(",")
        classes = [f"p_{name}" for name in predictor.classes_]
        leading = ["file", "status", "label", "probability", "band"]
        assert header == [*leading, *classes, "reason", "error", "code"]
    for path, row in zip(files, rows, strict=True):
        if path.name in BAD_CODES or path == missing:
            expected_code = BAD_CODES.get(path.name, "unreadable_file")
            assert row["code"] == expected_code and row["error"]
            assert row["status"] == "error"
            assert row["label"] is None and row["probabilities"] is None
            continue
        expected = predictor.predict(read_photo(path, predictor.image_size_))
        assert row["error"] is None and row["code"] is None
        assert row["status"] == expected.status
        assert row["reason"] == (expected.reasons[0].code if expected.reasons else None)
        if expected.status == "retake":
            assert row["label"] is row["probability"] is row["probabilities"] is None
            continue
        assert (row["label"], row["band"]) == (expected.label, expected.band)
        assert row["probability"] == pytest.approx(expected.probability, abs=1e-6)
        for name, p in expected.probabilities.items():
            assert row["probabilities"][name] == pytest.approx(p, abs=1e-6)


def test_predict_paths_gives_the_same_rows(predictor, photos, tmp_path):
    out = tmp_path / "results.jsonl"
    run(predictor, [photos], out)
    rows = list(predict_paths(predictor, iter_image_files([photos]), batch_size=5))
    assert_same_rows(rows, read_rows(out))


def through_the_model(rows: list[dict]) -> int:
    """Rows whose photo reached the model: predictions and the out-of-domain refusals."""
    return sum(row["status"] == "ok" or row["reason"] == "out_of_domain" for row in rows)


def stop_after(batches: int):
    def on_progress(summary) -> None:
        if summary.predicted + summary.retake + summary.failed >= batches * BATCH:
            raise KeyboardInterrupt

    return on_progress


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_an_interrupted_run_resumes_without_redoing_files(
    predictor, photos, tmp_path, monkeypatch, suffix
):
    full = tmp_path / f"full{suffix}"
    run(predictor, [photos], full)

    out = tmp_path / f"resumed{suffix}"
    with pytest.raises(KeyboardInterrupt):
        run(predictor, [photos], out, on_progress=stop_after(2))
    first_part = out.read_text()
    assert len(read_rows(out)) == 2 * BATCH

    sizes = count_predicted(predictor, monkeypatch)
    summary = run(predictor, [photos], out)
    rest = read_rows(full)[2 * BATCH :]
    assert summary.skipped == 2 * BATCH
    assert summary.predicted == sum(row["status"] == "ok" for row in rest)
    assert sum(sizes) == through_the_model(rest)
    assert out.read_text().startswith(first_part)
    assert_same_rows(read_rows(out), read_rows(full))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_partially_written_last_line_is_redone(predictor, photos, tmp_path, monkeypatch, suffix):
    full = tmp_path / f"full{suffix}"
    run(predictor, [photos], full)
    data = full.read_bytes()
    lines = data.splitlines(keepends=True)
    kept = b"".join(lines[:11])
    out = tmp_path / f"cut{suffix}"
    out.write_bytes(kept + lines[11][: len(lines[11]) // 2])  # killed in the middle of a row

    header_lines = 1 if suffix == ".csv" else 0
    assert len(read_finished(out, predictor.classes_)) == 11 - header_lines
    assert out.read_bytes() == kept

    sizes = count_predicted(predictor, monkeypatch)
    summary = run(predictor, [photos], out)
    assert summary.skipped == 11 - header_lines
    assert sum(sizes) == through_the_model(read_rows(full)[summary.skipped :])
    assert summary.predicted + summary.retake + summary.failed == N_PHOTOS + 2 - summary.skipped
    assert_same_rows(read_rows(out), read_rows(full))


def test_a_finished_output_is_not_redone(predictor, photos, tmp_path, monkeypatch):
    out = tmp_path / "results.csv"
    run(predictor, [photos], out)
    before = out.read_bytes()
    sizes = count_predicted(predictor, monkeypatch)
    summary = run(predictor, [photos], out)
    assert sizes == [] and summary.skipped == N_PHOTOS + 2
    assert out.read_bytes() == before


def test_an_output_of_another_model_or_format_is_refused(predictor, photos, tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("file,label,probability,p_cat,p_dog,error,code\n")
    with pytest.raises(ValueError, match="columns"):
        run(predictor, [photos], other)
    with pytest.raises(ValueError, match=r"\*\.csv or \*\.jsonl"):
        run(predictor, [photos], tmp_path / "results.txt")


def test_a_malformed_row_before_the_last_is_an_error_not_a_truncation(predictor, photos, tmp_path):
    out = tmp_path / "results.jsonl"
    run(predictor, [photos], out)
    lines = out.read_text().splitlines(keepends=True)
    lines[3] = "garbage\n"
    out.write_text("".join(lines))
    with pytest.raises(ValueError, match="Line 4"):
        run(predictor, [photos], out)
    assert out.read_text() == "".join(lines)


def test_cli_predict_writes_the_output_and_resumes(onnx_bundle, photos, tmp_path):
    out = tmp_path / "results.jsonl"
    args = ["predict", "--model-dir", str(onnx_bundle), str(photos), "--out", str(out)]
    runner = CliRunner()
    first = runner.invoke(app, [*args, "--batch-size", "4"])
    assert first.exit_code == 3, first.output  # done, but 2 files could not be read
    found = re.search(
        r"(\d+) predicted, 2 unreadable, 0 already done, (\d+) to retake",
        " ".join(first.output.split()),
    )
    assert found and int(found[1]) + int(found[2]) == N_PHOTOS, first.output
    assert len(read_rows(out)) == N_PHOTOS + 2
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert f"0 predicted, 0 unreadable, {N_PHOTOS + 2} already done, 0 to retake" in " ".join(
        again.output.split()
    )


def test_ray_is_imported_only_for_the_ray_engine():
    code = (
        "import sys, mpoxscan.cli, mpoxscan.inference.batch; "
        "sys.exit('ray' in sys.modules or 'mpoxscan.inference.ray_engine' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def peak_rss_growth(work) -> tuple[int, object]:
    """Run ``work()`` and return (peak RSS above the start, its result), sampled every 2 ms."""
    process = psutil.Process()
    start = process.memory_info().rss
    peak = start
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.002):
            peak = max(peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = work()
    finally:
        done.set()
        sampler.join()
    return max(peak, process.memory_info().rss) - start, result


def test_memory_stays_constant_over_thousands_of_files(predictor, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(0)
    n = 3000
    for i in range(n):
        # 64 px: the smallest size the photo checks let through to the model.
        pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.png", compress_level=1)
    engine = LocalEngine(predictor, BatchConfig(batch_size=32))
    # Warm up ONNX Runtime's memory arena and the thread pool on full batches first.
    predict_to_file(engine, [*sorted(folder.iterdir())[:96]], tmp_path / "warm.jsonl")

    out = tmp_path / "many.jsonl"
    growth, summary = peak_rss_growth(lambda: predict_to_file(engine, [folder], out))

    assert summary.predicted + summary.retake == n and summary.failed == 0
    # Holding every photo's model input at once takes n * 3 * S * S float32 values
    # (147 MB for 3000 photos at 64x64); a streaming run holds a few batches.
    size = predictor.image_size_
    all_inputs = n * 3 * size * size * 4
    assert growth < all_inputs / 4, f"RSS grew by {growth / 2**20:.1f} MiB"
