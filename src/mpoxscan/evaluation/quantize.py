"""int8 export: ONNX Runtime static quantisation of a bundle's graph, with an accuracy check.

``quantize_bundle`` quantises ``model.onnx`` (QDQ, per-channel int8 weights, uint8
activations) with ranges calibrated on the bundle's training photos of every class and source,
then runs the fp32 and int8 graphs on the bundle's held-out photos. It keeps the int8 graph
(``model.int8.onnx``, hashed in ``model.json`` and recorded as the graph that runs) only when
its ROC AUC is within ``max_auc_drop`` of fp32's; otherwise nothing is written and fp32 keeps
running.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mpoxscan.data.datasets import ImageRecord
from mpoxscan.data.photos import photo_pixels, read_photo
from mpoxscan.data.sources import load_sources
from mpoxscan.errors import BundleError
from mpoxscan.evaluation.evaluate import bundle_split
from mpoxscan.evaluation.metrics import binary_metrics
from mpoxscan.inference.bundle import (
    ONNX_FILE,
    BundleMeta,
    read_bundle_meta,
    update_bundle_files,
)
from mpoxscan.inference.onnx_runtime import INPUT_NAME, OUTPUT_NAMES, OnnxModel

#: The int8 graph's file in a bundle.
INT8_FILE = "model.int8.onnx"

#: ``model.json`` key naming the ONNX graph that predict and serve run.
RUNS_KEY = "runs"

#: The int8 graph is refused when its held-out ROC AUC is lower than fp32's by more than this.
MAX_AUC_DROP = 0.005

#: Photos per calibration and evaluation batch.
_BATCH = 16

#: What ``QuantizeConfig.keep_float`` may name (see there).
KEEP_FLOAT = ("ends", "early", "head")

#: Default ``QuantizeConfig.early_convs``: in EfficientNet-Lite0 the stem and the
#: first two blocks (112x112 feature maps, and a 16-channel bottleneck every later layer reads).
EARLY_CONVS = 6


@dataclass(frozen=True)
class QuantizeConfig:
    """How :func:`quantize_bundle` quantises.

    Attributes:
        method: calibration method of ONNX Runtime (``minmax``, ``entropy``, ``percentile``).
        max_calibration_photos: training photos used for calibration at most, spread evenly
            over the (source folder, class) groups; each is also used mirrored.
        keep_float: which layers stay in float.
            ``"ends"`` (the default): the first convolution (the stem, which sees raw pixels),
            the classifier head, and every depthwise convolution with the convolution that
            reads its output. Measured on the bundled EfficientNet-Lite0
            (benchmarks/accuracy.md): the embedding moves by about 7% (about 50% with every
            convolution in int8), but on an AVX2 CPU without VNNI the graph is no faster than
            fp32 (the float and int8 layers alternate, and every switch costs a conversion).
            ``"early"``: the first ``early_convs`` convolutions and the classifier (the
            nodes that read the embedding) in float, every later convolution in int8: about
            1.5x less CPU per photo than fp32 on that CPU; the embedding moves by about 30%
            at most and single probabilities by up to 0.35 on MSLD (benchmarks/speed.md,
            section (f)).
            ``"head"``: only the classifier in float: as fast, but probabilities move by up
            to 0.6-0.8.
        early_convs: the convolutions ``keep_float="early"`` leaves in float.
        reduce_range: 7-bit weights. x86 CPUs without VNNI (AVX2) multiply uint8 activations
            by int8 weights in 16-bit sums that saturate; 7 bits keep them exact
            (benchmarks/accuracy.md measured the difference).
        max_auc_drop: the refusal bound on the held-out ROC AUC.
    """

    method: str = "minmax"
    max_calibration_photos: int = 256
    keep_float: str = "ends"
    early_convs: int = EARLY_CONVS
    reduce_range: bool = True
    max_auc_drop: float = MAX_AUC_DROP


@dataclass(frozen=True)
class ModelScore:
    """Held-out accuracy of one graph at the bundle's screening threshold."""

    roc_auc: float
    sensitivity: float
    specificity: float


