"""`evaluate` on several sources: per-source figures, with refusals, for every source and class."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from mpoxscan.cli import app
from mpoxscan.evaluation.evaluate import evaluate_bundle

from testdata import write_class_folder


def test_evaluate_gives_every_source_and_class_its_figures(tiny_bundle, tmp_path):
    write_class_folder(tmp_path / "web/Monkey Pox", True, patients=4, photos=2, seed=71)
    write_class_folder(tmp_path / "web/Others", False, patients=3, photos=1, seed=72)
    write_class_folder(tmp_path / "clinic/Healthy", False, patients=5, photos=1, seed=73)
    report = evaluate_bundle(tiny_bundle, [tmp_path / "web", tmp_path / "clinic"])
    rows = {(row["source"], row["class"]): row for row in report.per_source}
    assert set(rows) == {
        ("web", "Monkey Pox"),
        ("web", "Others"),
        ("web", "(all)"),
        ("clinic", "Healthy"),
    }
    mpox = rows["web", "Monkey Pox"]
    assert (mpox["photos"], mpox["groups"], mpox["label"]) == (8, 4, "mpox")
    assert mpox["sensitivity"] == mpox["called"]
    assert rows["clinic", "Healthy"]["photos"] == 5
    assert report.metrics["n_images"] == 16
    for row in rows.values():
        k, n = row["called_n"]
        assert n == row["photos"] and 0 <= k <= n
        assert row["refused_n"][1] == n

    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--model-dir",
            str(tiny_bundle),
            "--data",
            str(tmp_path / "web"),
            "--data",
            str(tmp_path / "clinic"),
            "--json",
            str(tmp_path / "m.json"),
            "--plots",
            str(tmp_path / "plots"),
        ],
        terminal_width=120,
    )
    assert result.exit_code == 0, result.output
    assert "Photos per source" in result.output and "clinic" in result.output
    saved = json.loads((tmp_path / "m.json").read_text())
    assert [r["source"] for r in saved["per_source"]] == ["web", "web", "web", "clinic"]


def test_a_source_the_bundle_was_trained_on_gives_only_its_test_patients(
    tiny_bundle, tiny_dataset, tmp_path
):
    from mpoxscan.data.datasets import scan_dataset
    from mpoxscan.data.sources import load_sources
    from mpoxscan.evaluation.evaluate import evaluation_records
    from mpoxscan.inference.bundle import read_bundle_meta

    meta = read_bundle_meta(tiny_bundle)
    alone, _ = evaluation_records(scan_dataset(tiny_dataset), meta)
    write_class_folder(tmp_path / "clinic/Healthy", False, patients=5, photos=1, seed=73)
    index = load_sources([tiny_dataset, tmp_path / "clinic"])
    records, description = evaluation_records(index, meta)
    trained = [r for r in records if r.source == tiny_dataset.name]
    assert sorted(r.path for r in trained) == sorted(r.path for r in alone)
    assert len(trained) < sum(r.source == tiny_dataset.name for r in index.records)
    assert sum(r.source == "clinic" for r in records) == 5
    assert "held-out test patients of" in description
