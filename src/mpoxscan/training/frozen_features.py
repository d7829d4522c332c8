"""The frozen-features recipe: embed each photo once through the frozen backbone, train the head.

A pretrained backbone that does not learn gives the same pooled embedding (``model.embed``) for a
photo in every epoch and every fold, so it is computed once per photo and view and cached (in
memory, and optionally on disk). The head then trains on those embeddings in milliseconds per
epoch, which makes a repeated, patient-grouped cross-validation affordable on a laptop CPU.

Views of a photo, by index: 0 is the photo, 1 its mirror image, 2 and on are random
augmentations (``TrainConfig.augment``, after random style changes when
``FeatureConfig.style`` is set) seeded from the photo's file hash, the view index and the run's
seed, so a cached view equals a recomputed one. Training uses the first
``FeatureConfig.train_views`` views; validation and test use view 0, or the mean logit of views 0
and 1 with test-time augmentation (``FeatureConfig.tta``).

The result is still one network: the unchanged backbone plus the trained output layer, saved in
the same bundle as a fine-tuned model.

Partial fine-tuning the same way (``FeatureConfig.tail_blocks``, EfficientNet-Lite only): the
input of the last ``tail_blocks`` backbone blocks is cached instead of the pooled embedding; the
head is fitted first on the pooled output of the untouched tail, then tail and head are
fine-tuned together at the backbone's learning rate ("linear probe, then fine-tune").
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from mpoxscan.data.array_cache import FeatureCache
from mpoxscan.data.datasets import ImageRecord
from mpoxscan.data.loading import ImageDataset
from mpoxscan.data.photos import READ_SCALE
from mpoxscan.data.preprocessing import Preprocessing
from mpoxscan.data.style import StyleConfig, random_style
from mpoxscan.data.transforms import AugmentConfig, build_augmentation, normalize_batch
from mpoxscan.hashing import file_sha256
from mpoxscan.inference.no_lesion import is_no_lesion_class
from mpoxscan.models.onnx_forward import MIN_PASSES, OnnxForward
from mpoxscan.training.config import Balance, TrainConfig
from mpoxscan.training.loop import (
    ArrayLoader,
    EarlyStopping,
    FitResult,
    class_balanced_loss,
    epoch_row,
    logits_loss,
    num_outputs_of,
    run_epochs,
)

#: The views averaged by test-time augmentation: the photo and its mirror image.
TTA_VIEWS = 2
# Bumped when the way views or embeddings are computed changes, so old disk caches miss.
_CACHE_VERSION = 2


def backbone_fingerprint(model: nn.Module, start: int | None = None) -> str:
    """Hex SHA-256 over the weights and buffers that the cached arrays depend on.

    Args:
        model: a registry model.
        start: ``None`` for pooled embeddings (everything outside ``model.head``); a block
            index for the cached input of that block (the stem and the blocks before it).

    Two models with equal fingerprints give every photo the same cached arrays.
    """
    head_keys = {f"head.{name}" for name in model.head.state_dict()}
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if name in head_keys or (start is not None and not model.in_blocks_before(name, start)):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def photo_key(
    file_hash: str,
    backbone: str,
    image_size: int,
    augment: AugmentConfig,
    seed: int,
    start: int | None = None,
    style: StyleConfig | None = None,
) -> str:
    """The cache key of one photo's views: everything the cached arrays depend on."""
    parts: dict = {
        "version": _CACHE_VERSION,
        # Arrays made before the canonical reader (version 1) read large photos differently.
        "read_scale": READ_SCALE,
        "file": file_hash,
        "backbone": backbone,
        "image_size": image_size,
        "augment": asdict(augment),
        "seed": seed,
    }
    if start is not None:
        parts["block_input"] = start
    if style is not None:
        parts["style"] = asdict(style)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def render_view(
    image: torch.Tensor,
    view: int,
    augment: nn.Module,
    seed: int,
    style: StyleConfig | None = None,
) -> torch.Tensor:
    """One view of a photo as a float ``(3, S, S)`` tensor in [0, 1].

    Args:
        image: the photo, uint8 ``(3, S, S)``.
        view: 0 the photo, 1 its mirror image, 2 and on a random augmentation.
        augment: the training augmentation (a kornia module).
        seed: seeds the augmentation of this photo and view (ignored for views 0 and 1).
        style: random style changes applied before ``augment`` (views 2 and on).
    """
    x = image.float().div(255.0)
    if view == 0:
        return x
    if view == 1:
        return x.flip(-1)
    if style is not None:
        pixels = image.permute(1, 2, 0).contiguous().numpy()
        styled = random_style(pixels, style, np.random.default_rng(seed))
        # a writable copy: Pillow-backed arrays are read-only
        x = torch.from_numpy(np.array(styled)).permute(2, 0, 1).float().div(255.0)
    # A private generator state, so caching (which skips this call) changes no other randomness.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return augment(x[None])[0]


