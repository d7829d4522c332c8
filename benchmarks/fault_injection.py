"""The long form of tests/test_fault_injection.py: many SIGKILLs, results in a Markdown page.

Kills each bundle-writing command (``train --overwrite``, ``export`` on a bundle without and
with ``model.onnx``, ``attach-cv``, ``import-keras``) at random points, on small generated
bundles and, for ``export`` and ``attach-cv``, on a copy of ``models/default``; then judges
each bundle as the old one, the new one or broken (see tests/fault_injection.py). Kills
``predict --out`` twice per trial before running it to the end and counts lost and repeated
rows. Writes benchmarks/fault_injection.md.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/fault_injection.py --trials 20
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, machine, make_lesion_photo, make_unsplit_dataset

sys.path.insert(0, str(REPO_ROOT / "tests"))
from fault_injection import (
    Outcome,
    Scenario,
    Zygote,
    build_scenarios,
    cv_summary_for,
    kill_trials,
    resume_trial,
    write_keras_h5,
)

DEFAULT_BUNDLE = REPO_ROOT / "models" / "default"


def default_bundle_scenarios(root: Path) -> list[Scenario]:
    """``export`` and ``attach-cv`` on a copy of the shipped bundle (13 MB ONNX graph)."""
    if not (DEFAULT_BUNDLE / "model.json").is_file():
        return []
    pristine = root / "default"
    shutil.copytree(DEFAULT_BUNDLE, pristine)
    meta = json.loads((pristine / "model.json").read_text())
    cv_dir = root / "default-cv"
    cv_dir.mkdir()
    summary = cv_summary_for(meta)
    summary["data"] |= {"n_images": 228, "n_patients": 135}
    (cv_dir / "summary.json").write_text(json.dumps(summary))
    return [
        Scenario(
            "export (models/default)",
            pristine,
            lambda b: ["export", "--model-dir", str(b)],
            lambda m: "model.onnx" in m["files"],
        ),
        Scenario(
            "attach-cv (models/default)",
            pristine,
            lambda b: ["attach-cv", "--model-dir", str(b), "--cv-dir", str(cv_dir)],
            lambda m: m["metrics"]["cv"]["accuracy"]["mean"] == 0.75,
        ),
    ]


def bundle_table(outcomes: list[Outcome], seconds: dict[str, float]) -> list[str]:
    lines = [
        "| command | run (s) | trials | killed before the end | old bundle | new bundle "
        "| broken | kill points (fraction of the run) | staging folders left "
        "| left after the next write |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    by_name: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        by_name.setdefault(outcome.scenario, []).append(outcome)
    for name, group in by_name.items():
        states = Counter(o.state for o in group)
        fractions = sorted(o.fraction for o in group)
        spread = f"{fractions[0]:.2f} to {fractions[-1]:.2f}, median {np.median(fractions):.2f}"
        lines.append(
            f"| `{name}` | {seconds[name]:.1f} | {len(group)} | {sum(o.killed for o in group)} "
            f"| {states['old']} | {states['new']} | {states['broken']} | {spread} "
            f"| {sum(o.leftovers for o in group)} | {sum(o.left_after_cleanup for o in group)} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="kills per command")
    parser.add_argument(
        "--default-trials", type=int, default=10, help="kills per models/default command"
    )
    parser.add_argument("--resume-trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".md"))
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mpoxscan-fault-") as folder, Zygote() as zygote:
        root = Path(folder)
        data = make_unsplit_dataset(root / "data")
        photo = next((data / "Monkey Pox").glob("*.jpg"))
        keras_h5 = write_keras_h5(root / "vgg16_monkey_pox_best_model.h5")
        small = build_scenarios(zygote, root / "bundles", data, keras_h5)
        outcomes = kill_trials(zygote, small, args.trials, root / "trial", photo, rng)
        shipped = default_bundle_scenarios(root)
        outcomes += kill_trials(zygote, shipped, args.default_trials, root / "trial", photo, rng)
        seconds = {s.name: s.seconds for s in [*small, *shipped]}

        photos = root / "photos"
        photos.mkdir()
        for seed in range(60):
            make_lesion_photo(positive=seed % 2 == 0, seed=seed, size=160).save(
                photos / f"p{seed:02d}.jpg"
            )
        for index in range(3):
            (photos / f"notes-{index}.jpg").write_text("not a photo")
        expected = {str(p) for p in photos.iterdir()}
        out = root / "rows.jsonl"
        predict = ["predict", "--model-dir", str(small[0].pristine), str(photos), "--out"]
        started = time.perf_counter()
        zygote.run([*predict, str(out), "--batch-size", "4"])
        predict_seconds = time.perf_counter() - started
        resumes = [
            resume_trial(
                zygote,
                small[0].pristine,
                photos,
                root / "rows.jsonl",
                expected,
                [float(d) for d in rng.uniform(0.0, predict_seconds, size=2)],
            )
            for _ in range(args.resume_trials)
        ]
    elapsed = time.perf_counter() - start

    broken = sum(o.state == "broken" for o in outcomes)
    lost = sum(r.lost for r in resumes)
    repeated = sum(r.repeated for r in resumes)
    command = (
        f"OMP_NUM_THREADS=1 nice -n 10 python benchmarks/fault_injection.py --trials "
        f"{args.trials} --default-trials {args.default_trials} --resume-trials "
        f"{args.resume_trials} --seed {args.seed}"
    )
    lines = [
        "# Fault injection: SIGKILL at random points of every bundle-writing command",
        "",
        f"Machine: {machine()}. Command: `{command}` ({elapsed:.0f} s in all).",
        "",
        "Each trial copies the starting bundle, runs the command in a child forked from a "
        "process that has imported mpoxscan (tests/fault_injection.py), kills it with SIGKILL "
        "after a random delay, then judges the bundle: *old* (model.json byte for byte and "
        "it loads and predicts), *new* (it loads, predicts and shows the command's change) or "
        "*broken* (anything else). Delays are uniform over 1.1 x the command's measured run "
        "for half of the trials and over its last 30% (where the bundle is written) for the "
        "other half; a delay past the end is a finished run (*new*, not killed; `export` "
        "again writes the same bytes, so its finished runs count as *old*). A killed run "
        "leaves its staging folder beside the bundle; the next write to that bundle deletes "
        "it (last column: after that clean-up).",
        "",
        f"**Result: {broken} broken bundles in {len(outcomes)} trials; {lost} lost and "
        f"{repeated} repeated rows in {len(resumes)} killed-and-resumed `predict --out` runs.**",
        "",
        *bundle_table(outcomes, seconds),
        "",
        "`predict --out rows.jsonl` over 63 files (60 photos, 3 unreadable), batch size 4: "
        f"killed twice per trial (delays uniform over its {predict_seconds:.1f} s run), "
        "then run to the end.",
        "",
        "| trial | kill delays (s) | killed | rows at the end | expected | lost | repeated "
        "| cut-off last line seen |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for number, resume in enumerate(resumes, start=1):
        delays = ", ".join(f"{d:.2f}" for d in resume.delays)
        killed = ", ".join("yes" if k else "no" for k in resume.killed)
        lines.append(
            f"| {number} | {delays} | {killed} | {resume.rows} | {resume.expected} "
            f"| {resume.lost} | {resume.repeated} | {resume.partial_lines_seen} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
