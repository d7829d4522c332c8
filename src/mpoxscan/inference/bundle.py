"""Model bundles: a folder of safetensors weights, an optional ONNX graph and ``model.json``.

A bundle never contains pickles: weights are ``safetensors``, everything else JSON, so loading
a bundle from someone else cannot run their code. ``model.json["files"]`` records the SHA-256
of every file the bundle relies on, and :func:`read_bundle_meta` checks each one on every load,
so a truncated download or an edited weight file is refused instead of silently mispredicting.
An ONNX graph must be self-contained (no external data files, which no hash would cover).

:class:`BundleMeta` is ``model.json`` read and validated once (hashes included); the predictor,
the ONNX export, evaluation, the model card and the web service take it instead of reading the
file again.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mpoxscan.data.preprocessing import Preprocessing
from mpoxscan.errors import BundleError
from mpoxscan.hashing import file_sha256
from mpoxscan.inference.atomic_folder import left_old_folder, replacing_folder

if TYPE_CHECKING:
    from torch import nn

    from mpoxscan.inference.no_lesion import NoLesionDetector
    from mpoxscan.inference.quality import NeighbourOodDetector, OodDetector

FORMAT_VERSION = 1
META_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"
OOD_FILE = "ood.safetensors"
NO_LESION_FILE = "no_lesion.safetensors"
#: ``ood.method`` of the Gaussian detector (bundles without a method have it).
MAHALANOBIS = "mahalanobis-ledoit-wolf"

#: Keys that ``save_bundle`` needs in ``meta``; the others have defaults.
REQUIRED_META_KEYS = ("architecture", "classes", "preprocessing")

#: Suffixes of formats that can run code when loaded; a bundle listing one is refused.
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib"})


@dataclass(frozen=True)
class ArchitectureSpec:
    """The network a bundle's weights fit: ``create_model(name, num_outputs=..., ...)``."""

    name: str
    num_outputs: int
    image_size: int
    dropout: float | None = None


@dataclass(frozen=True, eq=False)
class BundleMeta(Mapping[str, Any]):
    """A bundle's ``model.json``, validated: typed fields for what mpoxscan reads from it.

    Build it with :func:`read_bundle_meta` (which also checks every file's hash) or
    :meth:`from_json`; never edit it: :func:`update_bundle_files` writes a new one. Keys that
    mpoxscan does not interpret (``data``, ``training``, ``onnx``, ``cross_validation``, notes
    added with ``update_bundle_files``) are kept as read, and ``meta["key"]`` reads any key of
    the JSON object, so the on-disk format stays exactly what it was. It compares equal to
    the same object as a dict.

    Attributes:
        format_version: :data:`FORMAT_VERSION`.
        architecture: the network to rebuild.
        classes: class names in output order (docs/architecture.md, "Labels").
        positive_class: the screened-for class, or ``None``.
        multiclass: softmax over ``classes`` rather than one logit.
        preprocessing: input size and normalisation.
        temperature: logits are divided by it (calibration); 1.0 when unset.
        threshold: decision threshold on the positive-class probability; 0.5 when unset.
        files: file name to SHA-256 of every file the bundle relies on.
        ood: how the out-of-domain detector is stored, or ``None``.
        config, metrics: the recipe and the measured figures, as recorded.
        command, data_fingerprint, mpoxscan_version, created: provenance, or ``None``.
    """

    format_version: int
    architecture: ArchitectureSpec
    classes: tuple[str, ...]
    positive_class: str | None
    multiclass: bool
    preprocessing: Preprocessing
    temperature: float
    threshold: float
    files: Mapping[str, str]
    ood: Mapping[str, Any] | None
    config: Mapping[str, Any]
    metrics: Mapping[str, Any]
    command: str | None
    data_fingerprint: str | None
    mpoxscan_version: str | None
    created: str | None
    document: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], bundle_dir: str | Path = ".") -> BundleMeta:
        """Validate a ``model.json`` object (format and meaning; not the file hashes).

        Args:
            data: the parsed JSON object.
            bundle_dir: the bundle folder, named in error messages.

        Raises:
            BundleError: an unknown format version, or fields that are missing or contradict
                each other (see docs/architecture.md).
        """
        bundle = Path(bundle_dir)
        _check_format(bundle, data)
        if not isinstance(data.get("files"), dict):
            raise BundleError(
                f"{bundle / META_FILE} does not list the bundle's files and their SHA-256. "
                "Re-export the bundle."
            )
        arch, prep = data["architecture"], data["preprocessing"]
        try:
            return cls(
                format_version=int(data["format_version"]),
                architecture=ArchitectureSpec(
                    name=str(arch["name"]),
                    num_outputs=int(arch["num_outputs"]),
                    image_size=int(arch["image_size"]),
                    dropout=_float_or_none(arch.get("dropout")),
                ),
                classes=tuple(str(name) for name in data["classes"]),
                positive_class=data.get("positive_class"),
                multiclass=bool(data.get("multiclass", False)),
                preprocessing=Preprocessing(
                    int(prep["image_size"]),
                    tuple(float(v) for v in prep["mean"]),  # type: ignore[arg-type]
                    tuple(float(v) for v in prep["std"]),  # type: ignore[arg-type]
                ),
                temperature=_default(data.get("temperature"), 1.0),
                threshold=_default(data.get("threshold"), 0.5),
                files=dict(data["files"]),
                ood=data.get("ood") or None,
                config=data.get("config") or {},
                metrics=data.get("metrics") or {},
                command=data.get("command"),
                data_fingerprint=data.get("data_fingerprint"),
                mpoxscan_version=data.get("mpoxscan_version"),
                created=data.get("created"),
                document=json.loads(json.dumps(data)),
            )
        except (TypeError, ValueError) as err:
            raise BundleError(
                f"{bundle / META_FILE} is invalid: {err}. Re-export the bundle."
            ) from err

    @property
    def binary(self) -> bool:
        """One output logit (of the positive class): probabilities ``[1 - p, p]``."""
        return self.architecture.num_outputs == 1

    def to_json(self) -> dict[str, Any]:
        """The ``model.json`` object (a fresh copy, safe to change)."""
        return json.loads(json.dumps(self.document))

    def __getitem__(self, key: str) -> Any:
        return self.document[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.document)

    def __len__(self) -> int:
        return len(self.document)


