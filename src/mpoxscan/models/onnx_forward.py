"""A frozen network's ``forward_features`` run by ONNX Runtime, for embedding many photos.

PyTorch's eager CPU kernels run EfficientNet-Lite0's depthwise convolutions slowly: on the
2-core machines we target, one 224-px photo costs about 90 ms of CPU in eager mode and about
17 ms in ONNX Runtime (one thread, ``benchmarks/audit.md``). Embedding is most of what the copy
finder and the frozen-features recipe spend, so large jobs export the frozen network to an
in-memory ONNX graph once (a few seconds) and run that; its outputs agree with PyTorch's to
about 1e-4 (a test checks it).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

# mpoxscan/__init__.py sets ORT_DISABLE_TELEMETRY before any import; this also stops events
# when a program imported onnxruntime first.
ort.disable_telemetry_events()

#: Forward passes below which exporting the graph costs more than it saves.
MIN_PASSES = 256


class _Features(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


class OnnxForward:
    """``model.forward_features`` of a frozen model on normalised ``(N, 3, S, S)`` inputs.

    Args:
        model: a registry model in eval mode; its weights are copied into the graph, so later
            changes to the module are not seen.
        image_size: the input side ``S``.
        threads: intra-op threads (``None``: PyTorch's current thread count).
    """

    def __init__(self, model: nn.Module, image_size: int, threads: int | None = None):
        graph = io.BytesIO()
        example = torch.zeros(1, 3, image_size, image_size)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes about shapes; the graph is checked
            torch.onnx.export(
                _Features(model).eval(),
                (example,),
                graph,
                dynamo=False,
                input_names=["x"],
                output_names=["features"],
                dynamic_axes={"x": {0: "batch"}, "features": {0: "batch"}},
                opset_version=17,
                do_constant_folding=True,
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session_ = ort.InferenceSession(
            graph.getvalue(), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The feature map ``(N, C, H, W)`` of a batch, as a float32 tensor."""
        batch = x.numpy() if isinstance(x, torch.Tensor) else x
        (features,) = self.session_.run(None, {"x": np.ascontiguousarray(batch, np.float32)})
        return torch.from_numpy(features)
