"""The Python API as people type it: ``load_model(...).predict`` on a path, bytes or an image."""

from __future__ import annotations

import pytest
from PIL import Image

from mpoxscan import load_model
from mpoxscan.errors import InvalidImageError

from testdata import make_lesion_photo


def test_predict_accepts_a_path_a_str_bytes_or_a_pil_image(tiny_bundle, tmp_path):
    model = load_model(tiny_bundle)
    path = tmp_path / "photo.jpg"
    make_lesion_photo(positive=True, seed=3).save(path)
    with Image.open(path) as image:
        expected = model.predict(image.convert("RGB")).probability
    for photo in (path, str(path), path.read_bytes()):
        assert model.predict(photo).probability == pytest.approx(expected, abs=1e-6)
    assert len(model.assess_many([str(path), path.read_bytes()])) == 2


def test_a_path_that_is_not_a_photo_gives_the_usual_error(tiny_bundle, tmp_path):
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a photo")
    with pytest.raises(InvalidImageError):
        load_model(tiny_bundle).predict(str(notes))
    with pytest.raises(TypeError, match="PIL image, a file path or image bytes"):
        load_model(tiny_bundle).predict(42)
