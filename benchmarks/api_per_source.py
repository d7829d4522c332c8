"""Per-source outcomes of a bundle through `POST /api/v1/predict`, as users get them.

Every photo of every source folder (``SOURCE/<class>/<photos>``, the layout of
``../shared/data``) is posted on its own to the app built by ``mpoxscan.web.app.create_app``
(in process, through Starlette's test client: the same routes, upload checks, photo checks and
model as ``mpoxscan serve``). For each source and class it counts the photos the API calls
mpox (``status == "ok"`` and the label is the positive class, i.e. at the bundle's own
threshold), the photos it asks to retake, and any other outcome (for example "no lesion seen"),
each with a 95% Wilson interval. Photo groups (stem up to the first ``_``) are counted too.

    python benchmarks/api_per_source.py --model-dir models/default --out runs/api-per-source.json

prints a Markdown table (one row per source, then one per class) for the README.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from fastapi.testclient import TestClient

from _common import REPO_ROOT, machine
from mpoxscan.data.images import IMAGE_SUFFIXES
from mpoxscan.evaluation.metrics import wilson_interval
from mpoxscan.web.app import create_app
from mpoxscan.web.settings import Settings

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"


def photo_files(source: Path) -> list[tuple[str, Path]]:
    """``(class name, path)`` of every photo of a source, sorted."""
    return sorted(
        (folder.name, path)
        for folder in source.iterdir()
        if folder.is_dir()
        for path in folder.iterdir()
        if path.suffix.lower() in IMAGE_SUFFIXES
    )


def outcome(body: dict, positive: str | None) -> str:
    """``mpox``, ``not mpox``, ``retake``, ``error`` or the status the API gave."""
    result = body["results"][0]
    if result["status"] == "ok":
        return "mpox" if result["prediction"]["label"] == positive else "not mpox"
    return result["status"]


def score_source(client: TestClient, source: Path, positive: str | None) -> list[dict]:
    """One row per photo: source, class, group, outcome and the mpox probability."""
    rows = []
    for class_name, path in photo_files(source):
        files = {"file": (path.name, path.read_bytes(), "application/octet-stream")}
        response = client.post("/api/v1/predict", files=files)
        if response.status_code != 200:
            rows.append(_row(source, class_name, path, f"http {response.status_code}", None))
            continue
        body = response.json()
        prediction = body["results"][0].get("prediction") or {}
        rows.append(
            _row(source, class_name, path, outcome(body, positive), prediction.get("probability"))
        )
    return rows


def _row(source: Path, class_name: str, path: Path, what: str, p: float | None) -> dict:
    group = path.stem.split("_", 1)[0]
    return {
        "source": source.name,
        "class": class_name,
        "group": f"{source.name}/{class_name}/{group}",
        "file": path.name,
        "outcome": what,
        "probability": p,
    }


def share(k: int, n: int) -> str:
    """``"33.5% (29.9-37.3)"``: a share with its 95% Wilson interval."""
    low, high = wilson_interval(k, n)
    return f"{100 * k / n:.1f}% ({100 * low:.1f}-{100 * high:.1f})"


def table(rows: list[dict]) -> str:
    """Markdown: per source (all classes), then per class, with shares and intervals."""
    by_key: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        by_key[(row["source"], "all")].append(row)
        by_key[(row["source"], row["class"])].append(row)
    others = sorted({r["outcome"] for r in rows} - {"mpox", "not mpox", "retake"})
    head = ["source", "class", "photos", "groups", "called mpox", "retake", *others]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (source, class_name), group in sorted(
        by_key.items(), key=lambda kv: (kv[0][0], kv[0][1] != "all", kv[0][1])
    ):
        counts = Counter(r["outcome"] for r in group)
        n = len(group)
        cells = [
            source,
            class_name,
            str(n),
            str(len({r["group"] for r in group})),
            share(counts["mpox"], n),
            share(counts["retake"], n),
            *(share(counts[o], n) for o in others),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=REPO_ROOT / "models" / "default")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--sources", nargs="*", help="source folder names (default: all)")
    parser.add_argument("--out", type=Path, help="write every photo's row as JSON here")
    args = parser.parse_args()
    if not args.data_root.is_dir():
        sys.exit(f"no data at {args.data_root}")
    os.environ.setdefault("MPOXSCAN_RATE_LIMIT_PER_MINUTE", "0")
    settings = Settings(bundle_dir=args.model_dir, rate_limit_per_minute=0, log_level="warning")
    sources = (
        [args.data_root / s for s in args.sources]
        if args.sources
        else sorted(p for p in args.data_root.iterdir() if p.is_dir())
    )
    started = time.perf_counter()
    with TestClient(create_app(settings)) as client:
        positive = client.get("/api/v1/model").json()["positive_class"]
        rows = [row for source in sources for row in score_source(client, source, positive)]
    print(f"{machine()}; {len(rows)} photos in {time.perf_counter() - started:.0f} s")
    print(f"bundle: {args.model_dir}")
    print(table(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
