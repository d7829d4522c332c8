"""The one training loop every model goes through: epochs, early stopping, best weights kept."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mpoxscan.data.preprocessing import Preprocessing
from mpoxscan.data.transforms import build_augmentation, normalize_batch
from mpoxscan.training.config import TrainConfig


class EarlyStopping:
    """Keeps the best validation loss and says when to stop: after ``patience`` epochs in a
    row without a lower loss.

    Args:
        patience: epochs without improvement before stopping.
        best_loss: a loss to beat from the start (e.g. the model before this stage).
        best_epoch: the epoch that loss came from.

    Attributes:
        best_loss, best_epoch: the best so far.
    """

    def __init__(self, patience: int, best_loss: float | None = None, best_epoch: int = 0):
        self.patience = patience
        self.best_loss = math.inf if best_loss is None else best_loss
        self.best_epoch = best_epoch
        self._has_best = best_loss is not None
        self._stale = 0

    def update(self, loss: float, epoch: int) -> bool:
        """Record an epoch's validation loss; ``True`` when it is the best so far (the first
        epoch always is, unless a starting loss was given), so its weights should be kept."""
        if loss < self.best_loss or not self._has_best:
            self.best_loss, self.best_epoch, self._stale = loss, epoch, 0
            self._has_best = True
            return True
        self._stale += 1
        return False

    @property
    def should_stop(self) -> bool:
        """Whether ``patience`` epochs in a row brought no improvement."""
        return self._stale >= self.patience


@dataclass
class FitResult:
    """What ``fit`` learned: the per-epoch history and the restored best epoch."""

    history: list[dict[str, float]]
    best_epoch: int
    best_state: dict[str, torch.Tensor]


def class_balanced_loss(labels: Iterable[int], num_outputs: int) -> nn.Module:
    """A loss that weighs each class by the inverse of its frequency in the training labels.

    Binary models (one logit) get ``BCEWithLogitsLoss`` with ``pos_weight = negatives /
    positives``; multi-class models get ``CrossEntropyLoss`` with inverse-frequency weights.
    """
    counts = np.bincount(np.asarray(list(labels), dtype=np.int64), minlength=max(num_outputs, 2))
    counts = np.maximum(counts, 1).astype(np.float32)
    if num_outputs == 1:
        return nn.BCEWithLogitsLoss(pos_weight=torch.tensor(counts[0] / counts[1]))
    weights = counts.sum() / (len(counts) * counts)
    return nn.CrossEntropyLoss(weight=torch.from_numpy(weights))


def _loss_and_correct(
    logits: torch.Tensor, labels: torch.Tensor, loss_fn: nn.Module
) -> tuple[torch.Tensor, int]:
    if logits.shape[1] == 1:
        logits = logits[:, 0]
        loss = loss_fn(logits, labels.float())
        predicted = (logits > 0).long()
    else:
        loss = loss_fn(logits, labels)
        predicted = logits.argmax(dim=1)
    return loss, int((predicted == labels).sum())


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    prep: Preprocessing,
    augment: nn.Module | None = None,
    on_batch=None,
) -> dict[str, float]:
    """Run one pass over ``loader`` with gradient steps; returns mean loss and accuracy."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for images, labels in loader:
        if augment is not None:
            images = augment(images)
        logits = model(normalize_batch(images, prep))
        loss, batch_correct = _loss_and_correct(logits, labels, loss_fn)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(labels)
        correct += batch_correct
        seen += len(labels)
        if on_batch is not None:
            on_batch(total_loss / seen, correct / seen)
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1)}


