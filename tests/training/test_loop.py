"""Early stopping as every training path uses it (fine-tuning, frozen heads, tail blocks)."""

from mpoxscan.training.loop import EarlyStopping


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience():
    stopping = EarlyStopping(patience=2)
    kept = [stopping.update(loss, epoch) for epoch, loss in enumerate([0.9, 0.7, 0.8], start=1)]
    assert kept == [True, True, False] and not stopping.should_stop
    assert not stopping.update(0.75, 4) and stopping.should_stop
    assert (stopping.best_epoch, stopping.best_loss) == (2, 0.7)


def test_early_stopping_from_a_starting_loss_must_beat_it():
    stopping = EarlyStopping(patience=1, best_loss=0.5, best_epoch=7)
    assert not stopping.update(0.6, 8) and stopping.should_stop
    assert stopping.best_epoch == 7
    first = EarlyStopping(patience=1)
    assert first.update(float("inf"), 1)  # the first epoch is kept even when it is bad


def test_run_epochs_trains_stops_early_and_restores_the_best_epoch():
    import torch
    from torch import nn

    from mpoxscan.training.loop import ArrayLoader, class_balanced_loss, run_epochs

    torch.manual_seed(0)
    x = torch.randn(40, 3)
    y = (x[:, 0] > 0).long()
    model = nn.Linear(3, 1)
    loss_fn = class_balanced_loss(y.tolist(), 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    # The validation loss is scripted: best at the 2nd epoch, then two worse ones stop the run.
    val_losses = iter([0.9, 0.5, 0.7, 0.8, 0.1])
    states = []

    def validate():
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"loss": next(val_losses), "accuracy": 0.5}

    loader = ArrayLoader(x, y, batch_size=16, seed=1)
    assert len(loader) == 3 and sum(len(b) for b, _ in loader) == 40
    result = run_epochs(
        model,
        loader,
        validate,
        loss_fn,
        optimizer,
        trained=model,
        epochs=5,
        stopping=EarlyStopping(patience=2),
        first_epoch=7,
        stage="tail",
    )
    assert [row["epoch"] for row in result.history] == [7, 8, 9, 10]
    assert all(row["stage"] == "tail" for row in result.history)
    assert result.best_epoch == 8
    for key, value in model.state_dict().items():
        assert torch.equal(value, states[1][key])  # the weights after epoch 8
    assert not model.training