def save_bundle(
    out_dir: str | Path,
    model: nn.Module,
    meta: Mapping[str, Any],
    *,
    ood: OodDetector | NeighbourOodDetector | None = None,
    no_lesion: NoLesionDetector | None = None,
    extra_files: Iterable[str | Path] = (),
) -> Path:
    """Write a model bundle: ``model.safetensors``, optional ``ood.safetensors``, ``model.json``.

    The bundle is built in a staging folder beside ``out_dir`` and switched in atomically
    (:func:`~mpoxscan.inference.atomic_folder.replacing_folder`), so an interrupted save
    leaves the old bundle (or nothing) in ``out_dir``, never a mix. Saving over an existing
    bundle replaces all of it (a stale ``model.onnx`` or ``evaluation/`` folder goes too).

    Args:
        out_dir: the bundle folder: new, empty, or an existing bundle (to replace).
        model: the trained network; its ``state_dict`` is saved.
        meta: at least ``architecture`` ({name, num_outputs, image_size, dropout}), ``classes``
            and ``preprocessing`` ({image_size, mean, std}); usually also ``positive_class``,
            ``multiclass``, ``temperature``, ``threshold``, ``config``, ``command``,
            ``data_fingerprint`` and ``metrics``. ``format_version``, ``mpoxscan_version``,
            ``created``, ``files`` and ``ood`` are filled in here. Dataclasses, numpy
            values and paths are converted to JSON; NaN and infinities become ``null``.
        ood: a fitted out-of-domain detector to store with the model.
        no_lesion: a fitted "no lesion seen" head to store with the model.
        extra_files: more files to copy into the bundle and hash (e.g. ``curves.png``).

    Returns:
        The bundle folder.

    Raises:
        BundleError: ``out_dir`` holds files but no bundle (they would be lost).
    """
    out = Path(out_dir)
    _refuse_foreign_folder(out)
    full_meta = _complete_meta(meta, out)
    with replacing_folder(out, start_from_old=False) as stage:
        _write_atomic(stage / WEIGHTS_FILE, lambda tmp: _save_state_dict(model, tmp))
        names = [WEIGHTS_FILE]
        full_meta["ood"] = None
        if ood is not None:
            full_meta["ood"] = _save_ood(stage, ood)
            names.append(OOD_FILE)
        full_meta["no_lesion"] = None
        if no_lesion is not None:
            full_meta["no_lesion"] = _save_no_lesion(stage, no_lesion)
            names.append(NO_LESION_FILE)
        names.extend(_copy_into(stage, Path(extra)) for extra in extra_files)
        full_meta["files"] = {name: file_sha256(stage / name) for name in names}
        _write_meta(stage, BundleMeta.from_json(full_meta, out))
    return out


