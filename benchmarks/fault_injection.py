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
import os
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
    resume_trials,
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


def bundle_table(outcomes: list[Outcome], scenarios: list[Scenario]) -> list[str]:
    lines = [
        "| command | run (s) | write starts at | trials | killed (anywhere / in the write) "
        "| old bundle | new bundle | broken | kill points (fraction of the run) "
        "| staging folders left | left after the next write |",
        "|---|---:|---:|---:|---|---:|---:|---:|---|---:|---:|",
    ]
    for scenario in scenarios:
        group = [o for o in outcomes if o.scenario == scenario.name]
        states = Counter(o.state for o in group)
        kills = [o for o in group if o.phase != "whole run"]
        killed = {
            phase: f"{sum(o.killed for o in kills if o.phase == phase)}"
            f"/{sum(o.phase == phase for o in kills)}"
            for phase in ("anywhere", "in the write")
        }
        fractions = sorted(o.fraction for o in kills)
        spread = f"{fractions[0]:.2f} to {fractions[-1]:.2f}, median {np.median(fractions):.2f}"
        lines.append(
            f"| `{scenario.name}` | {scenario.seconds:.1f} "
            f"| {scenario.staged / scenario.seconds:.2f} | {len(group)} "
            f"| {killed['anywhere']} / {killed['in the write']} | {states['old']} "
            f"| {states['new']} | {states['broken']} | {spread} "
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

        photos = root / "photos"
        photos.mkdir()
        for seed in range(60):
            make_lesion_photo(positive=seed % 2 == 0, seed=seed, size=160).save(
                photos / f"p{seed:02d}.jpg"
            )
        for index in range(3):
            (photos / f"notes-{index}.jpg").write_text("not a photo")
        outs = [root / f"rows-{k}.{'csv' if k % 2 else 'jsonl'}" for k in range(args.resume_trials)]
        resumes = resume_trials(zygote, small[0].pristine, photos, outs, rng)
        cpu = zygote.cpu
    elapsed = time.perf_counter() - start

    broken = sum(o.state == "broken" for o in outcomes)
    lost = sum(r.lost for r in resumes)
    repeated = sum(r.repeated for r in resumes)
    command = (
        f"OMP_NUM_THREADS=1 nice -n {os.nice(0)} python benchmarks/fault_injection.py --trials "
        f"{args.trials} --default-trials {args.default_trials} --resume-trials "
        f"{args.resume_trials} --seed {args.seed}"
    )
    lines = [
        "# Fault injection: SIGKILL at random points of every bundle-writing command",
        "",
        f"Machine: {machine()}. Command: `{command}` ({elapsed:.0f} s in all, {cpu:.0f} CPU "
        "seconds in the commands).",
        "",
        "Each trial copies the starting bundle, runs the command in a child forked from a "
        "process that has imported mpoxscan (tests/fault_injection.py), kills it with SIGKILL "
        "(or lets it finish), then judges the bundle in another forked child: *old* "
        "(model.json byte for byte, and it loads and predicts), *new* (it loads, predicts and "
        "shows the command's change) or *broken* (anything else). Per command, the first "
        "trial is an uninterrupted run, which must leave the new bundle (`export` again "
        "writes the same bytes, so the old one) and is measured: its length, and when its "
        "staging folder appeared (*write starts at*, a fraction of the run). The kills are "
        "spread over that run, one uniform draw in each equal slice: half of them (rounded "
        "up) *in the write*, counted from the moment the staging folder appears, over 1.1 x "
        "the rest of the run; the others *anywhere*, counted from the start, over the whole "
        "run. A trial that finishes sooner than the measured run (the machine got less "
        "busy) shortens it for the next kill points; *run (s)* is the shortest. A kill that "
        "comes after the end is a finished run (not killed). A killed run "
        "leaves its staging folder beside the bundle; the next write to that bundle deletes "
        "it (last column: after that clean-up).",
        "",
        f"**Result: {broken} broken bundles in {len(outcomes)} trials; {lost} lost and "
        f"{repeated} repeated rows in {len(resumes)} killed-and-resumed `predict --out` runs.**",
        "",
        *bundle_table(outcomes, [*small, *shipped]),
        "",
        "`predict --out` (JSON Lines and CSV in turn) over 63 files (60 photos, 3 unreadable), "
        "batch size 4: one uninterrupted run first, then per trial killed twice (delays "
        "counted from the moment the results file exists: the first in the trial's slice of "
        "the measured writing time, the second anywhere in it), then run to the end.",
        "",
        "| trial | file | kill delays (s) | killed | rows at the end | expected | lost "
        "| repeated | cut-off last line seen |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for number, resume in enumerate(resumes, start=1):
        delays = ", ".join(f"{d:.2f}" for d in resume.delays)
        killed = ", ".join("yes" if k else "no" for k in resume.killed)
        lines.append(
            f"| {number} | {resume.out} | {delays} | {killed} | {resume.rows} | {resume.expected} "
            f"| {resume.lost} | {resume.repeated} | {resume.partial_lines_seen} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
