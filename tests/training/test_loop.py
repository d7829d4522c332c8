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
