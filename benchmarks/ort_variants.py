"""CPU per photo of the bundled network under ONNX Runtime variants, and their accuracy cost.

Run: ``python benchmarks/ort_variants.py [--model models/default/model.onnx] [--only NAME ...]``

Every variant is one graph (the fp32 ``model.onnx`` or an int8 graph quantised from it) and one
set of session options. Each runs alone with one intra-op thread (the local engine's layout,
section (e) of benchmarks/speed.md), batches of 8 and 32 of real photos, and its cost is the
process CPU time per photo (``time.process_time``: steadier than wall time on a shared machine),
best and median of ``--repeats`` runs of at least ``--seconds`` each. Accuracy: the largest
|p - p_fp32| of the positive class and the largest relative change of the embedding
(``|e - e_fp32| / |e_fp32|``) over the MSLD photos, and ROC AUC there (most of them are training
photos of the bundle, so only differences between variants count; the export's own check on
held-out photos is ``mpoxscan export --quantize int8``).

Calibration photos for the int8 graphs: ``--calibration`` photos spread evenly over the
other four sources of ../shared/data (none from MSLD), read as every path reads them, each
also mirrored (``quantize_graph`` of ``mpoxscan.evaluation.quantize``, whose recipe the
``shipped`` variant is). ``--profile`` writes ONNX Runtime's per-node profile of chosen variants
and prints the time by operator type.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from sklearn.metrics import roc_auc_score

from _common import REPO_ROOT, machine
from mpoxscan.data.photos import photo_pixels, read_photo
from mpoxscan.evaluation.quantize import (
    EARLY_CONVS,
    QuantizeConfig,
    classifier_nodes,
    quantize_graph,
)
from mpoxscan.inference.onnx_runtime import INPUT_NAME

DATA = REPO_ROOT.parent / "shared" / "data"
SIZE = 224
SUFFIXES = {".jpg", ".jpeg", ".png"}


@dataclass(frozen=True)
class Variant:
    """One graph and its session options.

    Attributes:
        graph: ``"fp32"`` or the name of an int8 recipe in ``RECIPES``.
        level: ONNX Runtime graph optimisation level.
        disabled: graph optimisers switched off (e.g. ``NchwcTransformer``).
        config: extra session config entries.
    """

    graph: str
    level: str = "all"
    disabled: tuple[str, ...] = ()
    config: dict[str, str] = field(default_factory=dict)


LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

NO_SPIN = {"session.intra_op.allow_spinning": "0"}

VARIANTS: dict[str, Variant] = {
    "fp32": Variant("fp32", config=NO_SPIN),
    "fp32 spinning": Variant("fp32", config={"session.intra_op.allow_spinning": "1"}),
    "fp32 extended": Variant("fp32", level="extended", config=NO_SPIN),
    "fp32 no NCHWc": Variant("fp32", disabled=("NchwcTransformer",), config=NO_SPIN),
    "fp32 denormals as zero": Variant(
        "fp32", config={**NO_SPIN, "session.set_denormal_as_zero": "1"}
    ),
    "int8 shipped (QDQ, float ends; export --int8-float ends)": Variant("shipped", config=NO_SPIN),
    "int8 pointwise only, depthwise float": Variant("pointwise", config=NO_SPIN),
    "int8 all convs QDQ U8S8 per-channel reduce_range (export --int8-float head)": Variant(
        "head", config=NO_SPIN
    ),
    "int8 all convs QDQ U8S8 per-channel": Variant("all-fullrange", config=NO_SPIN),
    "int8 all convs QDQ U8S8 per-tensor reduce_range": Variant("all-pertensor", config=NO_SPIN),
    "int8 all convs QDQ U8U8 per-channel": Variant("all-u8u8", config=NO_SPIN),
    "int8 all convs QOperator U8S8 per-channel reduce_range": Variant("all-qop", config=NO_SPIN),
    "int8 all convs but the stem QDQ": Variant("all-but-ends", config=NO_SPIN),
    "int8 all convs but the first 6 (stem, blocks 0-1; export --int8-float early)": Variant(
        "early", config=NO_SPIN
    ),
    "int8 all convs but the first 9 (stem, blocks 0-2)": Variant("early-9", config=NO_SPIN),
    "int8 all convs but the first 12 (stem, blocks 0-3)": Variant("early-12", config=NO_SPIN),
    "int8 all convs but the first 18 (stem, blocks 0-5)": Variant("early-18", config=NO_SPIN),
    "int8 dynamic (ConvInteger/MatMulInteger)": Variant("dynamic", config=NO_SPIN),
}


def _node_names(path: Path, keep: Callable[[object, int], bool]) -> list[str]:
    """Names of the nodes of a graph that ``keep(node, group)`` selects."""
    import onnx

    nodes = onnx.load(str(path)).graph.node
    out = []
    for node in nodes:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if keep(node, group):
            out.append(node.name)
    return out


def _static(
    source: Path,
    target: Path,
    calib: np.ndarray,
    *,
    exclude: Callable[[object, int], bool] | None = None,
    per_channel: bool = True,
    reduce_range: bool = True,
    fmt: str = "QDQ",
    activation: str = "QUInt8",
    weight: str = "QInt8",
) -> None:
    """A static int8 graph with the given options (ONNX Runtime's ``quantize_static``).

    The classifier (the nodes that read the embedding) stays float in every recipe, as
    ``keep_float`` does in the export; ``exclude`` selects more nodes to keep float.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = np.concatenate([calib, calib[..., ::-1]])

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(
                {INPUT_NAME: np.ascontiguousarray(batches[i : i + 1])} for i in range(len(batches))
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    prepared = target.with_suffix(".pre.onnx")
    quant_pre_process(str(source), str(prepared))
    import onnx

    excluded = classifier_nodes(onnx.load(str(prepared)))
    excluded += _node_names(prepared, exclude) if exclude else []
    quantize_static(
        str(prepared),
        str(target),
        Reader(),
        quant_format=getattr(QuantFormat, fmt),
        per_channel=per_channel,
        activation_type=getattr(QuantType, activation),
        weight_type=getattr(QuantType, weight),
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=excluded,
        reduce_range=reduce_range,
    )


def build(recipe: str, source: Path, target: Path, calib: np.ndarray) -> None:
    """Write the int8 graph of ``recipe`` to ``target``."""
    import onnx

    first_conv = next(n.name for n in onnx.load(str(source)).graph.node if n.op_type == "Conv")
    if recipe == "shipped":
        quantize_graph(source, target, calib, QuantizeConfig())
    elif recipe == "pointwise":
        # Depthwise convs and the stem stay float; every 1x1 conv is int8.
        _static(
            source,
            target,
            calib,
            exclude=lambda n, g: g > 1 or n.name == first_conv,
        )
    elif recipe == "head":
        quantize_graph(source, target, calib, QuantizeConfig(keep_float="head"))
    elif recipe == "all-fullrange":
        _static(source, target, calib, reduce_range=False)
    elif recipe == "all-pertensor":
        _static(source, target, calib, per_channel=False)
    elif recipe == "all-u8u8":
        _static(source, target, calib, weight="QUInt8", reduce_range=False)
    elif recipe == "all-qop":
        _static(source, target, calib, fmt="QOperator")
    elif recipe == "all-but-ends":
        _static(source, target, calib, exclude=lambda n, g: n.name == first_conv)
    elif recipe.startswith("early"):  # early or early-N: the first N convolutions float
        convs = int(recipe.partition("-")[2] or EARLY_CONVS)
        config = QuantizeConfig(keep_float="early", early_convs=convs)
        quantize_graph(source, target, calib, config)
    elif recipe == "dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(source), str(target), weight_type=QuantType.QUInt8)
    else:
        raise ValueError(recipe)


def session(path: Path, variant: Variant, profile: str | None = None) -> ort.InferenceSession:
    """A one-thread session of ``path`` with the variant's options."""
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[variant.level]
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    for key, value in variant.config.items():
        options.add_session_config_entry(key, value)
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    return ort.InferenceSession(
        str(path),
        sess_options=options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(variant.disabled) or None,
    )


def cpu_ms_per_photo(
    sess: ort.InferenceSession, pixels: np.ndarray, batch: int, seconds: float, repeats: int
) -> list[float]:
    """Process CPU ms per photo of ``repeats`` runs of at least ``seconds`` each."""
    feed = {INPUT_NAME: np.ascontiguousarray(pixels[:batch])}
    for _ in range(3):
        sess.run(None, feed)
    results = []
    for _ in range(repeats):
        calls, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - wall0 < seconds:
            sess.run(None, feed)
            calls += 1
        results.append((time.process_time() - cpu0) * 1000 / (calls * batch))
    return results


def outputs(sess: ort.InferenceSession, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positive-class probability and embedding of every photo."""
    probs, embs = [], []
    for i in range(0, len(pixels), 16):
        p, e = sess.run(None, {INPUT_NAME: pixels[i : i + 16]})
        probs.append(p[:, 1])
        embs.append(e)
    return np.concatenate(probs).astype(np.float64), np.concatenate(embs)


def photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)


def pixels_of(paths: list[Path]) -> np.ndarray:
    arrays = [photo_pixels(read_photo(p, SIZE), SIZE).transpose(2, 0, 1) for p in paths]
    return np.stack(arrays).astype(np.float32)


def calibration_paths(count: int) -> list[Path]:
    """``count`` photos taken in turn from each (source, class) folder other than MSLD."""
    queues = [
        photos(d)
        for src in sorted(DATA.iterdir())
        if src.is_dir() and src.name != "msld-v1"
        for d in sorted(src.iterdir())
        if d.is_dir()
    ]
    chosen: list[Path] = []
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(len(queue) // 2))
    return chosen


def _kind(event: dict) -> tuple[str, float]:
    """An ONNX Runtime node event's operator, refined for convolutions, and its multiply-adds."""
    args = event["args"]
    op = args.get("op_name", "?")
    shapes = [next(iter(s.values())) for s in args.get("input_type_shape", [])]
    out = [next(iter(s.values())) for s in args.get("output_type_shape", [])]
    weights = [s for s in shapes[1:] if len(s) == 4]
    if "Conv" in op and not weights:  # int8 weights are prepacked: go by the layer's name
        name = event["name"]
        kind = "depthwise" if "depthwise" in name else "full kxk" if "stem" in name else "1x1"
        return f"{op} {kind}", 0.0
    if "Conv" not in op or not out:
        return op, 0.0
    w = weights[0]
    kind = "1x1" if w[2] == 1 else ("depthwise" if w[1] == 1 else "full kxk")
    return f"{op} {kind}", float(np.prod(out[0]) * w[1] * w[2] * w[3])


def op_profile(path: str) -> dict[str, tuple[float, float]]:
    """Microseconds and multiply-adds per operator kind in an ONNX Runtime profile."""
    events = json.loads(Path(path).read_text())
    by_op: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            kind, macs = _kind(event)
            by_op[kind][0] += event["dur"]
            by_op[kind][1] += macs
    return {k: (v[0], v[1]) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1][0])}


def print_profile(name: str, sess: ort.InferenceSession, pixels: np.ndarray) -> None:
    """Run 20 batches of 8 under the profiler and print the kernel time by operator kind."""
    feed = {INPUT_NAME: pixels[:8]}
    for _ in range(20):
        sess.run(None, feed)
    by_op = op_profile(sess.end_profiling())
    total = sum(us for us, _ in by_op.values())
    calls = 20 * 8
    print(f"\nprofile of {name}: {total / calls / 1000:.2f} ms per photo in kernels")
    for op, (us, macs) in by_op.items():
        rate = f", {macs / us / 1000:.1f} GMAC/s" if macs else ""
        print(f"  {op}: {us / total:.1%} ({us / calls / 1000:.2f} ms/photo{rate})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "models/default/model.onnx")
    parser.add_argument("--only", nargs="*", help="variant names (default: all)")
    parser.add_argument("--batches", type=int, nargs="*", default=[8, 32])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calibration", type=int, default=128)
    parser.add_argument("--work", type=Path, help="keep the int8 graphs here")
    parser.add_argument("--profile", nargs="*", default=[], help="variants to profile")
    args = parser.parse_args()
    print(f"machine: {machine()}; onnxruntime {ort.__version__}")

    msld = photos(DATA / "msld-v1")
    labels = np.array([p.parent.name == "Monkey Pox" for p in msld], dtype=int)
    test_pixels = pixels_of(msld)
    calib = pixels_of(calibration_paths(args.calibration))
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)

        def graph_of(variant: Variant) -> Path:
            if variant.graph == "fp32":
                return args.model
            target = work / f"{variant.graph}.onnx"
            if not target.exists():
                build(variant.graph, args.model, target, calib)
            return target

        p_ref, e_ref = outputs(session(args.model, VARIANTS["fp32"]), test_pixels)
        header = " | ".join(f"batch {b} CPU ms/photo best / median" for b in args.batches)
        print(f"| variant | {header} | max abs dp | max rel d embedding | ROC AUC (MSLD) |")
        for name in args.only or list(VARIANTS):
            sess = session(graph_of(VARIANTS[name]), VARIANTS[name])
            p, e = outputs(sess, test_pixels)
            dp = float(np.abs(p - p_ref).max())
            de = float((np.linalg.norm(e - e_ref, axis=1) / np.linalg.norm(e_ref, axis=1)).max())
            cells = []
            for b in args.batches:
                runs = cpu_ms_per_photo(sess, test_pixels, b, args.seconds, args.repeats)
                cells.append(f"{min(runs):.2f} / {statistics.median(runs):.2f}")
            auc = roc_auc_score(labels, p)
            print(f"| {name} | {' | '.join(cells)} | {dp:.4f} | {de:.3f} | {auc:.4f} |", flush=True)
        for name in args.profile:
            variant = VARIANTS[name]
            prefix = str(work / f"profile-{variant.graph}")
            print_profile(name, session(graph_of(variant), variant, profile=prefix), test_pixels)
    print(f"machine after: {machine()}")


if __name__ == "__main__":
    main()
