"""mpoxscan: screen photos of skin lesions for mpox, with honest, patient-grouped numbers."""

import os

from mpoxscan._version import __version__

# ONNX Runtime's Linux wheels collect usage telemetry: importing it writes a device id and an
# event store under ~/.cache/Microsoft/DeveloperTools and queues host details for upload.
# A health application sends nothing anywhere, so it is turned off before anything imports
# onnxruntime (the variable is read once, when its module loads).
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

__all__ = ["__version__", "load_model"]


def load_model(bundle_dir, backend: str = "auto"):
    """Load a trained model bundle for prediction.

    Args:
        bundle_dir: directory holding ``model.json`` and the weights.
        backend: ``"onnx"``, ``"torch"`` or ``"auto"`` (ONNX Runtime when the bundle has an
            ONNX file, PyTorch otherwise).

    Returns:
        A :class:`mpoxscan.inference.predictor.Predictor` whose ``predict(image)`` gives the
        label and class probabilities.
    """
    from mpoxscan.inference.predictor import Predictor

    return Predictor.load(bundle_dir, backend=backend)
