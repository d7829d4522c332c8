"""Every path reads a photo the same way and gives the page's answer.

Training, evaluation, batch prediction, the web service, explain and the Python API all read
photos with ``mpoxscan.data.photos.read_photo``; these tests put one large JPEG (reduced DCT
decoding applies) and one small one through each and compare the model inputs and results.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from web_support import IMAGE_SIZE, cat_jpeg, jpeg_bytes, lesion_jpeg, make_lesion_photo

from mpoxscan.data.datasets import ImageRecord
from mpoxscan.data.images import ImageLimits
from mpoxscan.data.loading import load_image_batch
from mpoxscan.data.photos import read_photo
from mpoxscan.inference.batch import LocalEngine, predict_paths, predict_to_file, prepare_batch
from mpoxscan.inference.predictor import Predictor, images_to_pixels
from mpoxscan.web.service import _decode
from mpoxscan.web.uploads import Upload


@pytest.fixture(scope="module")
def predictor(web_bundle) -> Predictor:
    return Predictor.load(web_bundle)


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory) -> list:
    """A phone-like 1600x1200 JPEG with an EXIF rotation, and a small 160x160 one."""
    folder = tmp_path_factory.mktemp("same-answers")
    big = make_lesion_photo(True, seed=5, size=300).resize((1200, 1600), Image.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 6
    (folder / "big.jpg").write_bytes(
        jpeg_bytes(big.transpose(Image.Transpose.ROTATE_90), quality=90, exif=exif)
    )
    (folder / "small.jpg").write_bytes(jpeg_bytes(make_lesion_photo(False, seed=6, size=160)))
    return [folder / "big.jpg", folder / "small.jpg"]


def test_training_evaluation_batch_web_and_api_see_equal_pixels(photo_files):
    size = IMAGE_SIZE
    records = [
        ImageRecord(path, "Monkey Pox", 1, f"p{i}", None) for i, path in enumerate(photo_files)
    ]
    training = load_image_batch(records, size)[0].numpy().astype(np.float32)
    batch = prepare_batch(photo_files, size).pixels
    # Evaluation, explain and the Python API read files with read_photo, then images_to_pixels.
    api = images_to_pixels([read_photo(path, size) for path in photo_files], size)
    web = images_to_pixels(
        [
            _decode(Upload.of(p.read_bytes()), ImageLimits(max_side=2048), None, size)
            for p in photo_files
        ],
        size,
    )
    for pixels in (batch, api, web):
        assert np.array_equal(pixels, training)
    # The large photo was read reduced (1200x1600 at 1/8 DCT scale, then halved), not in full.
    assert read_photo(photo_files[0], size).size == (75, 100)


def test_web_page_and_batch_give_the_same_probability_for_a_large_jpeg(
    client, predictor, photo_files
):
    rows = list(predict_paths(predictor, photo_files))
    for path, row in zip(photo_files, rows, strict=True):
        response = client.post(
            "/api/v1/predict", files=[("file", (path.name, path.read_bytes(), "image/jpeg"))]
        )
        result = response.json()["results"][0]
        assert result["status"] == "ok", result
        assert result["prediction"]["probability"] == pytest.approx(row["probability"], abs=1e-6)
    # The Python API given Image.open(...) sees nearly the same pixels: the EXIF rotation is
    # applied, and the full decode is box-reduced where the file was DCT-scaled.
    with Image.open(io.BytesIO(photo_files[0].read_bytes())) as image:
        from_pil = images_to_pixels([image], IMAGE_SIZE)
        assert predictor.predict(image).status == "ok"
    from_file = images_to_pixels([read_photo(photo_files[0], IMAGE_SIZE)], IMAGE_SIZE)
    assert np.abs(from_pil - from_file).mean() < 3


def _rows(out: Path) -> list[dict]:
    """Output rows with empty CSV cells as ``None`` and probabilities as floats."""
    if out.suffix == ".jsonl":
        return [json.loads(line) for line in out.read_text().splitlines()]
    with out.open(newline="") as handle:
        rows = [{k: (v or None) for k, v in cells.items()} for cells in csv.DictReader(handle)]
    for row in rows:
        if row["probability"] is not None:
            row["probability"] = float(row["probability"])
    return rows


def blurred_jpeg() -> bytes:
    from PIL import ImageFilter

    photo = make_lesion_photo(True, seed=7, size=400).filter(ImageFilter.GaussianBlur(8))
    return jpeg_bytes(photo, quality=90)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_batch_rows_carry_the_web_pages_status(client, predictor, tmp_path, suffix):
    photos = {
        "good.jpg": lesion_jpeg(seed=11, size=400),
        "blurred.jpg": blurred_jpeg(),
        "cat.jpg": cat_jpeg(),
        "dark.jpg": jpeg_bytes(Image.new("RGB", (300, 300), (8, 6, 5))),
    }
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, data in photos.items():
        (folder / name).write_bytes(data)
    (folder / "broken.jpg").write_bytes(b"not a photo")
    out = tmp_path / f"results{suffix}"
    summary = predict_to_file(LocalEngine(predictor), [folder], out)
    assert (summary.predicted, summary.retake, summary.failed) == (1, 3, 1)
    rows = {Path(row["file"]).name: row for row in _rows(out)}
    assert rows["broken.jpg"]["status"] == "error"
    expected_reasons = {
        "good.jpg": None,
        "blurred.jpg": "too_blurry",
        "cat.jpg": "out_of_domain",
        "dark.jpg": "too_dark",
    }
    for name, data in photos.items():
        [page] = client.post(
            "/api/v1/predict", files=[("file", (name, data, "image/jpeg"))]
        ).json()["results"]
        row = rows[name]
        api = predictor.predict(read_photo(data, IMAGE_SIZE))
        assert row["status"] == page["status"] == api.status
        codes = [issue["code"] for issue in page["issues"]]
        assert row["reason"] == (codes[0] if codes else None) == expected_reasons[name]
        assert [reason.code for reason in api.reasons] == codes
        if page["status"] == "ok":
            assert row["probability"] == pytest.approx(page["prediction"]["probability"], abs=1e-6)
            assert row["band"] == page["prediction"]["band"] == api.band
        else:
            assert row["label"] is row["probability"] is api.label is api.probability is None
