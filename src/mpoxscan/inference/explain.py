"""Grad-CAM heat maps (Captum ``LayerGradCam``) and their overlay on the photo.

A heat map shows which parts of the photo raised the score of the explained class, so a user
or clinician can see whether the model looked at the lesion or at the background.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch import nn

#: Matplotlib colormap of overlays: perceptually uniform and readable by colour-blind users.
DEFAULT_COLORMAP = "inferno"
#: Overlays (and the photos shown beside them) are at most this many pixels a side.
DISPLAY_MAX_SIDE = 512


def grad_cam(
    model: nn.Module,
    inputs: torch.Tensor,
    target: int | list[int] | None = None,
    *,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Grad-CAM of ``model.cam_layer`` for a target output.

    Args:
        model: a network with ``cam_layer`` (an :class:`~mpoxscan.models.registry.MpoxNet`).
        inputs: ``(N, 3, S, S)`` network input, already normalised.
        target: the output logit to explain (one index, or one per input); ``None`` means the
            single logit of a binary model (the positive class).
        size: ``(height, width)`` of the returned maps; default the input's size.

    Returns:
        ``(N, height, width)`` float32 maps in [0, 1], each scaled so its maximum is 1 (all
        zeros when nothing in the photo raised the target's score).
    """
    from captum.attr import LayerAttribution, LayerGradCam

    model.eval()
    out_size = size or (int(inputs.shape[2]), int(inputs.shape[3]))
    with torch.enable_grad():
        cam = LayerGradCam(model, model.cam_layer)
        attributions = cam.attribute(
            inputs, target=0 if target is None else target, relu_attributions=True
        )
        maps = LayerAttribution.interpolate(attributions.detach(), out_size, "bilinear")
    maps = torch.relu(maps[:, 0]).numpy().astype(np.float32)
    peaks = maps.reshape(len(maps), -1).max(axis=1)
    scale = np.where(peaks > 0, peaks, 1.0).astype(np.float32)
    return maps / scale[:, None, None]


def overlay_heatmap(
    image: Image.Image,
    heatmap: np.ndarray,
    alpha: float = 0.45,
    colormap: str = DEFAULT_COLORMAP,
) -> Image.Image:
    """Blend a heat map, coloured with a matplotlib colormap, over a photo.

    Args:
        image: the photo.
        heatmap: ``(H, W)`` values in [0, 1]; resized to the photo when its size differs.
        alpha: opacity of the heat map (0 = photo only, 1 = heat map only).
        colormap: a matplotlib colormap name.

    Returns:
        An RGB image of the photo's size.
    """
    from matplotlib import colormaps

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    heat = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be (H, W), got shape {heat.shape}")
    if heat.shape != (image.height, image.width):
        resized = Image.fromarray(heat).resize(image.size, Image.Resampling.BILINEAR)
        heat = np.clip(np.asarray(resized), 0.0, 1.0)
    colours = colormaps[colormap](heat)[..., :3] * 255.0
    photo = np.asarray(image.convert("RGB"), dtype=np.float32)
    blended = (1.0 - alpha) * photo + alpha * colours
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))


def heatmap_png_bytes(
    image: Image.Image,
    heatmap: np.ndarray,
    alpha: float = 0.45,
    colormap: str = DEFAULT_COLORMAP,
) -> bytes:
    """Overlay a heat map on a photo (see :func:`overlay_heatmap`) and encode it as PNG.

    Returns:
        The PNG file's bytes, e.g. for a web response or a ``data:`` URL.
    """
    buffer = io.BytesIO()
    overlay_heatmap(image, heatmap, alpha, colormap).save(buffer, format="PNG")
    return buffer.getvalue()


def display_copy(image: Image.Image, max_side: int = DISPLAY_MAX_SIDE) -> Image.Image:
    """A copy at most ``max_side`` pixels a side, for overlays and previews (aspect kept)."""
    copy = image.copy()
    copy.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return copy
