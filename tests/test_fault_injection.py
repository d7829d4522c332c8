"""SIGKILL at random points never leaves a broken bundle or a results file that loses rows.

A bounded form of ``benchmarks/fault_injection.py`` (see benchmarks/fault_injection.md): per
bundle-writing command (``train``, ``export`` first and again, ``attach-cv``,
``import-keras``) one uninterrupted run, then kills spread over it, most of them while the
bundle is being written; ``predict --out`` killed twice and resumed, three times (JSON Lines
and CSV): 23 kills of bundle writers and 6 of ``predict --out``. Two zygote processes share
the work (``train``, the slow one, runs beside the others), each trial in its own folder.
Bounded by its fixed number of runs: 40 commands, and a probe of each bundle trial.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fault_injection import (
    Zygote,
    build_scenarios,
    kill_trials,
    resume_trials,
    summarise,
    write_keras_h5,
)

from testdata import make_lesion_photo, make_unsplit_dataset

#: Kills per command after its uninterrupted run: half of them (rounded up) in the write.
KILLS = {"train --overwrite": 3, "export": 5, "export (again)": 5, "attach-cv": 5}
KILLS |= {"import-keras": 5}

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="forks a zygote process (POSIX)"
)


@pytest.mark.slow
def test_killed_commands_leave_the_old_or_the_new_bundle(tmp_path):
    train_rng, rng = np.random.default_rng(2026).spawn(2)
    data = make_unsplit_dataset(tmp_path / "data", patients=4)  # 16 photos: the fewest to train
    photo = next((data / "Monkey Pox").glob("*.jpg"))
    keras_h5 = write_keras_h5(tmp_path / "vgg16_monkey_pox_best_model.h5")
    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in range(20):
        make_lesion_photo(positive=seed % 2 == 0, seed=seed, size=64).save(
            photos / f"p{seed:02d}.jpg"
        )
    (photos / "notes.jpg").write_text("not a photo")  # an error row, also exactly once
    outs = [tmp_path / name for name in ("rows-1.jsonl", "rows-2.csv", "rows-3.jsonl")]

    with Zygote() as first, Zygote() as second, ThreadPoolExecutor(2) as pool:
        train, *others = build_scenarios(first, tmp_path / "bundles", data, keras_h5)
        trained = pool.submit(kill_trials, first, [train], KILLS, tmp_path / "t1", photo, train_rng)
        outcomes = kill_trials(second, others, KILLS, tmp_path / "t2", photo, rng)
        resumes = resume_trials(second, train.pristine, photos, outs, rng)
        outcomes += trained.result()

    table = summarise(outcomes)
    assert set(table) == set(KILLS)
    assert all(counts["broken"] == 0 for counts in table.values()), table
    assert sum(o.left_after_cleanup for o in outcomes) == 0  # the next write tidies up
    finished = {o.scenario: o.state for o in outcomes if o.phase == "whole run"}
    assert finished == {name: "new" for name in KILLS} | {"export (again)": "old"}
    # the kill points are timed from measured runs, so on a busy machine (whose load swings)
    # some come after the end; a third at least must have killed the command (and while it
    # wrote, for the "in the write" ones: they count from when its staging folder appeared)
    kills = [o for o in outcomes if o.phase != "whole run"]
    in_write = [o for o in kills if o.phase == "in the write"]
    assert sum(o.killed for o in kills) >= len(kills) / 3, outcomes
    assert sum(o.killed for o in in_write) >= len(in_write) / 3, outcomes
    for resume in resumes:
        assert (resume.lost, resume.repeated, resume.rows) == (0, 0, 21), resume
    assert sum(k for resume in resumes for k in resume.killed) >= 3
