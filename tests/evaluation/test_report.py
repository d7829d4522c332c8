"""The cross-validation report is one self-contained HTML page with this run's numbers."""

from __future__ import annotations

import base64
import io
import json
import re

import pytest
from PIL import Image

from mpoxscan.evaluation.metrics import to_jsonable
from mpoxscan.evaluation.per_source import ScoredPhotos, per_source_figures
from mpoxscan.evaluation.report import write_report
from mpoxscan.evaluation.tables import format_ci, format_number


@pytest.fixture(scope="module")
def page(cv_dir, tmp_path_factory) -> str:
    out = write_report(cv_dir, tmp_path_factory.mktemp("report") / "nested" / "report.html")
    assert out.name == "report.html"
    return out.read_text(encoding="utf-8")


def test_page_is_self_contained(page):
    assert page.startswith("<!DOCTYPE html>")
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and "<link" not in page.lower()
    sources = re.findall(r'<img src="([^"]+)"', page)
    # ROC, PR, confusion matrix, reliability, and training curves of 2 folds x 2 repeats.
    assert len(sources) == 8
    for source in sources:
        assert source.startswith("data:image/png;base64,")
    png = base64.b64decode(sources[0].split(",", 1)[1])
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.width > 100


def test_page_holds_the_numbers(page, cv_dir):
    summary = json.loads((cv_dir / "summary.json").read_text())
    pooled = summary["pooled"]
    assert "60 photos of 30 patients" in page
    assert format_number(pooled["roc_auc"]) in page
    assert format_ci(pooled["roc_auc_ci"]) in page
    assert format_ci(pooled["patient_level"]["sensitivity_ci"]) in page
    assert f"{pooled['tp']}/{pooled['tp'] + pooled['fn']}" in page
    roc = summary["mean_std"]["roc_auc"]
    assert f"{format_number(roc['mean'])} ± {format_number(roc['std'])}" in page
    assert format_number(summary["folds"][3]["metrics"]["specificity"]) in page
    assert summary["command"] in page
    assert "2.13.0" in page
    assert "target sensitivity of 0.95" in page
    assert "How to read this" in page


def test_names_from_the_data_are_escaped(tmp_path, cv_dir_factory):
    cv_dir = cv_dir_factory(tmp_path / "cv", folds=2, repeats=1, patients=12)
    summary = json.loads((cv_dir / "summary.json").read_text())
    summary["data"]["per_class"] = {"<b>Other</b>": 12}
    summary["folds"] = [{**fold, "history": []} for fold in summary["folds"]]
    (cv_dir / "summary.json").write_text(json.dumps(summary))
    page = write_report(cv_dir, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "&lt;b&gt;Other&lt;/b&gt;" in page and "<b>Other</b>" not in page
    # Without histories there is no training-curves section; the four other plots remain.
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 4


def test_missing_files_say_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="mpoxscan cv"):
        write_report(tmp_path, tmp_path / "r.html")


def test_the_logistic_head_is_plotted_and_tabled_by_c_not_by_epoch(tmp_path, cv_dir_factory):
    cv_dir = cv_dir_factory(tmp_path / "cv", folds=2, repeats=1, patients=12)
    summary = json.loads((cv_dir / "summary.json").read_text())
    grid = [0.001, 0.01, 0.1, 1.0]
    for fold in summary["folds"]:
        fold["history"] = [
            {**row, "epoch": index + 1, "C": c}
            for index, (row, c) in enumerate(zip(fold["history"], grid, strict=False))
        ]
        fold["best_epoch"] = 2
    summary["config"] |= {
        "model": {"name": "efficientnet-lite0"},
        "train": {"recipe": "frozen-features", "features": {"head": "logreg"}, "seed": 1},
    }
    (cv_dir / "summary.json").write_text(json.dumps(summary))
    page = write_report(cv_dir, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Best epoch" not in page and "<th>Chosen C</th>" in page
    assert "<td>0.01</td>" in page  # the C of grid position 2
    assert "by regularisation strength C" in page
    top = page[: page.index("How to read this")]
    assert (
        "Model efficientnet-lite0, recipe frozen-features (logistic-regression head, C chosen "
        "on validation), 2 folds x 1 repeat, seed 1." in top
    )


def test_networks_keep_epochs_and_every_table_can_scroll(page):
    assert "<th>Best epoch</th>" in page and "by epoch" in page
    assert (
        page.count("<table>") == page.count('<div class="scroll">\n<table>') + 2
    )  # data, versions


def test_per_source_table_and_bar_chart(tmp_path, cv_dir_factory):
    cv_dir = cv_dir_factory(tmp_path / "cv", folds=2, repeats=1, patients=12)
    summary = json.loads((cv_dir / "summary.json").read_text())
    photos = ScoredPhotos.build(
        ["web", "web", "web", "clinic", "clinic"],
        ["Monkey Pox", "Monkey Pox", "Others", "Healthy", "Healthy"],
        [1, 1, 0, 0, 0],
        ["p1", "p2", "o1", "h1", "h2"],
        [0.9, 0.2, 0.6, 0.7, 0.1],
        threshold=0.5,
        refused=[False, False, False, False, True],
    )
    summary["per_source"] = per_source_figures(photos)
    summary["config"]["leave_source_out"] = True
    summary["folds"] = [{**fold, "history": []} for fold in summary["folds"]]
    (cv_dir / "summary.json").write_text(json.dumps(to_jsonable(summary)))
    page = write_report(cv_dir, tmp_path / "r.html").read_text(encoding="utf-8")
    section = page.split('<section id="sources">', 1)[1].split("</section>", 1)[0]
    assert "Leave-one-source-out" in section
    healthy = section.split("<td>clinic</td><td>Healthy</td>", 1)[1].split("</tr>", 1)[0]
    # 1 of 2 healthy photos called mpox, 1 of 2 refused; Wilson 1/2 is 9.5%-90.5%
    assert healthy.count("50.0% (9.5–90.5)") == 3
    mpox = section.split("<td>web</td><td>Monkey Pox</td>", 1)[1].split("</tr>", 1)[0]
    assert mpox.count("50.0% (9.5–90.5)") == 3  # called, at 0.5, and the sensitivity
    # the bar chart joins the four other plots
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 5
    assert "Called mpox and refused, per source" in page
