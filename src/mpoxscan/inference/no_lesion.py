"""A "no lesion seen" head beside the screening model.

People photograph healthy skin too. Answering "low" for such a photo would say that the model
looked at a lesion and found it unlike mpox; the honest answer is that it saw no lesion. The
detector here is a logistic regression on the model's pooled embedding (the output the
out-of-domain check reads as well), trained on photos of healthy skin against photos of
lesions, with its own threshold chosen on validation photos: the lowest one that calls at
most ``max_lesion_rate`` of the validation *lesion* photos "no lesion". It is stored in the
bundle as ``no_lesion.safetensors`` and described in ``model.json["no_lesion"]``.

The predictor says "no lesion" only when the screening answer is "low" as well: a photo the
model finds mpox-like is never waved through as healthy skin.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from mpoxscan.errors import NotFittedError

NO_LESION_FILE = "no_lesion.safetensors"
#: Class folders whose photos show skin without a lesion ("Healthy", "Normal skin", ...).
NO_LESION_CLASS_PATTERN = r"(?i)^(healthy|normal)([ _-]?skin)?$"
#: Inverse regularisation strengths tried; the lowest validation log loss wins.
NO_LESION_CS = (1e-3, 1e-2, 1e-1)


def is_no_lesion_class(class_name: str, pattern: str = NO_LESION_CLASS_PATTERN) -> bool:
    """Whether a class folder name stands for photos of skin without a lesion."""
    return re.match(pattern, class_name.strip()) is not None


class NoLesionDetector:
    """Logistic regression on embeddings: probability that a photo shows no lesion.

    Args:
        max_lesion_rate: largest share of validation lesion photos the threshold may call
            "no lesion" (the cost of a wrong "no lesion" is a lesion not screened).
        cs: inverse regularisation strengths tried on validation log loss.
    """

    def __init__(self, max_lesion_rate: float = 0.02, cs: Sequence[float] = NO_LESION_CS):
        if not 0.0 <= max_lesion_rate < 1.0:
            raise ValueError(f"max_lesion_rate must be in [0, 1), got {max_lesion_rate}")
        self.max_lesion_rate = max_lesion_rate
        self.cs = tuple(float(c) for c in cs)

    def fit(
        self,
        embeddings: np.ndarray,
        no_lesion: Sequence[bool] | np.ndarray,
        val_embeddings: np.ndarray,
        val_no_lesion: Sequence[bool] | np.ndarray,
    ) -> NoLesionDetector:
        """Fit on training embeddings; choose ``C`` and the threshold on validation ones.

        Args:
            embeddings: ``(n, c)`` training embeddings.
            no_lesion: whether each training photo shows no lesion (both kinds needed).
            val_embeddings: ``(m, c)`` validation embeddings.
            val_no_lesion: the same for them (at least one lesion photo needed).

        Returns:
            ``self``, fitted: ``weight_`` (c,), ``bias_``, ``threshold_``, ``c_``,
            ``validation_`` (recall on validation no-lesion photos and the share of lesion
            photos called no lesion, at the threshold).
        """
        from sklearn.linear_model import LogisticRegression

        x, y = np.asarray(embeddings, np.float64), np.asarray(no_lesion, bool)
        xv, yv = np.asarray(val_embeddings, np.float64), np.asarray(val_no_lesion, bool)
        if y.all() or not y.any():
            raise ValueError("NoLesionDetector.fit needs photos with and without a lesion")
        if yv.all():
            raise ValueError("NoLesionDetector.fit needs validation photos of lesions")
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
        best = None
        for c in self.cs:
            model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
            model.fit((x - mean) / scale, y)
            p = np.clip(model.predict_proba((xv - mean) / scale)[:, 1], 1e-7, 1 - 1e-7)
            loss = -np.mean(np.where(yv, np.log(p), np.log1p(-p)))
            if best is None or loss < best[0]:
                best = (loss, c, model)
        _, self.c_, model = best
        self.weight_ = (model.coef_[0] / scale).astype(np.float64)
        self.bias_ = float(model.intercept_[0] - self.weight_ @ mean)
        p_val = self.probability(xv)
        self.threshold_ = lesion_rate_threshold(p_val[~yv], self.max_lesion_rate)
        called = p_val >= self.threshold_
        self.validation_ = {
            "no_lesion_photos": int(yv.sum()),
            "lesion_photos": int((~yv).sum()),
            "no_lesion_recall": float(called[yv].mean()) if yv.any() else float("nan"),
            "lesion_called_no_lesion": float(called[~yv].mean()),
        }
        return self

    def probability(self, embeddings: np.ndarray) -> np.ndarray:
        """``(n,)`` probability that each photo shows no lesion."""
        if not hasattr(self, "weight_"):
            raise NotFittedError("This NoLesionDetector is not fitted; call 'fit' first.")
        x = np.atleast_2d(np.asarray(embeddings, np.float64))
        if x.shape[1] != self.weight_.shape[0]:
            raise ValueError(
                f"embeddings have {x.shape[1]} features, the no-lesion head expects "
                f"{self.weight_.shape[0]}: use the model it was fitted with"
            )
        return 1.0 / (1.0 + np.exp(-(x @ self.weight_ + self.bias_)))

    def sees_no_lesion(self, embeddings: np.ndarray) -> np.ndarray:
        """Boolean ``(n,)``: whether the probability reaches ``threshold_``."""
        return self.probability(embeddings) >= self.threshold_

    def to_tensors(self) -> dict[str, np.ndarray]:
        """The fitted arrays, for ``safetensors.numpy.save_file``."""
        if not hasattr(self, "weight_"):
            raise NotFittedError("This NoLesionDetector is not fitted; call 'fit' first.")
        return {
            "weight": self.weight_.astype(np.float32),
            "bias": np.array([self.bias_], dtype=np.float32),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], threshold: float) -> NoLesionDetector:
        """Rebuild a fitted detector from :meth:`to_tensors` output and its threshold."""
        weight = np.asarray(tensors["weight"], dtype=np.float64)
        bias = np.asarray(tensors["bias"], dtype=np.float64).ravel()
        if weight.ndim != 1 or bias.shape != (1,):
            raise ValueError(
                f"no-lesion tensors have shapes weight {weight.shape}, bias {bias.shape}; "
                "expected (c,) and (1,)"
            )
        detector = cls()
        detector.weight_, detector.bias_ = weight, float(bias[0])
        detector.threshold_ = float(threshold)
        return detector


def lesion_rate_threshold(p_lesion_photos: np.ndarray, max_rate: float) -> float:
    """The lowest threshold that calls at most ``max_rate`` of these lesion photos no lesion.

    Photos count as "no lesion" when ``p >= threshold``; the result is just above the
    ``floor(max_rate * n) + 1``-th highest score (1.0 when that would be above every score).
    """
    ranked = np.sort(np.asarray(p_lesion_photos, dtype=np.float64))[::-1]
    allowed = int(np.floor(max_rate * len(ranked)))
    if allowed >= len(ranked):
        return 0.0
    return float(min(1.0, np.nextafter(ranked[allowed], np.inf)))
