"""The torch backend of the inference contract: a bundle's network wrapped to take 0-255 pixels.

:class:`~mpoxscan.inference.predictor.Predictor` runs :class:`InferenceModule` when it serves
through PyTorch (and for Grad-CAM); :func:`~mpoxscan.inference.onnx_export.export_onnx` exports
the same module, so both backends compute the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mpoxscan.errors import BundleError
from mpoxscan.inference.bundle import BundleMeta


class InferenceModule(nn.Module):
    """A network wrapped to the inference contract: 0-255 pixels in, probabilities out.

    Args:
        model: an :class:`~mpoxscan.models.registry.MpoxNet` (``forward_features``,
            ``forward_head``).
        mean: per-channel mean on the 0-255 scale.
        std: per-channel divisor on the 0-255 scale.
        temperature: logits are divided by it before the sigmoid/softmax (calibration).
        binary: the network has one logit (of the positive class): probabilities are
            ``[1 - p, p]`` with ``p = sigmoid(logit / T)``; otherwise a softmax.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        temperature: float = 1.0,
        binary: bool = True,
    ):
        super().__init__()
        if not temperature > 0:
            raise BundleError(f"temperature must be positive, got {temperature}; re-export")
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.temperature = float(temperature)
        self.binary = binary

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(probabilities (N, n_classes), embedding (N, C))`` for 0-255 pixels."""
        features = self.model.forward_features((pixels - self.mean) / self.std)
        logits = self.model.forward_head(features) / self.temperature
        # The embedding is MpoxNet.embed computed from the same features: one forward pass.
        embedding = features.mean(dim=(2, 3))
        if self.binary:
            positive = torch.sigmoid(logits)
            return torch.cat([1.0 - positive, positive], dim=1), embedding
        return torch.softmax(logits, dim=1), embedding


def inference_module(model: nn.Module, meta: BundleMeta) -> InferenceModule:
    """Wrap a bundle's network with its preprocessing and temperature.

    Args:
        model: the network from :func:`~mpoxscan.inference.bundle.load_torch_model`.
        meta: the bundle's metadata.

    Returns:
        The wrapper, in eval mode.
    """
    prep = meta.preprocessing
    module = InferenceModule(
        model, prep.mean, prep.std, temperature=meta.temperature, binary=meta.binary
    )
    return module.eval()
