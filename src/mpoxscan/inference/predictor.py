"""Predict from photos with a model bundle, through ONNX Runtime or PyTorch.

``Predictor.load(bundle_dir)`` reads the bundle once; ``predict``/``predict_many`` give labels
and probabilities, ``assess``/``assess_many`` first refuse photos that cannot be assessed
(too small, blurry, dark, overexposed, or unlike the training photos), and ``explain`` gives a
Grad-CAM heat map.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from threadpoolctl import ThreadpoolController

from mpoxscan.data.photos import photo_pixels, read_photo
from mpoxscan.errors import BundleError
from mpoxscan.inference.bundle import (
    ONNX_FILE,
    BundleMeta,
    load_no_lesion_detector,
    load_ood_detector,
    read_bundle_meta,
)
from mpoxscan.inference.no_lesion import NoLesionDetector
from mpoxscan.inference.quality import (
    NeighbourOodDetector,
    OodDetector,
    QualityIssue,
    QualitySettings,
    check_photo,
    out_of_domain_issue,
)

Backend = Literal["auto", "onnx", "torch"]

#: A probability below ``UNCERTAIN_FRACTION * threshold`` is in the "low" band.
UNCERTAIN_FRACTION = 0.5

#: Photos per forward pass in ``predict_proba``/``assess_many`` (bounds memory on big lists).
DEFAULT_BATCH_SIZE = 32


def logits_to_probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Turn logits into class probabilities, as the exported graph does.

    Args:
        logits: ``(n, 1)`` binary logits (of the positive class) or ``(n, k)`` class logits.
        temperature: logits are divided by it (calibration).

    Returns:
        ``(n, 2)`` ``[1 - p, p]`` for one logit, else the ``(n, k)`` softmax.
    """
    scaled = np.asarray(logits, dtype=np.float64) / float(temperature)
    if scaled.ndim != 2:
        raise ValueError(f"logits must be (n, k), got shape {scaled.shape}")
    if scaled.shape[1] == 1:
        positive = 1.0 / (1.0 + np.exp(-scaled[:, 0]))
        return np.stack([1.0 - positive, positive], axis=1)
    shifted = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


#: What the prediction methods accept as a photo: a decoded image, a file path or the bytes
#: of an image file (paths and bytes are decoded with the upload checks of ``decode_image``).
PhotoInput = Image.Image | str | Path | bytes


def as_image(photo: PhotoInput, image_size: int) -> Image.Image:
    """A photo read as every path reads it (:func:`~mpoxscan.data.photos.read_photo`).

    Args:
        photo: a PIL image, a path (``str`` or ``Path``) or an image file's bytes.
        image_size: the model's input side (photos are read reduced to a few times it).

    Raises:
        InvalidImageError: the path or bytes are not a photo mpoxscan can read.
        FileNotFoundError: the path does not exist.
    """
    if isinstance(photo, bytearray | memoryview):
        photo = bytes(photo)
    if isinstance(photo, Image.Image | str | Path | bytes):
        return read_photo(photo, image_size)
    raise TypeError(f"expected a PIL image, a file path or image bytes, got {type(photo).__name__}")


def images_to_pixels(images: Sequence[Image.Image], image_size: int) -> np.ndarray:
    """Reduce and resize photos as in training and stack them as model input.

    Each photo goes through :func:`~mpoxscan.data.photos.photo_pixels`, the resize of every
    path (photos from :func:`~mpoxscan.data.photos.read_photo` are already reduced).

    Args:
        images: decoded photos (converted to RGB when they are not).
        image_size: the bundle's ``preprocessing.image_size``.

    Returns:
        ``(N, 3, S, S)`` float32 RGB values on the 0-255 scale (not normalised: the model
        graph normalises).
    """
    pixels = np.empty((len(images), 3, image_size, image_size), dtype=np.float32)
    for i, image in enumerate(images):
        pixels[i] = photo_pixels(image, image_size).transpose(2, 0, 1)
    return pixels