def _refuse_foreign_folder(out: Path) -> None:
    """A folder with files but no ``model.json`` is someone's data, not a bundle to replace."""
    if out.is_dir() and not (out / META_FILE).exists() and any(out.iterdir()):
        raise BundleError(
            f"{out} holds files but no model bundle ({META_FILE}), so saving a bundle there "
            "would delete them. Choose a new or empty folder."
        )


def read_bundle_meta(bundle_dir: str | Path) -> BundleMeta:
    """Read and validate a bundle's ``model.json``, checking every file's SHA-256 (once each).

    Args:
        bundle_dir: the bundle folder.

    Returns:
        The validated metadata; pass it on rather than reading the bundle again.

    Raises:
        BundleError: the folder or ``model.json`` is missing or invalid, the format version
            is unknown, or a listed file is missing, of a pickle format, or changed.
    """
    bundle = Path(bundle_dir)
    meta = BundleMeta.from_json(_read_meta_json(bundle), bundle)
    _check_files(bundle, meta.files)
    return meta


def load_torch_model(
    bundle_dir: str | Path, meta: BundleMeta | None = None
) -> tuple[nn.Module, BundleMeta]:
    """Rebuild a bundle's network in PyTorch and load its weights (strictly).

    Args:
        bundle_dir: the bundle folder.
        meta: its metadata, when already read with :func:`read_bundle_meta` (then the files
            are not hashed again).

    Returns:
        ``(model, meta)``; the model is in eval mode on the CPU.

    Raises:
        BundleError: the bundle is invalid, its architecture is unknown to this version of
            mpoxscan, or the weights don't fit the architecture.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from mpoxscan.models import create_model

    meta = meta if meta is not None else read_bundle_meta(bundle_dir)
    arch = meta.architecture
    try:
        model = create_model(
            arch.name,
            num_outputs=arch.num_outputs,
            pretrained=False,
            dropout=arch.dropout,
            image_size=arch.image_size,
        )
    except KeyError as err:
        raise BundleError(
            f"The bundle {bundle_dir} uses architecture {arch.name!r}, which this version "
            f"of mpoxscan does not know ({err}). Upgrade mpoxscan or re-train the bundle."
        ) from err
    path = Path(bundle_dir) / WEIGHTS_FILE
    try:
        state = load_file(path)
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as err:
        raise BundleError(
            f"The weights in {path} do not fit architecture {arch.name!r} ({err}). The "
            "bundle is damaged or was written by another version: re-export or re-train it."
        ) from err
    model.eval()
    return model, meta


def load_ood_detector(
    bundle_dir: str | Path, meta: BundleMeta
) -> OodDetector | NeighbourOodDetector | None:
    """Load the bundle's out-of-domain detector, or ``None`` when it has none.

    Args:
        bundle_dir: the bundle folder.
        meta: its validated metadata (from :func:`read_bundle_meta`).

    Returns:
        The fitted :class:`~mpoxscan.inference.quality.OodDetector` (or
        :class:`~mpoxscan.inference.quality.NeighbourOodDetector`, ``method`` ``"knn-cosine"``),
        or ``None``.
    """
    from mpoxscan.inference.quality import NeighbourOodDetector, OodDetector

    build: Callable[..., Any] = OodDetector.from_tensors
    stored = meta.get("ood") or {}
    if stored.get("method", MAHALANOBIS) == NeighbourOodDetector.method:
        build = partial(NeighbourOodDetector.from_tensors, k=int(stored.get("k", 5)))
    return _load_side_model(bundle_dir, meta, "ood", OOD_FILE, "out-of-domain detector", build)


def load_no_lesion_detector(bundle_dir: str | Path, meta: BundleMeta) -> NoLesionDetector | None:
    """Load the bundle's "no lesion seen" head, or ``None`` when it has none.

    Args:
        bundle_dir: the bundle folder.
        meta: its validated metadata (from :func:`read_bundle_meta`).

    Returns:
        The fitted :class:`~mpoxscan.inference.no_lesion.NoLesionDetector`, or ``None``.
    """
    from mpoxscan.inference.no_lesion import NoLesionDetector

    return _load_side_model(
        bundle_dir,
        meta,
        "no_lesion",
        NO_LESION_FILE,
        "no-lesion head",
        NoLesionDetector.from_tensors,
    )


def _load_side_model(
    bundle_dir: str | Path,
    meta: BundleMeta,
    key: str,
    default_file: str,
    what: str,
    build: Callable[..., Any],
) -> Any:
    """A model stored beside the network (``meta[key]`` names its file and threshold)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    side_meta = meta.get(key)
    if not side_meta:
        return None
    name = side_meta.get("file", default_file)
    if name not in meta.get("files", {}):
        raise BundleError(
            f"model.json in {bundle_dir} describes a {what} but does not "
            f"list its file {name!r}. Re-export the bundle."
        )
    try:
        tensors = load_file(Path(bundle_dir) / name)
        return build(tensors, threshold=float(side_meta["threshold"]))
    except (SafetensorError, KeyError, ValueError, OSError) as err:
        raise BundleError(
            f"The {what} {Path(bundle_dir) / name} cannot be read ({err}). Re-export the bundle."
        ) from err


