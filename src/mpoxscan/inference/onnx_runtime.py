"""Running an exported bundle graph with ONNX Runtime (no torch needed).

The graph's contract is described in :mod:`mpoxscan.inference.onnx_export`, which exports it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from mpoxscan.errors import BundleError

# mpoxscan/__init__.py sets ORT_DISABLE_TELEMETRY before the import; this also stops events
# when a program imported onnxruntime before mpoxscan.
ort.disable_telemetry_events()

INPUT_NAME = "pixels"
OUTPUT_NAMES = ("probabilities", "embedding")

#: Intra-op threads beyond this rarely speed up one small CNN forward pass.
MAX_DEFAULT_THREADS = 4


def default_threads() -> int:
    """Intra-op threads for ONNX Runtime: the usable cores, at most ``MAX_DEFAULT_THREADS``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_THREADS, cores))


class OnnxModel:
    """An ONNX Runtime session for an exported bundle graph (CPU).

    Args:
        path: the ``model.onnx`` file.
        threads: intra-op threads; ``None`` uses :func:`default_threads`.

    Attributes:
        session_: the ``onnxruntime.InferenceSession``.
        image_size_: the input side the graph expects.
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        self.threads = threads
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        # Don't busy-wait between requests: on a 2-core server spinning threads would take
        # the CPU from the web workers decoding the next upload.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session_ = ort.InferenceSession(
                str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own untyped errors
            raise BundleError(
                f"ONNX Runtime cannot load {self.path} ({err}). Export it again with "
                "mpoxscan.inference.onnx_export.export_onnx."
            ) from err
        shape = self.session_.get_inputs()[0].shape
        self.image_size_ = shape[-1] if isinstance(shape[-1], int) else None

    def run(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the graph.

        Args:
            pixels: ``(N, 3, S, S)`` RGB values on the 0-255 scale.

        Returns:
            ``(probabilities (N, n_classes), embeddings (N, C))`` as float32 arrays.
        """
        batch = np.ascontiguousarray(pixels, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"pixels must be (N, 3, S, S), got shape {batch.shape}")
        if self.image_size_ is not None and batch.shape[2:] != (self.image_size_,) * 2:
            raise ValueError(
                f"pixels are {batch.shape[2]}x{batch.shape[3]}, the model takes "
                f"{self.image_size_}x{self.image_size_}: resize with images_to_pixels"
            )
        probabilities, embeddings = self.session_.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
        return probabilities, embeddings