def screening_band(probability: float, threshold: float) -> str:
    """Place a positive-class probability in a screening band.

    The bands are made for a sensitivity-first screen, where a missed case costs more than a
    false alarm:

    - ``"high"``: ``probability >= threshold`` -- the photo is labelled positive; see a
      clinician.
    - ``"uncertain"``: ``threshold / 2 <= probability < threshold`` -- labelled negative, but
      close enough to the threshold that a retake or a clinician's look is advised: the
      negative side is where a screen's costly mistakes (missed cases) are.
    - ``"low"``: ``probability < threshold / 2``.

    The band never contradicts the label: every "high" is positive, every "low" negative.

    Args:
        probability: probability of the positive class, in [0, 1].
        threshold: the bundle's decision threshold, in (0, 1].

    Returns:
        ``"low"``, ``"uncertain"`` or ``"high"``.
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {probability}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if probability >= threshold:
        return "high"
    if probability >= UNCERTAIN_FRACTION * threshold:
        return "uncertain"
    return "low"


@dataclass
class Prediction:
    """The answer for one photo: the web page's, from :meth:`Predictor.predict`.

    Attributes:
        label: the predicted class name (binary: positive when ``probability >= threshold``;
            multi-class: the most probable class); ``None`` when ``status`` is ``"retake"``.
        probability: probability of the positive class; ``None`` when the bundle has none or
            the photo could not be assessed.
        probabilities: every class's probability (empty for a retake).
        band: ``"low" | "uncertain" | "high"`` from :func:`screening_band`; ``None`` when the
            bundle has no positive class or for a retake.
        no_lesion: the bundle's "no lesion seen" head says the photo shows skin without a
            lesion, and the band is ``"low"`` (never set for an uncertain or high photo).
        no_lesion_probability: that head's probability, ``None`` without such a head.
        status: ``"ok"``, or ``"retake"`` when the photo checks refused the photo (too small,
            blurred, badly exposed, or not a photo of skin), as the web page does.
        reasons: why a retake is needed (empty when ``ok``).
    """

    label: str | None
    probability: float | None
    probabilities: dict[str, float]
    band: str | None
    no_lesion: bool = False
    no_lesion_probability: float | None = None
    status: str = "ok"
    reasons: list[QualityIssue] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "status": self.status,
            "reasons": [reason.to_dict() for reason in self.reasons],
            "label": self.label,
            "probability": self.probability,
            "probabilities": dict(self.probabilities),
            "band": self.band,
            "no_lesion": self.no_lesion,
            "no_lesion_probability": self.no_lesion_probability,
        }


@dataclass
class Assessment:
    """A photo check followed, when the photo passes, by a prediction.

    Attributes:
        ok: ``False`` means "cannot assess, please retake"; then ``prediction`` is ``None``.
        reasons: why the photo was refused (empty when ``ok``).
        prediction: the prediction when ``ok``.
        ood_distance: the out-of-domain distance, when the bundle has a detector and the photo
            got that far.
    """

    ok: bool
    reasons: list[QualityIssue] = field(default_factory=list)
    prediction: Prediction | None = None
    ood_distance: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "ok": self.ok,
            "reasons": [reason.to_dict() for reason in self.reasons],
            "prediction": self.prediction.to_dict() if self.prediction else None,
            "ood_distance": self.ood_distance,
        }


class Predictor:
    """Predictions from one model bundle; load it with :meth:`Predictor.load`.

    Args:
        quality: thresholds of the photo checks in :meth:`assess`.
        threads: ONNX Runtime intra-op threads (``None``: the usable cores, at most 4).
        batch_size: photos per forward pass.

    Attributes (set by ``load``):
        meta_: the bundle's validated ``model.json`` (a :class:`BundleMeta`).
        classes_: class names in output order.
        positive_class_: the screened-for class, or ``None``.
        threshold_: decision threshold on the positive-class probability.
        backend_: ``"onnx"`` or ``"torch"``.
        onnx_file_: the ONNX graph that runs (``model.json``'s ``runs``: ``model.onnx`` or
            the int8 ``model.int8.onnx``); only with the ONNX backend.
        image_size_: the input side photos are resized to.
        ood_: the out-of-domain detector, or ``None``.
        no_lesion_: the "no lesion seen" head, or ``None``.
    """

    def __init__(
        self,
        quality: QualitySettings | None = None,
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):
        self.quality = quality
        self.threads = threads
        self.batch_size = batch_size
        self._blas: ThreadpoolController | None = None

    @classmethod
    def load(
        cls,
        bundle_dir: str | Path,
        backend: Backend = "auto",
        *,
        quality: QualitySettings | None = None,
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        meta: BundleMeta | None = None,
    ) -> Predictor:
        """Load a bundle for prediction (once; the predictor is then reused).

        Args:
            bundle_dir: the bundle folder.
            backend: ``"onnx"`` (needs ``model.onnx``), ``"torch"``, or ``"auto"``: ONNX
                Runtime when the bundle has ``model.onnx``, PyTorch otherwise.
            quality: thresholds of the photo checks.
            threads: ONNX Runtime intra-op threads.
            batch_size: photos per forward pass.
            meta: the bundle's metadata when the caller has just read and checked it with
                ``read_bundle_meta`` (its files are then not hashed again).

        Returns:
            The loaded predictor.

        Raises:
            BundleError: the bundle is invalid, or ``backend="onnx"`` and it has no ONNX file.
        """
        return cls(quality, threads, batch_size)._load(Path(bundle_dir), backend, meta)

    def _load(self, bundle: Path, backend: Backend, meta: BundleMeta | None = None) -> Predictor:
        if backend not in ("auto", "onnx", "torch"):
            raise ValueError(f"backend must be 'auto', 'onnx' or 'torch', got {backend!r}")
        meta = meta or read_bundle_meta(bundle)
        has_onnx = ONNX_FILE in meta.files
        if backend == "onnx" and not has_onnx:
            raise BundleError(
                f"The bundle {bundle} has no {ONNX_FILE}. Export one with "
                "mpoxscan.inference.onnx_export.export_onnx, or load it with backend='torch'."
            )
        self.bundle_dir_ = bundle
        self.meta_: BundleMeta = meta
        self.classes_ = list(meta.classes)
        self.positive_class_ = meta.positive_class
        self.threshold_ = meta.threshold
        self.image_size_ = meta.preprocessing.image_size
        self.binary_ = meta.binary
        self.ood_: OodDetector | NeighbourOodDetector | None = load_ood_detector(bundle, meta)
        self.no_lesion_: NoLesionDetector | None = load_no_lesion_detector(bundle, meta)
        self.backend_ = "onnx" if backend == "onnx" or (backend == "auto" and has_onnx) else "torch"
        # Re-entrant: explain() holds it around Grad-CAM (whose hooks would also catch a
        # concurrent forward pass) and loads the model under it.
        self._torch_lock = threading.RLock()
        self.torch_model_ = None
        if self.backend_ == "onnx":
            from mpoxscan.inference.onnx_runtime import OnnxModel

            # The graph model.json says runs (the int8 one after `export --quantize int8`);
            # like every listed file it was hash-checked by read_bundle_meta.
            runs = str(meta.document.get("runs") or ONNX_FILE)
            self.onnx_file_ = runs if runs in meta.files else ONNX_FILE
            self.onnx_model_ = OnnxModel(bundle / self.onnx_file_, threads=self.threads)
        else:
            self._torch_module()
        return self

    def _torch_module(self) -> Any:
        """The torch :class:`InferenceModule`, loaded on first use (thread-safe)."""
        with self._torch_lock:
            if self.torch_model_ is None:
                from mpoxscan.inference.bundle import load_torch_model
                from mpoxscan.inference.torch_backend import inference_module

                model, _ = load_torch_model(self.bundle_dir_, self.meta_)
                self.torch_model_ = inference_module(model, self.meta_)
            return self.torch_model_

    def predict_pixels(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the model on prepared pixels.

        Args:
            pixels: ``(N, 3, S, S)`` float32 RGB on the 0-255 scale (see
                :func:`images_to_pixels`).

        Returns:
            ``(probabilities (N, n_classes), embeddings (N, C))`` float32 arrays.
        """
        batch = np.ascontiguousarray(pixels, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != (3, self.image_size_, self.image_size_):
            raise ValueError(
                f"pixels must be (N, 3, {self.image_size_}, {self.image_size_}), got "
                f"{batch.shape}: prepare photos with images_to_pixels"
            )
        if self.backend_ == "onnx":
            return self.onnx_model_.run(batch)
        import torch

        with self._torch_lock, torch.inference_mode():
            probabilities, embeddings = self._torch_module()(torch.from_numpy(batch))
        return probabilities.numpy(), embeddings.numpy()

    def _run_images(self, images: Sequence[PhotoInput]) -> tuple[np.ndarray, np.ndarray]:
        images = [as_image(image, self.image_size_) for image in images]
        probabilities, embeddings = [], []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            p, e = self.predict_pixels(images_to_pixels(chunk, self.image_size_))
            probabilities.append(p)
            embeddings.append(e)
        if not probabilities:
            return np.empty((0, len(self.classes_)), np.float32), np.empty((0, 0), np.float32)
        return np.concatenate(probabilities), np.concatenate(embeddings)

    def predict_proba(self, images: Sequence[PhotoInput]) -> np.ndarray:
        """Class probabilities for photos.

        Args:
            images: photos: PIL images, file paths or image bytes (see :func:`as_image`).

        Returns:
            ``(N, n_classes)`` probabilities in the order of ``classes_``.
        """
        return self._run_images(list(images))[0]

    def predict(self, image: PhotoInput) -> Prediction:
        """Check and predict one photo (a PIL image, a file path or image bytes), as the web
        page does (see :meth:`predict_many`)."""
        return self.predict_many([image])[0]

    def predict_many(self, images: Sequence[PhotoInput]) -> list[Prediction]:
        """Check and predict photos in batches, giving the web page's answer for each.

        A photo the checks refuse gets ``status="retake"`` with its reasons and no label or
        probability; :meth:`predict_proba` gives the raw probabilities without checks.
        """
        return [
            assessment.prediction
            if assessment.prediction is not None
            else Prediction(None, None, {}, None, status="retake", reasons=assessment.reasons)
            for assessment in self.assess_many(images)
        ]

    def _predictions(self, probabilities: np.ndarray, embeddings: np.ndarray) -> list[Prediction]:
        """Predictions from model outputs, with the no-lesion head's answer when there is one."""
        no_lesion = (
            self.no_lesion_.probability(embeddings)
            if self.no_lesion_ is not None and len(probabilities)
            else [None] * len(probabilities)
        )
        return [self.to_prediction(row, p) for row, p in zip(probabilities, no_lesion, strict=True)]

    def embed(self, images: Sequence[PhotoInput]) -> np.ndarray:
        """Pooled embeddings ``(N, C)`` of photos (the out-of-domain detector's input)."""
        return self._run_images(list(images))[1]

    def assess(self, image: PhotoInput) -> Assessment:
        """Check one photo, then predict it if it can be assessed."""
        return self.assess_many([image])[0]

    def assess_many(self, images: Sequence[PhotoInput]) -> list[Assessment]:
        """Check photos (size, sharpness, exposure, then out-of-domain) and predict the rest.

        Args:
            images: photos: PIL images, file paths or image bytes (see :func:`as_image`).

        Returns:
            One :class:`Assessment` per photo, in order. The photos that pass the pixel checks
            go through the model together, in batches.
        """
        images = [as_image(image, self.image_size_) for image in images]
        results: list[Assessment | None] = []
        passed: list[int] = []
        for i, image in enumerate(images):
            issues = check_photo(image, self.quality)
            results.append(Assessment(ok=False, reasons=issues) if issues else None)
            if not issues:
                passed.append(i)
        probabilities, embeddings = self._run_images([images[i] for i in passed])
        for i, assessment in zip(passed, self.judge(probabilities, embeddings), strict=True):
            results[i] = assessment
        return results  # type: ignore[return-value]  # every slot is filled above

    def judge(self, probabilities: np.ndarray, embeddings: np.ndarray) -> list[Assessment]:
        """Assess photos that passed :func:`check_photo` from the model's outputs.

        The out-of-domain detector (when the bundle has one) refuses embeddings far from the
        training photos; the others get their prediction. Batch prediction and
        :meth:`assess_many` share it, so both give the web page's answers.

        Args:
            probabilities: ``(N, n_classes)`` from :meth:`predict_pixels`.
            embeddings: ``(N, C)`` from the same call.

        Returns:
            One :class:`Assessment` per row.
        """
        if not len(probabilities):
            return []
        # One BLAS thread: the distance to the reference photos is one small matrix product,
        # and OpenBLAS's idle threads then spin on the cores that decoding and ONNX Runtime
        # need (on 2 cores, mpoxscan predict took 23 instead of 16 ms of CPU per 224-px photo).
        with self._blas_controller().limit(limits=1, user_api="blas"):
            distances = self.ood_.distance(embeddings) if self.ood_ is not None else None
            predictions = self._predictions(probabilities, embeddings)
        results = []
        for j, prediction in enumerate(predictions):
            distance = None if distances is None else float(distances[j])
            if distance is not None and distance > self.ood_.threshold_:
                results.append(Assessment(False, [out_of_domain_issue()], None, distance))
            else:
                results.append(Assessment(True, [], prediction, distance))
        return results

    def _blas_controller(self) -> ThreadpoolController:
        """The process's BLAS and OpenMP libraries, found once (it takes tens of ms)."""
        if getattr(self, "_blas", None) is None:
            self._blas = ThreadpoolController()
        return self._blas

    def explain(self, image: Image.Image, target: str | None = None) -> np.ndarray:
        """Grad-CAM heat map of what drove the prediction, at the photo's size.

        Uses the PyTorch model, loaded on first use even when predictions go through ONNX.

        Args:
            image: the photo.
            target: class to explain; default the positive class (or, without one, the
                predicted class). Binary bundles explain only the positive class.

        Returns:
            ``(H, W)`` float32 array in [0, 1] (1 = most evidence for the target class).
        """
        import torch

        from mpoxscan.inference.explain import grad_cam

        module = self._torch_module()
        pixels = torch.from_numpy(images_to_pixels([image], self.image_size_))
        inputs = (pixels - module.mean) / module.std
        target_index = self._cam_target(image, target)
        with self._torch_lock:
            heat = grad_cam(module.model, inputs, target_index, size=(image.height, image.width))
        return heat[0]

    def _cam_target(self, image: Image.Image, target: str | None) -> int:
        if target is not None and target not in self.classes_:
            raise ValueError(f"Unknown class {target!r}; choose one of {self.classes_}")
        if self.binary_:
            if target not in (None, self.positive_class_):
                raise ValueError(
                    f"A binary model can only explain its positive class "
                    f"{self.positive_class_!r}, not {target!r}"
                )
            return 0
        name = target or self.positive_class_
        if name is None:
            return int(np.argmax(self.predict_proba([image])[0]))
        return self.classes_.index(name)

    def to_prediction(
        self, row: np.ndarray, no_lesion_probability: float | None = None
    ) -> Prediction:
        """Turn one row of class probabilities (from :meth:`predict_pixels`) into a Prediction.

        Binary bundles label the positive class when its probability reaches ``threshold_``;
        multi-class ones take the most probable class. ``no_lesion_probability`` (from the
        bundle's no-lesion head) marks a "low" photo as showing no lesion when it reaches the
        head's threshold.
        """
        # float32 rounding can step a hair outside [0, 1]
        row = np.clip(row, 0.0, 1.0)
        probabilities = {name: float(p) for name, p in zip(self.classes_, row, strict=True)}
        positive = self.positive_class_
        probability = probabilities[positive] if positive is not None else None
        if self.binary_ and probability is not None:
            negative = next(name for name in self.classes_ if name != positive)
            label = positive if probability >= self.threshold_ else negative
        else:
            label = self.classes_[int(np.argmax(row))]
        band = None if probability is None else screening_band(probability, self.threshold_)
        no_lesion = (
            no_lesion_probability is not None
            and band == "low"
            and no_lesion_probability >= self.no_lesion_.threshold_
        )
        return Prediction(
            label,
            probability,
            probabilities,
            band,
            no_lesion=bool(no_lesion),
            no_lesion_probability=None
            if no_lesion_probability is None
            else float(no_lesion_probability),
        )