@dataclass
class BundleUpdate:
    """A change to a bundle in progress (see :func:`updating_bundle`).

    Attributes:
        dir: the staging folder, a copy of the bundle: write new or replaced files here.
        meta: the ``model.json`` object to write (change it freely).
        added: names of files in ``dir`` to (re)hash into ``meta["files"]``.
    """

    dir: Path
    meta: dict[str, Any]
    added: list[str] = field(default_factory=list)

    def add_file(self, name: str) -> None:
        """Record a file written into :attr:`dir` under ``name``."""
        _check_new_name(self.dir, name)
        self.added.append(name)


@contextmanager
def updating_bundle(
    bundle_dir: str | Path, meta: BundleMeta | None = None
) -> Iterator[BundleUpdate]:
    """Change a bundle in one atomic step: yield a staged copy, then switch it in.

    The bundle is validated first, so an update never blesses a tampered file. The copy is
    switched in (``model.json`` and its hashes with the files) only when the block ends
    without an error; a crash or an error leaves the old bundle as it was.

    Args:
        bundle_dir: the bundle folder.
        meta: the bundle's metadata, when the caller has just read it with
            :func:`read_bundle_meta` (then the files are not hashed again).

    Yields:
        The :class:`BundleUpdate` to write files into and to change ``model.json`` with.
    """
    bundle = Path(bundle_dir)
    data = (meta if meta is not None else read_bundle_meta(bundle)).to_json()
    with replacing_folder(bundle, start_from_old=True) as stage:
        update = BundleUpdate(stage, data)
        yield update
        files = dict(update.meta["files"])
        for name in update.added:
            files[name] = file_sha256(stage / name)
        update.meta["files"] = files
        _write_meta(stage, BundleMeta.from_json(update.meta, bundle))


def update_bundle_files(
    bundle_dir: str | Path,
    meta_updates: Mapping[str, Any] | None = None,
    new_files: Iterable[str | Path] = (),
    *,
    meta: BundleMeta | None = None,
) -> BundleMeta:
    """Add or replace files in a bundle and rewrite ``model.json`` with their hashes, in one
    atomic step (:func:`updating_bundle`).

    Args:
        bundle_dir: the bundle folder.
        meta_updates: top-level keys to set in ``model.json`` (e.g. ``{"onnx": {...}}``).
        new_files: files to record: names relative to the bundle folder, or absolute paths
            elsewhere, which are copied in.
        meta: the bundle's metadata, when the caller has just read it with
            :func:`read_bundle_meta` (then the files are not hashed again).

    Returns:
        The new metadata.
    """
    bundle = Path(bundle_dir)
    with updating_bundle(bundle, meta) as update:
        update.meta.update(_to_json(dict(meta_updates or {})))
        for item in new_files:
            path = Path(item)
            update.add_file(_copy_into(update.dir, path if path.is_absolute() else bundle / path))
    return BundleMeta.from_json(update.meta, bundle)