@torch.no_grad()
def predict_logits(
    model: nn.Module, dataset: Dataset, prep: Preprocessing, batch_size: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels for every item of ``dataset``, in order, without augmentation."""
    model.eval()
    all_logits, all_labels = [], []
    for images, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        all_logits.append(model(normalize_batch(images, prep)))
        all_labels.append(labels)
    if not all_logits:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(all_logits), torch.cat(all_labels)


def evaluate_loader(
    model: nn.Module, dataset: Dataset, loss_fn: nn.Module, prep: Preprocessing
) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` on ``dataset`` (evaluation mode, no augmentation)."""
    logits, labels = predict_logits(model, dataset, prep)
    if len(labels) == 0:
        return {"loss": float("nan"), "accuracy": float("nan")}
    with torch.no_grad():
        loss, correct = _loss_and_correct(logits, labels, loss_fn)
    return {"loss": float(loss), "accuracy": correct / len(labels)}


def make_optimizer(model: nn.Module, cfg: TrainConfig, backbone_lr: float) -> torch.optim.Optimizer:
    """AdamW with a slower learning rate for the backbone than for the new head."""
    head = [p for p in model.head_parameters() if p.requires_grad]
    backbone = [p for p in model.backbone_parameters() if p.requires_grad]
    groups = [{"params": head, "lr": cfg.head_lr}]
    if backbone and not cfg.freeze_backbone:
        groups.append({"params": backbone, "lr": backbone_lr})
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        disable=not enabled,
    )


def fit(
    model: nn.Module,
    train_ds: Dataset,
    val_ds: Dataset,
    cfg: TrainConfig,
    prep: Preprocessing,
    *,
    backbone_lr: float | None = None,
    show_progress: bool = True,
) -> FitResult:
    """Train ``model`` with early stopping on validation loss and restore its best weights.

    Args:
        model: a registry model (``head_parameters`` / ``backbone_parameters``).
        train_ds: yields ``([0, 1] image tensor, label)``; augmented here, on this split only.
        val_ds: the validation split; chooses the epoch, never trained on.
        cfg: the training configuration (epochs, learning rates, patience, seed, augmentation).
        prep: the model's preprocessing (normalisation applied after augmentation).
        backbone_lr: overrides ``cfg.backbone_lr`` (a randomly initialised backbone trains at
            the head's rate).
        show_progress: draw a progress bar per epoch with loss and accuracy.

    Returns:
        A :class:`FitResult`; ``model`` holds the best epoch's weights on return.
    """
    torch.manual_seed(cfg.seed)
    if cfg.freeze_backbone:
        for param in model.backbone_parameters():
            param.requires_grad_(False)
    loader = DataLoader(
        train_ds,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=len(train_ds) > cfg.batch_size,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    loss_fn = class_balanced_loss(_labels_of(train_ds), num_outputs_of(model))
    optimizer = make_optimizer(model, cfg, cfg.backbone_lr if backbone_lr is None else backbone_lr)
    augment = build_augmentation(cfg.augment, prep.image_size)
    history: list[dict[str, float]] = []
    stopping, best_state = EarlyStopping(cfg.patience), None
    with _progress(show_progress) as progress:
        for epoch in range(1, cfg.epochs + 1):
            task = progress.add_task(f"epoch {epoch}/{cfg.epochs}", total=len(loader), stats="")

            def on_batch(loss: float, acc: float, task=task) -> None:
                progress.update(task, advance=1, stats=f"loss {loss:.4f}  acc {acc:.3f}")

            train = train_one_epoch(model, loader, loss_fn, optimizer, prep, augment, on_batch)
            val = evaluate_loader(model, val_ds, loss_fn, prep)
            history.append(_epoch_row(epoch, train, val))
            progress.update(task, stats=_epoch_stats(history[-1]))
            if stopping.update(val["loss"], epoch):
                best_state = copy.deepcopy(model.state_dict())
            elif stopping.should_stop:
                break
    model.load_state_dict(best_state)
    return FitResult(history=history, best_epoch=stopping.best_epoch, best_state=best_state)


def _epoch_row(epoch: int, train: dict[str, float], val: dict[str, float]) -> dict[str, float]:
    return {
        "epoch": epoch,
        "train_loss": train["loss"],
        "train_accuracy": train["accuracy"],
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
    }


def _epoch_stats(row: dict[str, float]) -> str:
    return (
        f"loss {row['train_loss']:.4f}  acc {row['train_accuracy']:.3f}  "
        f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.3f}"
    )


def _labels_of(dataset: Dataset) -> list[int]:
    return [record.label for record in dataset.records]


def num_outputs_of(model: nn.Module) -> int:
    """Number of logits the model emits: the length of its output layer's bias."""
    return int(list(model.head_parameters())[-1].shape[0])
