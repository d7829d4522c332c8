"""The one training loop every model goes through: epochs, early stopping, best weights kept.

:func:`run_epochs` is the loop. It trains whatever a forward function turns a batch into logits
with: the whole network on augmented photos (:func:`fit`, fine-tuning), the head on cached
embeddings, or the last backbone blocks and the head on cached block inputs (the
frozen-features recipe, with an :class:`ArrayLoader` over the cached arrays).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import Protocol

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
    def has_best(self) -> bool:
        """Whether there is a best epoch (or a starting loss) to restore."""
        return self._has_best

    @property
    def should_stop(self) -> bool:
        """Whether ``patience`` epochs in a row brought no improvement."""
        return self._stale >= self.patience


@dataclass
class FitResult:
    """What a training run learned: the per-epoch history and the restored best epoch.

    Attributes:
        history: one row per epoch (``epoch``, ``train_loss``, ``train_accuracy``, ``val_loss``,
            ``val_accuracy``, and ``stage`` when the run has several).
        best_epoch: the epoch whose weights the model holds.
        best_state: those weights (of the module that was trained).
    """

    history: list[dict[str, float]]
    best_epoch: int
    best_state: dict[str, torch.Tensor]


class BatchLoader(Iterable[tuple[torch.Tensor, torch.Tensor]], Sized, Protocol):
    """Batches of ``(inputs, labels)``, in a new order each time it is iterated."""


class ArrayLoader:
    """Shuffled mini-batches of in-memory arrays (cached embeddings or block inputs).

    Args:
        inputs: one row per sample, ``(N, ...)``.
        labels: ``(N,)`` class indices.
        batch_size: rows per batch (the last batch may be smaller).
        seed: seeds the order of the batches, a new one each epoch.
    """

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int):
        self.inputs = inputs
        self.labels = labels
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.inputs), generator=self.generator)
        for batch in order.split(self.batch_size):
            yield self.inputs[batch], self.labels[batch]

    def __len__(self) -> int:
        return math.ceil(len(self.inputs) / self.batch_size)


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


def loss_and_correct(
    logits: torch.Tensor, labels: torch.Tensor, loss_fn: nn.Module
) -> tuple[torch.Tensor, int]:
    """The loss of a batch of logits (one logit: binary) and how many it classifies right."""
    if logits.shape[1] == 1:
        logits = logits[:, 0]
        loss = loss_fn(logits, labels.float())
        predicted = (logits > 0).long()
    else:
        loss = loss_fn(logits, labels)
        predicted = logits.argmax(dim=1)
    return loss, int((predicted == labels).sum())


def train_one_epoch(
    forward: Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    on_batch: Callable[[float, float], None] | None = None,
) -> dict[str, float]:
    """Run one pass over ``loader`` with gradient steps; returns mean loss and accuracy.

    Args:
        forward: a batch's inputs to logits (the trained modules in training mode).
        loader: ``(inputs, labels)`` batches.
        loss_fn: see :func:`class_balanced_loss`.
        optimizer: steps once per batch.
        on_batch: called after each batch with the running loss and accuracy.
    """
    total_loss, correct, seen = 0.0, 0, 0
    for inputs, labels in loader:
        logits = forward(inputs)
        loss, batch_correct = loss_and_correct(logits, labels, loss_fn)
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
    return logits_loss(*predict_logits(model, dataset, prep), loss_fn)


@torch.no_grad()
def logits_loss(logits: torch.Tensor, labels: torch.Tensor, loss_fn: nn.Module) -> dict[str, float]:
    """Mean loss and accuracy of logits already computed (NaN for no samples)."""
    if len(labels) == 0:
        return {"loss": float("nan"), "accuracy": float("nan")}
    loss, correct = loss_and_correct(logits, labels, loss_fn)
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

    def forward(images: torch.Tensor) -> torch.Tensor:
        if augment is not None:
            images = augment(images)
        return model(normalize_batch(images, prep))

    return run_epochs(
        forward,
        loader,
        lambda: evaluate_loader(model, val_ds, loss_fn, prep),
        loss_fn,
        optimizer,
        trained=model,
        epochs=cfg.epochs,
        stopping=EarlyStopping(cfg.patience),
        show_progress=show_progress,
    )


def run_epochs(
    forward: Callable[[torch.Tensor], torch.Tensor],
    loader: BatchLoader,
    validate: Callable[[], dict[str, float]],
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    trained: nn.Module,
    epochs: int,
    stopping: EarlyStopping,
    first_epoch: int = 1,
    stage: str | None = None,
    show_progress: bool = False,
) -> FitResult:
    """Train epoch by epoch, stop early on the validation loss, restore the best epoch.

    Args:
        forward: a training batch's inputs to logits.
        loader: the training batches, reshuffled each epoch.
        validate: the validation ``{"loss", "accuracy"}`` of the model as it is now.
        loss_fn: see :func:`class_balanced_loss`.
        optimizer: over the trained parameters.
        trained: the module in training mode during an epoch, whose weights are kept at the
            best epoch and restored at the end (the model, or only its head).
        epochs: most epochs to run.
        stopping: the early stopping rule (it may start from an earlier stage's best).
        first_epoch: the number of the first epoch (after an earlier stage's epochs).
        stage: recorded as ``"stage"`` in each history row, when given.
        show_progress: draw a progress bar per epoch with loss and accuracy.

    Returns:
        A :class:`FitResult`; the model is in evaluation mode on return.
    """
    history: list[dict[str, float]] = []
    best_state = copy.deepcopy(trained.state_dict()) if stopping.has_best else None
    last = first_epoch + epochs - 1
    with _progress(show_progress) as progress:
        for epoch in range(first_epoch, last + 1):
            task = progress.add_task(f"epoch {epoch}/{last}", total=len(loader), stats="")

            def on_batch(loss: float, acc: float, task=task) -> None:
                progress.update(task, advance=1, stats=f"loss {loss:.4f}  acc {acc:.3f}")

            trained.train()
            train = train_one_epoch(forward, loader, loss_fn, optimizer, on_batch)
            row = _epoch_row(epoch, train, validate())
            history.append(row if stage is None else row | {"stage": stage})
            progress.update(task, stats=_epoch_stats(row))
            if stopping.update(row["val_loss"], epoch):
                best_state = copy.deepcopy(trained.state_dict())
            elif stopping.should_stop:
                break
    trained.load_state_dict(best_state)
    trained.eval()
    return FitResult(history=history, best_epoch=stopping.best_epoch, best_state=best_state)


def epoch_row(
    epoch: int, train_loss: float, train_acc: float, val_loss: float, val_acc: float
) -> dict[str, float]:
    """One row of a training history."""
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "train_accuracy": train_acc,
        "val_loss": val_loss,
        "val_accuracy": val_acc,
    }


def _epoch_row(epoch: int, train: dict[str, float], val: dict[str, float]) -> dict[str, float]:
    return epoch_row(epoch, train["loss"], train["accuracy"], val["loss"], val["accuracy"])


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