def _complete_meta(meta: Mapping[str, Any], out: Path) -> dict[str, Any]:
    from mpoxscan._version import __version__

    missing = [key for key in REQUIRED_META_KEYS if key not in meta]
    if missing:
        raise ValueError(f"save_bundle meta lacks {missing}; pass them (see docs/architecture.md)")
    full = _to_json(dict(meta))
    classes = full["classes"]
    multiclass = bool(full.get("multiclass", False))
    full.setdefault("positive_class", None if multiclass else classes[-1])
    full["multiclass"] = multiclass
    full.setdefault("temperature", 1.0)
    full.setdefault("threshold", 0.5)
    for key in ("config", "metrics"):
        full.setdefault(key, {})
    for key in ("command", "data_fingerprint"):
        full.setdefault(key, None)
    full["format_version"] = FORMAT_VERSION
    full["mpoxscan_version"] = __version__
    full["created"] = datetime.now(UTC).isoformat(timespec="seconds")
    _check_semantics(out, full)
    return full


def _save_state_dict(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    # clone() so tensors that share storage (views, tied weights) can be saved individually.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})


def _save_ood(out: Path, ood: OodDetector | NeighbourOodDetector) -> dict[str, Any]:
    from safetensors.numpy import save_file

    from mpoxscan.inference.quality import NeighbourOodDetector

    tensors = ood.to_tensors()
    _write_atomic(out / OOD_FILE, lambda tmp: save_file(tensors, str(tmp)))
    stored = {
        "file": OOD_FILE,
        "method": getattr(ood, "method", MAHALANOBIS),
        "threshold": float(ood.threshold_),
        "quantile": float(ood.quantile),
        "margin": float(ood.margin),
    }
    if isinstance(ood, NeighbourOodDetector):
        return stored | {"k": int(ood.k), "dim": int(tensors["reference"].shape[1])}
    return stored | {"dim": int(tensors["mean"].shape[0])}


def _check_new_name(bundle: Path, name: str) -> None:
    if Path(name).name != name:
        raise BundleError(f"Cannot add {name!r} to {bundle}: it is outside the bundle.")
    if Path(name).suffix.lower() in PICKLE_SUFFIXES:
        raise BundleError(f"Refusing to add {name}: bundles never carry pickle files.")


def _save_no_lesion(out: Path, detector: NoLesionDetector) -> dict[str, Any]:
    from safetensors.numpy import save_file

    tensors = detector.to_tensors()
    _write_atomic(out / NO_LESION_FILE, lambda tmp: save_file(tensors, str(tmp)))
    return {
        "file": NO_LESION_FILE,
        "method": "logistic-regression-on-embedding",
        "threshold": float(detector.threshold_),
        "max_lesion_rate": float(detector.max_lesion_rate),
        "validation": getattr(detector, "validation_", None),
        "dim": int(tensors["weight"].shape[0]),
    }


def _copy_into(bundle: Path, path: Path) -> str:
    if not path.is_file():
        raise BundleError(f"Cannot add {path} to the bundle: it is not a file.")
    _check_new_name(bundle, path.name)
    target = bundle / path.name
    if path.resolve() != target.resolve():
        _write_atomic(target, lambda tmp: shutil.copyfile(path, tmp))
    return path.name


def _write_meta(bundle: Path, meta: BundleMeta) -> None:
    text = json.dumps(meta.to_json(), indent=2, allow_nan=False) + "\n"
    _write_atomic(bundle / META_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _write_atomic(target: Path, write: Callable[[Path], object]) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        # Readable by the serving user too (some writers create files as 0600).
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _read_meta_json(bundle: Path) -> dict[str, Any]:
    left = left_old_folder(bundle)
    if left is not None:
        raise BundleError(
            f"No model bundle at {bundle}: an interrupted write left it at {left}. Run the "
            "command that was writing it again (it is put back first), or rename it back."
        )
    if not bundle.is_dir():
        raise BundleError(
            f"No model bundle at {bundle}: pass the folder that training wrote (it holds "
            f"{META_FILE} and {WEIGHTS_FILE})."
        )
    path = bundle / META_FILE
    if not path.is_file():
        raise BundleError(
            f"{path} is missing, so {bundle} is not a complete model bundle. Re-download the "
            "bundle or train it again."
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(
            f"{path} is not valid JSON ({err}). Re-download the bundle or train it again."
        ) from err
    if not isinstance(meta, dict):
        raise BundleError(f"{path} does not hold a JSON object. Re-download the bundle.")
    return meta


def _check_format(bundle: Path, meta: Mapping[str, Any]) -> None:
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{bundle / META_FILE} has format_version {version!r}; this mpoxscan reads format "
            f"{FORMAT_VERSION}. Use the mpoxscan version that wrote the bundle, or re-export it."
        )
    _check_semantics(bundle, meta)


def _check_semantics(bundle: Path, meta: Mapping[str, Any]) -> None:
    problems = []
    arch = meta.get("architecture")
    if not isinstance(arch, dict) or not {"name", "num_outputs", "image_size"} <= arch.keys():
        problems.append("architecture must give name, num_outputs and image_size")
    classes = meta.get("classes")
    if not isinstance(classes, list) or len(classes) < 2:
        problems.append("classes must list at least two class names")
    elif meta.get("positive_class") is not None and meta["positive_class"] not in classes:
        problems.append(f"positive_class {meta['positive_class']!r} is not one of {classes}")
    elif isinstance(arch, dict) and isinstance(arch.get("num_outputs"), int):
        problems.extend(_output_problems(arch["num_outputs"], classes, meta.get("positive_class")))
    prep = meta.get("preprocessing")
    if not isinstance(prep, dict) or not {"image_size", "mean", "std"} <= prep.keys():
        problems.append("preprocessing must give image_size, mean and std")
    if "files" in meta and not isinstance(meta["files"], dict):
        problems.append("files must map file names to SHA-256 hashes")
    if problems:
        raise BundleError(
            f"{bundle / META_FILE} is invalid: {'; '.join(problems)}. Re-export the bundle."
        )


def _output_problems(num_outputs: int, classes: list, positive: str | None) -> list[str]:
    """The outputs must mean what ``classes`` says (docs/architecture.md, "Labels")."""
    if num_outputs == 1:
        if len(classes) != 2:
            return [f"a one-logit (binary) model needs exactly 2 classes, got {classes}"]
        if positive not in (None, classes[1]):
            return [f"a one-logit model's logit is classes[1] ({classes[1]!r}), not {positive!r}"]
        return []
    if num_outputs != len(classes):
        return [f"{num_outputs} outputs but {len(classes)} classes"]
    return []


def _check_files(bundle: Path, files: Mapping[str, str] | None) -> None:
    if not files or WEIGHTS_FILE not in files:
        raise BundleError(
            f"{bundle / META_FILE} does not list {WEIGHTS_FILE}. Bundles keep their weights "
            "only as safetensors: re-export the bundle with this version of mpoxscan."
        )
    for name, expected in files.items():
        path = bundle / name
        if Path(name).name != name:
            raise BundleError(f"{bundle / META_FILE} lists {name!r}, which is outside the bundle.")
        if Path(name).suffix.lower() in PICKLE_SUFFIXES:
            raise BundleError(
                f"{bundle} lists {name}, a pickle file, which mpoxscan never loads (it can run "
                "code). Re-export the bundle to safetensors."
            )
        if not path.is_file():
            raise BundleError(
                f"{path} is missing from the bundle. Re-download the bundle or export it again."
            )
        if file_sha256(path) != expected:
            raise BundleError(
                f"{path} has changed since the bundle was saved (its SHA-256 does not match "
                "model.json): it is truncated, damaged or was replaced. Re-download or "
                "re-export the bundle."
            )
        if path.suffix.lower() == ".onnx":
            _check_onnx_self_contained(path)


def _check_onnx_self_contained(path: Path) -> None:
    """Refuse an ONNX graph that keeps tensors in external files: those files are outside
    ``model.json``'s hashes, so they could change the model unnoticed."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises protobuf's DecodeError and others
        raise BundleError(
            f"{path} is not a readable ONNX model ({err}). Re-export the bundle."
        ) from err
    external = [t.name for t in _onnx_tensors(model.graph) if _is_external(t)]
    if external:
        raise BundleError(
            f"{path} keeps {len(external)} tensor(s) (e.g. {external[0]!r}) in external data "
            "files, which model.json does not hash. Re-export the bundle with mpoxscan, which "
            "writes one self-contained model.onnx."
        )


def _onnx_tensors(graph: Any) -> Iterator[Any]:
    """Every tensor of an ONNX graph: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _onnx_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _onnx_tensors(subgraph)


def _is_external(tensor: Any) -> bool:
    import onnx

    return tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data) > 0


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _default(value: Any, default: float) -> float:
    return default if value is None else float(value)


def _to_json(value: Any) -> Any:
    """Convert dataclasses, numpy values, paths and tuples to JSON; NaN/inf to None."""
    if is_dataclass(value) and not isinstance(value, type):
        return _to_json(asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_to_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return _to_json(value.tolist())
    if isinstance(value, np.generic):
        return _to_json(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value