def view_seed(file_hash: str, view: int, seed: int) -> int:
    """The augmentation seed of one view of one photo (stable across runs and machines)."""
    return int(hashlib.sha256(f"{file_hash}:{view}:{seed}".encode()).hexdigest()[:15], 16)


@torch.no_grad()
def compute_views(
    model: nn.Module,
    prep: Preprocessing,
    image: torch.Tensor,
    views: range,
    file_hash: str,
    augment: nn.Module,
    seed: int,
    start: int | None = None,
    style: StyleConfig | None = None,
    features: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:
    """Embed the given views of one photo: float32 ``(len(views), C)`` pooled embeddings, or
    the ``(len(views), C, H, W)`` input of block ``start``.

    ``features`` replaces ``model.forward_features`` for pooled embeddings (the same network
    run by ONNX Runtime, see :class:`~mpoxscan.models.onnx_forward.OnnxForward`).
    """
    batch = torch.stack(
        [render_view(image, v, augment, view_seed(file_hash, v, seed), style) for v in views]
    )
    x = normalize_batch(batch, prep)
    if start is not None:
        out = model.forward_until(x, start)
    else:
        out = (features or model.forward_features)(x).mean(dim=(2, 3))
    return out.numpy().astype(np.float32)


@torch.no_grad()
def embed_dataset(
    model: nn.Module,
    prep: Preprocessing,
    dataset: ImageDataset,
    n_views: int,
    *,
    augment: AugmentConfig,
    seed: int,
    cache: FeatureCache,
    start: int | None = None,
    style: StyleConfig | None = None,
) -> np.ndarray:
    """Pooled embeddings of the first ``n_views`` views of every photo of ``dataset``.

    Views already in ``cache`` are reused; missing ones are computed and added (through ONNX
    Runtime when there are at least ``MIN_PASSES`` of them: several times faster on CPU, the
    same embeddings to about 1e-4). With ``start``, the arrays are the input of backbone block
    ``start`` instead (partial fine-tuning).

    Args:
        model: a registry model (its backbone is used through ``model.forward_features``).
        prep: the model's preprocessing.
        dataset: the photos (decoded and resized to ``prep.image_size``).
        n_views: how many views per photo (see the module docstring).
        augment: the augmentation of views 2 and on.
        seed: the run's seed (part of each view's augmentation seed).
        cache: where embeddings are looked up and stored.
        start: ``None`` for pooled embeddings, else the block whose input is wanted.
        style: random style changes of views 2 and on (``FeatureConfig.style``).

    Returns:
        float32 ``(len(dataset), n_views, C)`` (or ``(len(dataset), n_views, C, H, W)``).
    """
    model.eval()
    backbone = backbone_fingerprint(model, start)
    augmenter = build_augmentation(augment, prep.image_size)
    hashes = [file_sha256(record.path) for record in dataset.records]
    keys = [photo_key(h, backbone, prep.image_size, augment, seed, start, style) for h in hashes]
    cached = [cache.get(key) for key in keys]
    missing = sum(n_views - (0 if c is None else min(n_views, len(c))) for c in cached)
    fast = OnnxForward(model, prep.image_size) if start is None and missing >= MIN_PASSES else None
    out = []
    for image, file_hash, key, have_views in zip(dataset.images, hashes, keys, cached, strict=True):
        have = 0 if have_views is None else len(have_views)
        if have < n_views:
            extra = compute_views(
                model,
                prep,
                image,
                range(have, n_views),
                file_hash,
                augmenter,
                seed,
                start,
                style,
                features=fast,
            )
            have_views = extra if have_views is None else np.concatenate([have_views, extra])
            cache.put(key, have_views)
        out.append(have_views[:n_views])
    if not out:
        return np.zeros((0, n_views, 0), dtype=np.float32)
    return np.stack(out)


def tail_start(model: nn.Module, tail_blocks: int) -> int | None:
    """Index of the first fine-tuned backbone block, or ``None`` when only the head trains.

    Raises:
        ValueError: the model is not an EfficientNet-Lite or has fewer blocks.
    """
    if tail_blocks == 0:
        return None
    blocks = getattr(model, "num_blocks", 0)
    if blocks == 0:
        raise ValueError(
            "FeatureConfig.tail_blocks needs an efficientnet-lite model; set it to 0 for "
            f"{getattr(model, 'architecture', type(model).__name__)}"
        )
    if tail_blocks > blocks:
        raise ValueError(f"tail_blocks is {tail_blocks}, but the model has {blocks} blocks")
    return blocks - tail_blocks


def head_logits(model: nn.Module, embeddings: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The head's logits for pooled embeddings ``(..., C)``; returns ``(..., num_outputs)``.

    The embedding is fed to ``forward_head`` as a 1x1 feature map, whose mean is itself.
    """
    x = torch.as_tensor(embeddings)
    flat = x.reshape(-1, x.shape[-1])
    logits = model.forward_head(flat[:, :, None, None])
    return logits.reshape(*x.shape[:-1], logits.shape[-1])


def check_pooled_head(model: nn.Module) -> None:
    """Raise ``ValueError`` unless the model's head reads only the pooled feature map.

    The recipe trains the head on pooled embeddings, which is exact only for heads that pool
    first (EfficientNet-Lite); seed-cnn and vgg16 flatten the whole map.
    """
    linears = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
    feature_map = torch.randn(2, linears[0].in_features if linears else 1, 3, 3)
    model.eval()
    try:
        with torch.no_grad():
            whole = model.forward_head(feature_map)
            pooled = head_logits(model, feature_map.mean(dim=(2, 3)))
        pools = len(linears) == 1 and torch.allclose(whole, pooled, atol=1e-5)
    except RuntimeError:
        pools = False
    if not pools:
        raise ValueError(
            f"The frozen-features recipe needs a head on pooled features with one linear layer "
            f"(efficientnet-lite*); {getattr(model, 'architecture', type(model).__name__)} has "
            "another head. Use --recipe finetune for it."
        )


def output_layer(model: nn.Module) -> nn.Linear:
    """The head's (last) linear layer, where a logistic regression is written."""
    return [m for m in model.head.modules() if isinstance(m, nn.Linear)][-1]


def tta_views(cfg: TrainConfig) -> int:
    """Views scored per validation or test photo: the photo, and its mirror with TTA."""
    return TTA_VIEWS if cfg.features.tta else 1


def view_options(cfg: TrainConfig, cache: FeatureCache, start: int | None) -> dict:
    """The keyword arguments of :func:`embed_dataset` that a training configuration fixes."""
    return {
        "augment": cfg.augment,
        "seed": cfg.seed,
        "cache": cache,
        "start": start,
        "style": cfg.features.style,
    }


def fit_frozen_head(
    model: nn.Module,
    train_ds: ImageDataset,
    val_ds: ImageDataset,
    cfg: TrainConfig,
    prep: Preprocessing,
    cache: FeatureCache,
) -> FitResult:
    """Freeze the backbone and train the head (and the tail, if asked) on cached arrays.

    Args:
        model: a registry model whose head pools first (EfficientNet-Lite).
        train_ds: training photos; ``cfg.features.train_views`` views of each are embedded.
        val_ds: validation photos; choose the epoch (``linear``) or ``C`` (``logreg``).
        cfg: the training configuration (``cfg.features`` holds this recipe's knobs).
        prep: the model's preprocessing.
        cache: the embedding cache (share one across folds: each photo is embedded once).

    Returns:
        A :class:`FitResult`; ``model`` holds the chosen head on return, its backbone untouched
        unless ``cfg.features.tail_blocks`` fine-tuned its last blocks. For ``logreg`` each
        history row is one ``C`` (``epoch`` is its 1-based index); tail epochs follow, marked
        ``"stage": "tail"``.
    """
    check_pooled_head(model)
    start = tail_start(model, cfg.features.tail_blocks)
    model.freeze_backbone()
    model.eval()
    views = view_options(cfg, cache, start)
    x_train = embed_dataset(model, prep, train_ds, cfg.features.train_views, **views)
    x_val = embed_dataset(model, prep, val_ds, tta_views(cfg), **views)
    e_train, e_val = _pooled(model, x_train, start), _pooled(model, x_val, start)
    y_train, y_val = train_ds.labels, val_ds.labels
    if cfg.features.head == "logreg":
        weights = sample_weights(train_ds.records, y_train.numpy(), cfg.features.balance)
        result = _fit_logreg(model, e_train, y_train, e_val, y_val, cfg, weights)
    else:
        result = _fit_linear(model, e_train, y_train, e_val, y_val, cfg)
    if start is None:
        return result
    return _fit_tail(model, x_train, y_train, x_val, y_val, cfg, start, result)


@torch.no_grad()
def _pooled(model: nn.Module, x: np.ndarray, start: int | None) -> np.ndarray:
    """Pooled embeddings ``(N, V, C)`` from cached arrays (block inputs run through the tail)."""
    if start is None or len(x) == 0:
        return x
    model.eval()
    flat = torch.from_numpy(x.reshape(-1, *x.shape[2:]))
    pooled = [model.forward_from(chunk, start).mean(dim=(2, 3)) for chunk in flat.split(64)]
    return torch.cat(pooled).numpy().reshape(*x.shape[:2], -1)


def _fit_tail(
    model: nn.Module,
    x_train: np.ndarray,
    y_train: torch.Tensor,
    x_val: np.ndarray,
    y_val: torch.Tensor,
    cfg: TrainConfig,
    start: int,
    head_result: FitResult,
) -> FitResult:
    """Fine-tune blocks ``start`` and on, the final convolution and the head on cached block
    inputs, every training view a sample; early stopping on validation loss."""
    torch.manual_seed(cfg.seed)
    model.freeze_blocks_before(start)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.backbone_lr, weight_decay=cfg.weight_decay)
    loss_fn = class_balanced_loss(y_train.tolist(), num_outputs_of(model))
    history = [row | {"stage": "head"} for row in head_result.history]
    stopping = EarlyStopping(
        cfg.patience,
        best_loss=_tail_val_loss(model, x_val, y_val, loss_fn, start)["loss"],
        best_epoch=head_result.best_epoch,
    )
    result = run_epochs(
        lambda rows: model.forward_head(model.forward_from(rows, start)),
        _view_loader(x_train, y_train, cfg),
        lambda: _tail_val_loss(model, x_val, y_val, loss_fn, start),
        loss_fn,
        optimizer,
        trained=model,
        epochs=cfg.features.tail_epochs,
        stopping=stopping,
        first_epoch=len(history) + 1,
        stage="tail",
    )
    model.freeze_backbone()
    return FitResult(history + result.history, result.best_epoch, result.best_state)


def _view_loader(x: np.ndarray, y: torch.Tensor, cfg: TrainConfig) -> ArrayLoader:
    """Batches of cached arrays ``(N, V, ...)``, every view of a photo one sample."""
    rows = torch.from_numpy(x.reshape(-1, *x.shape[2:]))
    return ArrayLoader(rows, y.repeat_interleave(x.shape[1]), cfg.batch_size, cfg.seed)


@torch.no_grad()
def _tail_val_loss(
    model: nn.Module, x: np.ndarray, y: torch.Tensor, loss_fn: nn.Module, start: int
) -> dict[str, float]:
    """Validation loss and accuracy through tail and head, logits averaged over views."""
    return _val_loss(model, _pooled(model, x, start), y, loss_fn)


def _fit_linear(
    model: nn.Module,
    x_train: np.ndarray,
    y_train: torch.Tensor,
    x_val: np.ndarray,
    y_val: torch.Tensor,
    cfg: TrainConfig,
) -> FitResult:
    """AdamW on the head over every training view; early stopping on validation loss."""
    torch.manual_seed(cfg.seed)
    loss_fn = class_balanced_loss(y_train.tolist(), num_outputs_of(model))
    optimizer = torch.optim.AdamW(
        model.head_parameters(), lr=cfg.features.lr, weight_decay=cfg.weight_decay
    )
    result = run_epochs(
        lambda rows: head_logits(model, rows),
        _view_loader(x_train, y_train, cfg),
        lambda: _val_loss(model, x_val, y_val, loss_fn),
        loss_fn,
        optimizer,
        trained=model.head,
        epochs=cfg.features.epochs,
        stopping=EarlyStopping(cfg.features.patience),
    )
    return FitResult(result.history, result.best_epoch, best_state=model.state_dict())


def _fit_logreg(
    model: nn.Module,
    x_train: np.ndarray,
    y_train: torch.Tensor,
    x_val: np.ndarray,
    y_val: torch.Tensor,
    cfg: TrainConfig,
    weights: np.ndarray | None = None,
) -> FitResult:
    """L2 logistic regression per ``C`` on standardised embeddings; the lowest validation loss
    wins and is written into the output layer (the standardisation folded into its weights).

    ``weights`` (one per photo, see :func:`sample_weights`) replace ``class_weight="balanced"``.
    """
    rows = x_train.reshape(-1, x_train.shape[-1]).astype(np.float64)
    labels = y_train.repeat_interleave(x_train.shape[1]).numpy()
    row_weights = None if weights is None else np.repeat(weights, x_train.shape[1])
    class_weight = "balanced" if weights is None else None
    mean, scale = rows.mean(axis=0), rows.std(axis=0) + 1e-6
    loss_fn = class_balanced_loss(y_train.tolist(), num_outputs_of(model))
    history: list[dict[str, float]] = []
    best_loss, best_epoch, best_head = float("inf"), 0, None
    for index, c in enumerate(cfg.features.logreg_cs, start=1):
        classifier = LogisticRegression(C=c, class_weight=class_weight, max_iter=5000)
        classifier.fit((rows - mean) / scale, labels, sample_weight=row_weights)
        _write_linear(output_layer(model), classifier, mean, scale)
        train = _val_loss(model, x_train, y_train, loss_fn)
        val = _val_loss(model, x_val, y_val, loss_fn)
        row = epoch_row(index, train["loss"], train["accuracy"], val["loss"], val["accuracy"])
        history.append(row | {"C": c})
        if val["loss"] < best_loss or best_head is None:
            best_loss, best_epoch = val["loss"], index
            best_head = copy.deepcopy(model.head.state_dict())
    model.head.load_state_dict(best_head)
    return FitResult(history=history, best_epoch=best_epoch, best_state=model.state_dict())


def sample_weights(
    records: list[ImageRecord], labels: np.ndarray, balance: Balance
) -> np.ndarray | None:
    """Per-photo training weights for ``FeatureConfig.balance``, mean 1.

    ``"class"`` gives ``None`` (the logistic regression's own ``class_weight="balanced"``).
    ``"source"`` gives every class the same total weight and, inside a class, every *cell* the
    same share: a cell is the photos of one source with one label, photos of skin without a
    lesion (:func:`~mpoxscan.inference.no_lesion.is_no_lesion_class`) a cell of their own.
    Records without a ``source`` count as one source.
    """
    if balance == "class":
        return None
    cells = np.array(
        [
            f"{getattr(r, 'source', None)}|{label}|{is_no_lesion_class(r.class_name)}"
            for r, label in zip(records, labels, strict=True)
        ]
    )
    weights = np.zeros(len(records))
    for label in np.unique(labels):
        in_label = labels == label
        label_cells = np.unique(cells[in_label])
        for cell in label_cells:
            members = cells == cell
            weights[members] = 1.0 / (members.sum() * len(label_cells))
    return weights * len(weights) / weights.sum()


def _write_linear(
    layer: nn.Linear, classifier: LogisticRegression, mean: np.ndarray, scale: np.ndarray
) -> None:
    """Copy a logistic regression on ``(x - mean) / scale`` into ``layer`` acting on ``x``."""
    coef = classifier.coef_ / scale
    intercept = classifier.intercept_ - coef @ mean
    if coef.shape[0] != layer.out_features:
        raise ValueError(
            f"The logistic regression has {coef.shape[0]} output(s), the model "
            f"{layer.out_features}: every class needs training photos."
        )
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(coef).to(layer.weight.dtype))
        layer.bias.copy_(torch.from_numpy(intercept).to(layer.bias.dtype))