@dataclass
class QuantizeReport:
    """The outcome of :func:`quantize_bundle`.

    Attributes:
        accepted: the int8 graph was kept and now runs.
        path: the written int8 graph (``None`` when refused).
        fp32: held-out scores of ``model.onnx``.
        int8: held-out scores of the int8 graph.
        max_abs_diff: the largest |p_int8 - p_fp32| on the held-out photos.
        threshold: the screening threshold the scores use.
        n_calibration: calibration photos (before mirroring).
        n_held_out: held-out photos.
        max_auc_drop: the refusal bound.
        keep_float: the layers left in float (``QuantizeConfig.keep_float``).
    """

    accepted: bool
    path: Path | None
    fp32: ModelScore
    int8: ModelScore
    max_abs_diff: float
    threshold: float
    n_calibration: int
    n_held_out: int
    max_auc_drop: float
    keep_float: str = "ends"

    def lines(self) -> list[str]:
        """The accuracy check as lines of text (the CLI prints them)."""
        rows = [
            f"held-out photos: {self.n_held_out}; calibration photos: {self.n_calibration}; "
            f"screening threshold {self.threshold:.3f}; kept in float: {self.keep_float}",
        ]
        for name, score in (("fp32", self.fp32), ("int8", self.int8)):
            rows.append(
                f"{name}: ROC AUC {score.roc_auc:.4f}, sensitivity {score.sensitivity:.3f}, "
                f"specificity {score.specificity:.3f}"
            )
        rows.append(f"largest |p_int8 - p_fp32|: {self.max_abs_diff:.4f}")
        drop = self.fp32.roc_auc - self.int8.roc_auc
        if self.accepted:
            rows.append(f"kept {self.path}: AUC drop {drop:+.4f} <= {self.max_auc_drop}")
        else:
            rows.append(
                f"refused: AUC drop {drop:+.4f} > {self.max_auc_drop}; "
                f"{ONNX_FILE} (fp32) keeps running"
            )
        return rows


def quantize_bundle(
    bundle_dir: str | Path,
    data_dir: str | Path | None = None,
    config: QuantizeConfig | None = None,
) -> QuantizeReport:
    """Quantise a bundle's ONNX graph to int8 and keep it only if accuracy holds.

    Args:
        bundle_dir: a bundle with ``model.onnx`` (``mpoxscan export --format onnx``).
        data_dir: the bundle's training data; default the ``data_dir`` recorded in the bundle.
        config: quantisation settings.

    Returns:
        The :class:`QuantizeReport` (``accepted`` says whether the int8 graph was kept).

    Raises:
        BundleError: the bundle has no ONNX graph, is not binary, or ``data_dir`` is not the
            data it was trained on (the check needs its held-out photos).
    """
    config = config or QuantizeConfig()
    bundle = Path(bundle_dir)
    meta = read_bundle_meta(bundle)
    if ONNX_FILE not in meta.files:
        raise BundleError(f"{bundle} has no {ONNX_FILE}: run mpoxscan export --format onnx first")
    if meta.positive_class is None or not meta.binary:
        raise BundleError("int8 export checks a binary screening model; this bundle is not one")
    calibration, held_out = _photos(meta, data_dir)
    size = meta.preprocessing.image_size
    calib_records = _spread(calibration, config.max_calibration_photos)
    calib_pixels = _pixels(calib_records, size)
    held_pixels = _pixels(held_out, size)
    labels = np.array([r.class_name == meta.positive_class for r in held_out], dtype=int)
    threshold = meta.threshold

    with tempfile.TemporaryDirectory(dir=bundle, prefix=".int8-") as work:
        candidate = Path(work) / INT8_FILE
        quantize_graph(bundle / ONNX_FILE, candidate, calib_pixels, config)
        p_fp32 = _positive(OnnxModel(bundle / ONNX_FILE), held_pixels)
        p_int8 = _positive(OnnxModel(candidate), held_pixels)
        fp32, int8 = _score(labels, p_fp32, threshold), _score(labels, p_int8, threshold)
        accepted = fp32.roc_auc - int8.roc_auc <= config.max_auc_drop
        report = QuantizeReport(
            accepted=accepted,
            path=bundle / INT8_FILE if accepted else None,
            fp32=fp32,
            int8=int8,
            max_abs_diff=float(np.abs(p_int8 - p_fp32).max()),
            threshold=threshold,
            n_calibration=len(calib_records),
            n_held_out=len(held_out),
            max_auc_drop=config.max_auc_drop,
            keep_float=config.keep_float,
        )
        if accepted:
            os.replace(candidate, bundle / INT8_FILE)
            update_bundle_files(
                bundle, {RUNS_KEY: INT8_FILE, "int8": _int8_meta(report, config)}, [INT8_FILE]
            )
        elif meta.document.get(RUNS_KEY, ONNX_FILE) != ONNX_FILE:
            update_bundle_files(bundle, {RUNS_KEY: ONNX_FILE})  # an older int8 graph stops
    return report


