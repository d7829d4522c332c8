"""ONNX export of a bundle, with a parity check against PyTorch.

The exported graph is the whole inference contract (see docs/architecture.md): input
``pixels`` (N, 3, S, S) float32 RGB on the 0-255 scale, already resized; the graph normalises
with the bundle's mean/std, runs the network, divides the logits by the temperature and returns
``probabilities`` (N, n_classes) and ``embedding`` (N, C), with a dynamic batch axis. The torch
backend of :class:`~mpoxscan.inference.predictor.Predictor` runs the same
:class:`~mpoxscan.inference.torch_backend.InferenceModule`, so both backends compute the same
numbers.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mpoxscan.errors import BundleError
from mpoxscan.inference.bundle import ONNX_FILE, load_torch_model, updating_bundle
from mpoxscan.inference.onnx_runtime import INPUT_NAME, OUTPUT_NAMES, OnnxModel
from mpoxscan.inference.predictor import images_to_pixels
from mpoxscan.inference.torch_backend import InferenceModule, inference_module

#: Largest allowed |p_onnx - p_torch| in the parity check after export.
PARITY_TOLERANCE = 1e-4

#: Random pixel batches checked when ``export_onnx`` gets no sample images.
DEFAULT_PARITY_SAMPLES = 5


@dataclass(frozen=True)
class ExportReport:
    """The outcome of :func:`export_onnx`.

    Attributes:
        path: the written ``model.onnx``.
        max_abs_diff: the largest |ONNX - PyTorch| probability difference on the samples.
        n_samples: how many inputs were compared (each also alone, as a batch of one).
    """

    path: Path
    max_abs_diff: float
    n_samples: int


def export_onnx(
    bundle_dir: str | Path,
    *,
    opset: int = 17,
    samples: Sequence[Image.Image] | np.ndarray | None = None,
) -> ExportReport:
    """Export a bundle's model to ``model.onnx`` in the bundle, checking it against PyTorch.

    Args:
        bundle_dir: the bundle folder.
        opset: the ONNX opset version.
        samples: photos (or a ``(N, 3, S, S)`` 0-255 pixel array) for the parity check;
            ``None`` uses random pixel batches.

    Returns:
        The :class:`ExportReport`.

    Raises:
        BundleError: the bundle is invalid, or ONNX Runtime disagrees with PyTorch by
            ``PARITY_TOLERANCE`` or more (then ``model.onnx`` is not written).
    """
    bundle = Path(bundle_dir)
    model, meta = load_torch_model(bundle)
    module = inference_module(model, meta)
    size = meta.preprocessing.image_size
    pixels = _parity_pixels(samples, size)

    # The new graph is written into a staged copy of the bundle (checked first, the old
    # model.onnx included), which replaces the bundle with model.json only once it passed.
    with updating_bundle(bundle, meta) as update:
        staged = update.dir / ONNX_FILE
        staged.unlink(missing_ok=True)  # the old graph's copy: never overwritten in place
        _export(module, staged, size, opset)
        diff = _parity(module, OnnxModel(staged), pixels)
        if not diff < PARITY_TOLERANCE:
            raise BundleError(
                f"The ONNX export of {bundle} differs from PyTorch by {diff:.2e} (allowed "
                f"{PARITY_TOLERANCE:.0e}), so it was not saved. Serve this bundle with "
                "backend='torch', or try another opset."
            )
        update.add_file(ONNX_FILE)
        update.meta["onnx"] = {
            "opset": opset,
            "parity_max_abs_diff": diff,
            "parity_samples": len(pixels),
        }
    return ExportReport(path=bundle / ONNX_FILE, max_abs_diff=diff, n_samples=len(pixels))


def _export(module: InferenceModule, path: Path, size: int, opset: int) -> None:
    # The TorchScript-based exporter (dynamo=False). The torch.export one needs the extra
    # onnxscript package and exports ~10x slower; its graph is tidier (EfficientNet-Lite's
    # static same-padding becomes Conv pads instead of small constant Pad subgraphs, which
    # ONNX Runtime folds at load anyway) with the same parity (< 1e-6).
    example = torch.zeros(2, 3, size, size)
    batch = {0: "batch"}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: batch, **{name: batch for name in OUTPUT_NAMES}},
            opset_version=opset,
            do_constant_folding=True,
        )


def _parity_pixels(samples: Sequence[Image.Image] | np.ndarray | None, size: int) -> np.ndarray:
    if samples is None:
        rng = np.random.default_rng(0)
        shape = (DEFAULT_PARITY_SAMPLES, 3, size, size)
        return rng.uniform(0.0, 255.0, shape).astype(np.float32)
    if isinstance(samples, np.ndarray):
        return np.ascontiguousarray(samples, dtype=np.float32)
    if len(samples) == 0:
        raise ValueError("export_onnx needs at least one sample image for the parity check")
    return images_to_pixels(samples, size)


def _parity(module: InferenceModule, onnx_model: OnnxModel, pixels: np.ndarray) -> float:
    """Largest probability difference, for the whole batch and for the first input alone."""
    with torch.inference_mode():
        expected = module(torch.from_numpy(pixels))[0].numpy()
    batched, _ = onnx_model.run(pixels)
    single, _ = onnx_model.run(pixels[:1])
    return float(max(np.abs(batched - expected).max(), np.abs(single - expected[:1]).max()))