@torch.no_grad()
def _val_loss(
    model: nn.Module, x: np.ndarray, y: torch.Tensor, loss_fn: nn.Module
) -> dict[str, float]:
    """Loss and accuracy of the head on embeddings ``(N, V, C)``, logits averaged over views."""
    model.eval()
    logits = head_logits(model, x).mean(dim=1) if len(y) else torch.empty(0)
    return logits_loss(logits, y, loss_fn)


@torch.no_grad()
def frozen_logits(
    model: nn.Module,
    dataset: ImageDataset,
    cfg: TrainConfig,
    prep: Preprocessing,
    cache: FeatureCache,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (mean over the TTA views) and labels of every photo, from cached embeddings.

    Without TTA these are the logits the saved network gives for the photos (up to float
    rounding); with TTA they average the photo and its mirror image.
    """
    start = tail_start(model, cfg.features.tail_blocks)
    x = embed_dataset(model, prep, dataset, tta_views(cfg), **view_options(cfg, cache, start))
    model.eval()
    if len(x) == 0:
        return torch.empty(0, num_outputs_of(model)), dataset.labels
    return head_logits(model, _pooled(model, x, start)).mean(dim=1), dataset.labels


def frozen_embeddings(
    model: nn.Module,
    dataset: ImageDataset,
    cfg: TrainConfig,
    prep: Preprocessing,
    cache: FeatureCache,
) -> np.ndarray:
    """The photos' own embeddings (view 0), ``(N, C)``, for the out-of-domain detector."""
    start = tail_start(model, cfg.features.tail_blocks)
    x = embed_dataset(model, prep, dataset, 1, **view_options(cfg, cache, start))
    return _pooled(model, x, start)[:, 0]