def quantize_graph(
    source: Path, target: Path, calibration: np.ndarray, config: QuantizeConfig
) -> None:
    """Statically quantise an ONNX graph (QDQ, per-channel int8 weights, uint8 activations).

    Args:
        source: the fp32 graph.
        target: where to write the int8 graph.
        calibration: ``(N, 3, S, S)`` 0-255 pixels; used as they are and mirrored.
        config: the settings.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if config.method not in methods:
        raise ValueError(f"method must be one of {sorted(methods)}, got {config.method!r}")
    if config.keep_float not in KEEP_FLOAT:
        raise ValueError(f"keep_float must be one of {KEEP_FLOAT}, got {config.keep_float!r}")
    batches = np.concatenate([calibration, calibration[..., ::-1]])

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                # One photo per call: the histogram calibrators need equal-sized batches.
                {INPUT_NAME: np.ascontiguousarray(batches[i : i + 1])}
                for i in range(len(batches))
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    prepared = target.with_name(f".{target.name}.pre.onnx")
    try:
        quant_pre_process(str(source), str(prepared))
        graph = onnx.load(str(prepared))
        excluded = _float_nodes(graph, config)
        quantize_static(
            str(prepared),
            str(target),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[config.method],
            nodes_to_exclude=excluded,
            reduce_range=config.reduce_range,
        )
    finally:
        prepared.unlink(missing_ok=True)


def _float_nodes(model: Any, config: QuantizeConfig) -> list[str]:
    """Names of the nodes ``config.keep_float`` leaves in float (see ``QuantizeConfig``)."""
    if config.keep_float == "ends":
        return _float_ends(model)
    early: list[str] = []
    if config.keep_float == "early":  # every node before the first int8 conv, in graph order
        convs = 0
        for node in model.graph.node:
            convs += node.op_type == "Conv"
            if convs > config.early_convs:
                break
            early.append(node.name)
    return [*early, *classifier_nodes(model)]


def _float_ends(model: Any) -> list[str]:
    """Names of the nodes kept in float by ``keep_float="ends"`` (see ``QuantizeConfig``)."""
    nodes = list(model.graph.node)
    producer = {output: node for node in nodes for output in node.output}
    convs = [node for node in nodes if node.op_type == "Conv"]
    depthwise = {node.name for node in convs if _groups(node) > 1}
    readers = [node.name for node in convs if _reads_depthwise(node, producer, depthwise)]
    head = [node.name for node in nodes if node.op_type in ("Gemm", "MatMul")]
    return list(dict.fromkeys([convs[0].name, *sorted(depthwise), *readers, *head]))


def classifier_nodes(model: Any) -> list[str]:
    """Names of the nodes that read the embedding, directly or not (the classifier)."""
    reached, names = {OUTPUT_NAMES[1]}, []
    for node in model.graph.node:  # topologically sorted, as ONNX requires
        if reached.intersection(node.input):
            names.append(node.name)
            reached.update(node.output)
    return names


def _groups(node: Any) -> int:
    return next((attr.i for attr in node.attribute if attr.name == "group"), 1)


def _reads_depthwise(node: Any, producer: dict[str, Any], depthwise: set[str]) -> bool:
    """Whether a convolution's input comes from a depthwise one (through its activation)."""
    source = producer.get(node.input[0])
    while source is not None and source.op_type in ("Clip", "Relu"):
        source = producer.get(source.input[0])
    return source is not None and source.name in depthwise


