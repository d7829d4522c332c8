"""SIGKILL at random points never leaves a broken bundle or a results file that loses rows.

A bounded form of ``benchmarks/fault_injection.py`` (see benchmarks/fault_injection.md):
about 40 kills across ``train``, ``export`` (first and again), ``attach-cv``,
``import-keras`` and ``predict --out``.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from fault_injection import (
    Zygote,
    build_scenarios,
    kill_trials,
    resume_trial,
    summarise,
    write_keras_h5,
)

from testdata import make_lesion_photo, make_unsplit_dataset

TRIALS = 6  # per bundle-writing command (half of them late in the run, where it writes)
RESUME_TRIALS = 3  # each kills predict --out twice, then runs it to the end

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="forks a zygote process (POSIX)"
)


@pytest.mark.slow
def test_killed_commands_leave_the_old_or_the_new_bundle(tmp_path):
    start = time.perf_counter()
    rng = np.random.default_rng(2026)
    data = make_unsplit_dataset(tmp_path / "data")
    photo = next((data / "Monkey Pox").glob("*.jpg"))
    keras_h5 = write_keras_h5(tmp_path / "vgg16_monkey_pox_best_model.h5")
    with Zygote() as zygote:
        scenarios = build_scenarios(zygote, tmp_path / "bundles", data, keras_h5)
        outcomes = kill_trials(zygote, scenarios, TRIALS, tmp_path / "trial", photo, rng)

        photos = tmp_path / "photos"
        photos.mkdir()
        for seed in range(20):
            make_lesion_photo(positive=seed % 2 == 0, seed=seed, size=64).save(
                photos / f"p{seed:02d}.jpg"
            )
        (photos / "notes.jpg").write_text("not a photo")  # an error row, also exactly once
        expected = {str(p) for p in photos.iterdir()}
        bundle = scenarios[0].pristine
        resumes = [
            resume_trial(
                zygote,
                bundle,
                photos,
                tmp_path / "rows.jsonl",
                expected,
                [float(d) for d in rng.uniform(0.0, 1.5, size=2)],
            )
            for _ in range(RESUME_TRIALS)
        ]

    table = summarise(outcomes)
    assert all(counts["broken"] == 0 for counts in table.values()), table
    assert sum(o.left_after_cleanup for o in outcomes) == 0  # the next write tidies up
    assert len(table) == 5 and sum(o.killed for o in outcomes) >= len(outcomes) // 2, table
    for resume in resumes:
        assert (resume.lost, resume.repeated, resume.rows) == (0, 0, len(expected)), resume
    assert time.perf_counter() - start < 300  # bounded: 100 s at a load average of 17 on 2 cores
