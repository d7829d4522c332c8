"""The model card names the data sources a bundle was trained on, in both languages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fastapi.testclient import TestClient

from mpoxscan.inference.bundle import read_bundle_meta, update_bundle_files
from mpoxscan.web.service import training_sources

SOURCES = [
    {
        "name": "msld-v1",
        "origin": "web (news, case reports)",
        "photos": 228,
        "groups": 136,
        "classes": {
            "Monkey Pox": {"label": "mpox", "photos": 102, "groups": 60},
            "Others": {"label": "negative", "photos": 126, "groups": 76},
        },
        "fingerprint": "ab" * 32,
    },
    {
        "name": "healthy-abdomen",
        "origin": "web image search",
        "photos": 617,
        "groups": 617,
        "classes": {"Healthy": {"label": "negative", "photos": 617, "groups": 617}},
        "fingerprint": "cd" * 32,
    },
]


def test_training_sources_count_mpox_photos_per_source():
    found = training_sources({"data": {"sources": SOURCES}})
    assert [(s.name, s.photos, s.groups, s.mpox_photos) for s in found] == [
        ("msld-v1", 228, 136, 102),
        ("healthy-abdomen", 617, 617, 0),
    ]
    assert found[0].classes == ["Monkey Pox", "Others"]
    assert training_sources({}) == []


def test_model_card_lists_the_sources(web_bundle, web_settings, tmp_path):
    from mpoxscan.web.app import create_app

    bundle = Path(shutil.copytree(web_bundle, tmp_path / "bundle"))
    data = read_bundle_meta(bundle).get("data") or {}
    update_bundle_files(bundle, {"data": data | {"sources": SOURCES}})
    settings = web_settings.model_copy(update={"bundle_dir": bundle})
    with TestClient(create_app(settings)) as client:
        html = client.get("/model?lang=en").text
        api = client.get("/api/v1/model").json()
        chinese = client.get("/model?lang=zh-CN").text
    table = html.split('class="metrics sources"', 1)[1].split("</table>", 1)[0]
    assert '<th scope="row">healthy-abdomen</th>' in table
    assert "<td>617</td>" in table and "<td>102</td>" in table
    assert "Trained on 2 data source(s)" in html
    assert [s["name"] for s in api["training_sources"]] == ["msld-v1", "healthy-abdomen"]
    zh = json.loads(
        (Path(__file__).resolve().parents[2] / "src/mpoxscan/web/locales/zh-CN.json").read_text()
    )
    assert zh["model.data.col.mpox"] in chinese
