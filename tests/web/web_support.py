"""Helpers of the web tests: photos as bytes, and a small real model bundle.

The bundle is a real EfficientNet-Lite0 (ImageNet weights, a fresh one-logit head, 64-pixel
input) saved with ``save_bundle``, with an out-of-domain detector fitted on the embeddings of
generated lesion photos. Its threshold is set from other generated photos (a validation set),
so generated lesion photos are assessed and photos of anything else are turned away, as the
real model does with MSLD photos.
"""

from __future__ import annotations

import importlib.util
import io
import struct
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

# The web tests take the shared test data from here too.
from testdata import MSLD_DIR, make_healthy_skin_photo, make_lesion_photo  # noqa: F401

IMAGE_SIZE = 64
BENCHMARKS_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """A script of ``benchmarks/`` (e.g. ``load_test``), imported by its path, once."""
    module_name = f"mpoxscan_benchmark_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS_DIR / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        # Registered before it runs: dataclasses look their module up while it is executing.
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def jpeg_bytes(image: Image.Image, **save_options: object) -> bytes:
    """Encode an image as JPEG in memory."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **save_options)
    return buffer.getvalue()


def lesion_jpeg(seed: int, positive: bool = True, size: int = 160) -> bytes:
    """A generated lesion photo (in the test model's domain) as JPEG bytes."""
    return jpeg_bytes(make_lesion_photo(positive, seed=seed, size=size), quality=92)


def with_padding(jpeg: bytes, seed: int, segments: int = 32) -> bytes:
    """The JPEG with ``segments`` x 60 KB of random APP9 segments (32: 1.9 MB, the size of a
    phone photo; 170: 10 MB).

    The photo decodes as before, but each upload is as big as a phone photo, so a server that
    kept every upload would grow by far more than its memory's noise.
    """
    rng = np.random.default_rng(seed)
    segment = 60_000
    padding = b"".join(
        b"\xff\xe9" + struct.pack(">H", segment + 2) + rng.bytes(segment) for _ in range(segments)
    )
    return jpeg[:2] + padding + jpeg[2:]


def cat_jpeg() -> bytes:
    """A photo that is not of skin (scikit-image's Chelsea the cat)."""
    from skimage import data

    return jpeg_bytes(Image.fromarray(data.chelsea()), quality=90)


def _embed(model, photos: list[Image.Image]) -> np.ndarray:
    import torch

    from mpoxscan.inference.predictor import images_to_pixels

    prep = model.preprocessing
    pixels = torch.from_numpy(images_to_pixels(photos, IMAGE_SIZE))
    mean = torch.tensor(prep.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float32).view(1, 3, 1, 1)
    with torch.inference_mode():
        return model.embed((pixels - mean) / std).numpy()


def healthy_jpeg(seed: int, size: int = 160) -> bytes:
    """A generated photo of skin without a lesion, as JPEG bytes."""
    return jpeg_bytes(make_healthy_skin_photo(seed=seed, size=size), quality=92)


def build_test_bundle(out_dir: Path, *, no_lesion: bool = False) -> Path:
    """Save a small real bundle (see the module docstring) into ``out_dir``.

    With ``no_lesion``, the bundle also has a "no lesion seen" head fitted on generated
    healthy-skin photos against generated lesion photos (its threshold chosen on other
    generated photos), its out-of-domain detector knows both kinds, and its screening head
    answers "low" for every photo (bias -30), so the no-lesion head alone decides between
    ``ok`` and ``no_lesion``.
    """
    import torch

    from mpoxscan.inference.bundle import save_bundle
    from mpoxscan.inference.no_lesion import NoLesionDetector
    from mpoxscan.inference.quality import OodDetector
    from mpoxscan.models.registry import create_model

    model = create_model(
        "efficientnet-lite0", num_outputs=1, pretrained=True, image_size=IMAGE_SIZE
    ).eval()
    train = [make_lesion_photo(i % 2 == 0, seed=70_000 + i) for i in range(48)]
    held_out = [make_lesion_photo(i % 2 == 0, seed=80_000 + i, size=160) for i in range(24)]
    detector = None
    if no_lesion:
        with torch.no_grad():
            model.head[-1].bias.fill_(-30.0)
        healthy = [make_healthy_skin_photo(seed=71_000 + i) for i in range(24)]
        healthy_val = [make_healthy_skin_photo(seed=81_000 + i, size=160) for i in range(12)]
        # The generated "negative" photos (one or two pale patches) are too close to plain
        # skin for a 64-pixel model; the lesions here are the many-pustule photos.
        lesions, lesions_val = train[::2], held_out[::2]
        detector = NoLesionDetector().fit(
            _embed(model, lesions + healthy),
            [False] * len(lesions) + [True] * len(healthy),
            _embed(model, lesions_val + healthy_val),
            [False] * len(lesions_val) + [True] * len(healthy_val),
        )
        train, held_out = train + healthy, held_out + healthy_val
    fitted = OodDetector().fit(_embed(model, train))
    # With 48 photos and 1280 features the training distances are optimistic; the threshold
    # comes from held-out photos of the same kind instead, with the detector's usual margin.
    threshold = 1.5 * float(fitted.distance(_embed(model, held_out)).max())
    ood = OodDetector.from_tensors(fitted.to_tensors(), threshold)
    prep = model.preprocessing
    meta = {
        "architecture": {
            "name": "efficientnet-lite0",
            "num_outputs": 1,
            "image_size": IMAGE_SIZE,
            "dropout": None,
        },
        "classes": ["Others", "Monkey Pox"],
        "positive_class": "Monkey Pox",
        "preprocessing": {"image_size": IMAGE_SIZE, "mean": prep.mean, "std": prep.std},
        "temperature": 1.0,
        "threshold": 0.5,
        "metrics": {
            "cv": {
                "n_images": 228,
                "n_patients": 135,
                "n_folds": 5,
                "repeats": 3,
                "accuracy": {"mean": 0.788, "std": 0.069, "ci": [0.723, 0.83]},
                "roc_auc": {"mean": 0.869, "std": 0.061, "ci": [0.783, 0.906]},
            },
            "test": {
                "n_images": 46,
                "n_patients": 27,
                "sensitivity": 0.81,
                "sensitivity_ci": [0.62, 0.92],
                "roc_auc": 0.88,
                "roc_auc_ci": [0.77, 0.96],
                "tp": 17,
            },
        },
    }
    return save_bundle(out_dir, model, meta, ood=ood, no_lesion=detector)
