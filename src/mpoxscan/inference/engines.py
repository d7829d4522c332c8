"""Pick the engine of batch prediction: this process, or Ray Data (`mpoxscan predict --engine`).

Above both engines: :mod:`mpoxscan.inference.batch` (the local engine, file walking and output
files) and :mod:`mpoxscan.inference.ray_engine` (which imports Ray, only when asked for).
"""

from __future__ import annotations

from pathlib import Path

from mpoxscan.errors import MpoxscanError
from mpoxscan.inference.batch import BatchConfig, Engine, LocalEngine, PredictionEngine
from mpoxscan.inference.predictor import Predictor


def open_engine(
    model_dir: str | Path,
    *,
    engine: Engine = "local",
    config: BatchConfig | None = None,
    ray_address: str | None = None,
) -> PredictionEngine:
    """Load a bundle into a prediction engine.

    Args:
        model_dir: the bundle folder.
        engine: ``"local"`` (this process) or ``"ray"`` (Ray Data; imports Ray only then).
        config: batching settings (the batch size applies to both engines).
        ray_address: Ray cluster to connect to; ``None``: ``RAY_ADDRESS`` when set, else a
            local Ray started for the run.

    Returns:
        The engine; call it with files to get row batches.

    Raises:
        BundleError: the bundle is invalid.
        MpoxscanError: ``engine="ray"`` and Ray is not installed.
        ValueError: an unknown engine.
    """
    config = config or BatchConfig()
    if engine == "local":
        # The engine's workers run the model in parallel: one ONNX Runtime thread each.
        predictor = Predictor.load(
            model_dir, threads=config.threads or 1, batch_size=config.batch_size
        )
        return LocalEngine(predictor, config)
    if engine == "ray":
        try:
            from mpoxscan.inference.ray_engine import RayConfig, RayEngine
        except ModuleNotFoundError as error:
            if error.name != "ray":
                raise
            raise MpoxscanError(
                "--engine ray needs Ray Data, which is not installed: install mpoxscan's "
                "ray extra (or the ray package with its data extra)",
                code="ray_missing",
            ) from error

        return RayEngine.load(model_dir, config, RayConfig(address=ray_address))
    raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
