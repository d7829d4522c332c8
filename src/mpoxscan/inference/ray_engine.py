"""Batch prediction on Ray Data: the same rows as the local engine, from a pool of actors.

Each actor loads the bundle once (ONNX Runtime when the bundle has ``model.onnx``) and turns
batches of file paths into result rows with the local engine's own functions
(:func:`~mpoxscan.inference.batch.prepare_batch`,
:func:`~mpoxscan.inference.batch.prediction_rows`), so both engines write the same rows, in the
same order. On one machine a local Ray is started for the run and shut down after it; with
``RAY_ADDRESS`` (or an address) it connects to that cluster instead; then the bundle and the
photos must be readable at the same paths on every node (absolute paths on a shared file
system: relative ones resolve against each worker's folder, which is the driver's only on a
local Ray).

Only this module imports Ray, and only :func:`~mpoxscan.inference.engines.open_engine` with
``engine="ray"`` imports this module.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray

from mpoxscan.inference.batch import BatchConfig, Row, chunked, prediction_rows, prepare_batch
from mpoxscan.inference.bundle import read_bundle_meta
from mpoxscan.inference.predictor import Predictor

#: Ray Data loggers quieted during a run (their per-dataset plans and stats lines).
_RAY_DATA_LOGGERS = ("ray.data",)


@dataclass(frozen=True)
class RayConfig:
    """How the Ray engine runs.

    Attributes:
        address: the cluster to connect to; ``None``: ``RAY_ADDRESS`` when set, else a local
            Ray started for the run.
        num_cpus: CPUs of the local Ray (ignored when connecting to a cluster).
        actors: prediction actors; ``None``: as many as the cluster's CPUs allow (one on a
            2-CPU local Ray), grown by Ray Data as work comes.
        cpus_per_actor: CPUs reserved by each actor, and its ONNX Runtime threads. On 2 cores
            one actor with 2 threads beat 2 actors with 1 (benchmarks/speed.md): Ray's own
            processes take CPU too.
        files_per_dataset: paths per Ray dataset; the file list is handed to Ray in pieces of
            this size, which bounds the driver's memory on huge folders.
        object_store_bytes: object store of the local Ray (only paths and rows pass through).
    """

    address: str | None = None
    num_cpus: int = 2
    actors: int | None = None
    cpus_per_actor: int = 2
    files_per_dataset: int = 10_000
    object_store_bytes: int = 256 * 1024 * 1024


class RayPredictBatch:
    """The Ray Data ``map_batches`` callable: loads the bundle once per actor.

    Args:
        bundle_dir: the bundle folder (readable on every node).
        threads: ONNX Runtime intra-op threads.
    """

    def __init__(self, bundle_dir: str, threads: int):
        self.predictor = Predictor.load(bundle_dir, threads=threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Turn a batch of ``path`` strings into ``row`` JSON strings, in order."""
        files = [Path(path) for path in batch["path"]]
        predictor = self.predictor
        prepared = prepare_batch(files, predictor.image_size_, predictor.quality)
        rows = prediction_rows(predictor, prepared)
        # JSON keeps the rows exactly as the local engine makes them (floats round-trip).
        return {"row": np.array([json.dumps(row) for row in rows], dtype=object)}


class RayEngine:
    """Predict with Ray Data; load it with :meth:`RayEngine.load`.

    Args:
        bundle_dir: the bundle folder.
        config: batching settings (``batch_size`` is the ``map_batches`` batch size).
        ray_config: the Ray settings.

    Attributes:
        classes_: the bundle's classes, in output order.
        threshold_: the decision threshold on the positive-class probability (``None``
            without a positive class).
    """

    def __init__(self, bundle_dir: Path, config: BatchConfig, ray_config: RayConfig):
        self.bundle_dir = bundle_dir
        self.config = config
        self.ray_config = ray_config

    @classmethod
    def load(
        cls,
        bundle_dir: str | Path,
        config: BatchConfig | None = None,
        ray_config: RayConfig | None = None,
    ) -> RayEngine:
        """Check the bundle and make the engine (Ray starts when the engine is called).

        Raises:
            BundleError: the bundle is invalid.
        """
        engine = cls(Path(bundle_dir).resolve(), config or BatchConfig(), ray_config or RayConfig())
        meta = read_bundle_meta(engine.bundle_dir)
        engine.classes_ = list(meta.classes)
        engine.threshold_ = meta.threshold if meta.positive_class else None
        return engine

    def __call__(self, files: Iterable[Path]) -> Iterator[list[Row]]:
        """Yield the rows of each batch of ``files``, in order; Ray runs only meanwhile."""
        started = _start_ray(self.ray_config)
        context = ray.data.DataContext.get_current()
        saved = _quiet(context)
        try:
            for chunk in chunked(files, self.ray_config.files_per_dataset):
                yield from self._predict_chunk(chunk)
        finally:
            _restore(context, saved)
            if started:
                ray.shutdown()

    def _predict_chunk(self, files: list[Path]) -> Iterator[list[Row]]:
        batch_size = self.config.batch_size
        actors = self.ray_config.actors
        # At least a block per actor, so that every actor gets work.
        blocks = max(actors or 1, -(-len(files) // batch_size))
        pool = (
            ray.data.ActorPoolStrategy(min_size=1, max_size=None)
            if actors is None
            else ray.data.ActorPoolStrategy(size=actors)
        )
        items = ray.data.from_items(
            [{"path": str(path)} for path in files], override_num_blocks=blocks
        )
        with warnings.catch_warnings():
            # Ray 2.5x deprecates extra remote args such as max_restarts but names no
            # replacement for it yet.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            dataset = items.map_batches(
                RayPredictBatch,
                fn_constructor_kwargs={
                    "bundle_dir": str(self.bundle_dir),
                    "threads": self.ray_config.cpus_per_actor,
                },
                batch_size=batch_size,
                batch_format="numpy",
                compute=pool,
                num_cpus=self.ray_config.cpus_per_actor,
                # No restarts: a failed run is resumed from its output file instead (and
                # restartable actors make Ray log an error line about their arguments).
                max_restarts=0,
            )
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            yield [json.loads(row) for row in batch["row"]]


def _start_ray(config: RayConfig) -> bool:
    """Connect to or start Ray; whether this call started it (and so must shut it down)."""
    if ray.is_initialized():
        return False
    common: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        # Ray's start-up warnings (e.g. about its token authentication) are not the user's.
        "logging_level": logging.ERROR,
    }
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(
            num_cpus=config.num_cpus,
            object_store_memory=config.object_store_bytes,
            **common,
        )
    return True


def _quiet(context: ray.data.DataContext) -> dict[str, Any]:
    """Keep rows in input order and silence Ray Data's own progress output; the old settings."""
    saved = {
        "preserve_order": context.execution_options.preserve_order,
        "enable_progress_bars": context.enable_progress_bars,
        "print_on_execution_start": context.print_on_execution_start,
        "levels": [logging.getLogger(name).level for name in _RAY_DATA_LOGGERS],
    }
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    for name in _RAY_DATA_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    return saved


def _restore(context: ray.data.DataContext, saved: dict[str, Any]) -> None:
    context.execution_options.preserve_order = saved["preserve_order"]
    context.enable_progress_bars = saved["enable_progress_bars"]
    context.print_on_execution_start = saved["print_on_execution_start"]
    for name, level in zip(_RAY_DATA_LOGGERS, saved["levels"], strict=True):
        logging.getLogger(name).setLevel(level)
