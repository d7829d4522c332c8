"""mpoxscan: screen photos of skin lesions for mpox, with honest, patient-grouped numbers."""

from mpoxscan._version import __version__

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