def _photos(
    meta: BundleMeta, data_dir: str | Path | None
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Training (calibration) and held-out test photos of the bundle's own split."""
    data_cfg = meta.config.get("data", {})
    recorded = [data_cfg.get("data_dir"), *data_cfg.get("more_data", [])]
    paths = [data_dir] if data_dir else recorded
    root = ", ".join(str(p) for p in paths)
    if not paths[0] or not all(Path(p).exists() for p in paths):
        raise BundleError(
            f"int8 export needs the bundle's training data for calibration and its accuracy "
            f"check, and {root!r} is not a dataset folder or data manifest: pass --data"
        )
    index = load_sources(
        paths,
        positive=data_cfg.get("positive"),
        multiclass=bool(data_cfg.get("multiclass", False)),
        patient_pattern=data_cfg.get("patient_pattern"),
    )
    split = bundle_split(index, meta)
    if split is None or not split.test or not split.train:
        raise BundleError(
            f"{root} is not the data this bundle was trained on (its fingerprint differs), so "
            "its held-out photos are unknown: pass --data with the training data"
        )
    return split.train + split.val, split.test


def _spread(records: Sequence[ImageRecord], limit: int) -> list[ImageRecord]:
    """At most ``limit`` records, taken in turn from each (source folder, class) group."""
    groups: dict[Path, list[ImageRecord]] = defaultdict(list)
    for record in records:
        groups[record.path.parent].append(record)
    queues = [list(group) for _, group in sorted(groups.items())]
    chosen: list[ImageRecord] = []
    while len(chosen) < limit and any(queues):
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(queue.pop(0))
    return chosen


def _pixels(records: Sequence[ImageRecord], size: int) -> np.ndarray:
    """Model input of photos read as every path reads them; unreadable ones are left out."""
    arrays = [photo_pixels(read_photo(r.path, size), size).transpose(2, 0, 1) for r in records]
    return np.stack(arrays).astype(np.float32)


def _positive(model: OnnxModel, pixels: np.ndarray) -> np.ndarray:
    chunks = [model.run(pixels[i : i + _BATCH])[0][:, 1] for i in range(0, len(pixels), _BATCH)]
    return np.concatenate(chunks).astype(np.float64)


def _score(labels: np.ndarray, p: np.ndarray, threshold: float) -> ModelScore:
    found = binary_metrics(labels, p, threshold=threshold, n_boot=0)
    return ModelScore(
        float(found["roc_auc"]), float(found["sensitivity"]), float(found["specificity"])
    )


def _int8_meta(report: QuantizeReport, config: QuantizeConfig) -> dict[str, Any]:
    return {
        "file": INT8_FILE,
        "method": config.method,
        "per_channel": True,
        "format": "QDQ",
        "keep_float": config.keep_float,
        **({"early_convs": config.early_convs} if config.keep_float == "early" else {}),
        "reduce_range": config.reduce_range,
        "calibration_photos": report.n_calibration,
        "held_out_photos": report.n_held_out,
        "roc_auc_fp32": report.fp32.roc_auc,
        "roc_auc_int8": report.int8.roc_auc,
        "max_abs_diff": report.max_abs_diff,
    }
