"""Per-source figures against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from mpoxscan.evaluation.per_source import ScoredPhotos, per_source_figures

Z = 1.959963984540054  # two-sided 95% normal quantile


def wilson(k: int, n: int) -> list[float]:
    """The Wilson score interval, written out."""
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return [centre - half, centre + half]


@pytest.fixture
def photos() -> ScoredPhotos:
    # web: 4 mpox photos of 3 patients, 2 others; clinic: 5 healthy photos of 5 groups
    rows = [
        # source, class, label, group, probability, refused
        ("web", "Monkey Pox", 1, "p1", 0.90, False),  # called at 0.3 and at 0.5
        ("web", "Monkey Pox", 1, "p1", 0.40, False),  # called at 0.3 only
        ("web", "Monkey Pox", 1, "p2", 0.20, False),  # missed
        ("web", "Monkey Pox", 1, "p3", 0.95, True),  # refused: a miss although p is high
        ("web", "Others", 0, "o1", 0.35, False),  # called at 0.3
        ("web", "Others", 0, "o2", 0.10, False),
        ("clinic", "Healthy", 0, "h1", 0.60, False),  # called at both
        ("clinic", "Healthy", 0, "h2", 0.05, True),  # refused
        ("clinic", "Healthy", 0, "h3", 0.31, False),  # called at 0.3
        ("clinic", "Healthy", 0, "h4", 0.29, False),
        ("clinic", "Healthy", 0, "h5", 0.30, False),  # at the threshold counts as called
    ]
    columns = list(zip(*rows, strict=True))
    return ScoredPhotos.build(*columns[:5], threshold=0.3, refused=columns[5])


def test_rows_per_source_and_class_with_hand_computed_shares(photos):
    rows = {(r["source"], r["class"]): r for r in per_source_figures(photos)}
    assert list(rows) == [
        ("web", "Monkey Pox"),
        ("web", "Others"),
        ("web", "(all)"),
        ("clinic", "Healthy"),
    ]
    mpox = rows["web", "Monkey Pox"]
    assert (mpox["label"], mpox["photos"], mpox["groups"]) == ("mpox", 4, 3)
    assert mpox["called_n"] == [2, 4] and mpox["called"] == 0.5
    assert mpox["called_at_0_5_n"] == [1, 4]
    assert mpox["refused_n"] == [1, 4]
    assert mpox["sensitivity"] == 0.5
    assert mpox["sensitivity_ci"] == pytest.approx(wilson(2, 4))
    assert mpox["called_ci"] == pytest.approx(wilson(2, 4))
    assert mpox["called_at_0_5_ci"] == pytest.approx(wilson(1, 4))

    healthy = rows["clinic", "Healthy"]
    assert (healthy["label"], healthy["photos"], healthy["groups"]) == ("negative", 5, 5)
    assert healthy["called_n"] == [3, 5] and healthy["called"] == pytest.approx(0.6)
    assert healthy["called_at_0_5_n"] == [1, 5]
    assert healthy["refused_n"] == [1, 5] and healthy["refused"] == pytest.approx(0.2)
    assert healthy["refused_ci"] == pytest.approx(wilson(1, 5))
    assert "sensitivity" not in healthy

    web = rows["web", "(all)"]
    assert (web["label"], web["photos"], web["groups"]) == ("mixed", 6, 5)
    assert web["called_n"] == [3, 6] and web["refused_n"] == [1, 6]
    assert "sensitivity" not in web


def test_a_threshold_per_photo_is_used_for_that_photo():
    photos = ScoredPhotos.build(
        ["s", "s"], ["A", "A"], [0, 0], ["g1", "g2"], [0.4, 0.4], threshold=[0.3, 0.5]
    )
    (row,) = per_source_figures(photos)
    assert row["called_n"] == [1, 2] and row["refused_n"] == [0, 2]
    assert row["called_ci"] == pytest.approx(wilson(1, 2))


def test_columns_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="one entry per photo"):
        ScoredPhotos.build(["s"], ["A", "A"], [0, 0], ["g", "h"], [0.1, 0.2], threshold=0.5)
