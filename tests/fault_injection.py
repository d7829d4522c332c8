"""Kill bundle-writing commands with SIGKILL at random points and judge what they leave.

Used by ``tests/test_fault_injection.py`` (a few dozen trials) and by
``benchmarks/fault_injection.py`` (the long form). Importing torch and mpoxscan costs seconds,
so one *zygote* process imports everything once and forks a child per trial; the child runs
the command as ``mpoxscan ARGS`` would (``app(ARGS)``), the zygote kills it with SIGKILL after
the trial's delay. The zygote never runs a model itself, so its children start clean.

A bundle left by a killed command must be the old bundle (``model.json`` byte for byte, and
it loads) or the new one (it loads, and shows the change the command makes); anything else is
*broken*. A ``predict --out`` results file, killed and then run to the end, must hold each
photo exactly once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mpoxscan.inference.atomic_folder import recover_interrupted

REPO_ROOT = Path(__file__).resolve().parents[1]

#: The zygote: imports what the commands need, then forks one child per request line.
ZYGOTE = r"""
import json, os, signal, sys, time
import torch, torch._dynamo, onnx, onnxruntime  # noqa: F401  (imported once, before any fork)
import mpoxscan.inference.onnx_export, mpoxscan.inference.keras_import  # noqa: F401
import mpoxscan.training.train, mpoxscan.evaluation.cv_card  # noqa: F401
import mpoxscan.evaluation.tables  # noqa: F401
import matplotlib.pyplot, mpoxscan.evaluation.plots  # noqa: F401
from mpoxscan.cli import app

requests, replies = sys.stdin, sys.stdout
for line in requests:
    request = json.loads(line)
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        null = os.open(request.get("log") or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(null, 1)
        os.dup2(null, 2)
        code = 0
        try:
            app(request["args"], prog_name="mpoxscan")
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
        except BaseException:
            code = 99
        os._exit(code)
    delay = request.get("delay")
    if delay is not None:
        time.sleep(delay)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    reply = {
        "killed": killed,
        "exit": None if killed else os.WEXITSTATUS(status),
        "seconds": time.perf_counter() - start,
    }
    replies.write(json.dumps(reply) + "\n")
    replies.flush()
"""


def _pythonpath() -> str:
    return os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])


class Zygote:
    """A process that runs ``mpoxscan`` commands in forked children, killing them on request."""

    def __init__(self) -> None:
        env = os.environ | {
            "PYTHONPATH": os.pathsep.join(
                [str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")]
            ),
            "OMP_NUM_THREADS": "1",
            "COLUMNS": "100",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def run(
        self, args: list[str], delay: float | None = None, log: Path | None = None
    ) -> dict[str, Any]:
        """Run ``mpoxscan ARGS``; with ``delay``, SIGKILL it that many seconds after the fork.
        Its output goes to ``log`` (appended), else nowhere."""
        assert self.process.stdin is not None and self.process.stdout is not None
        request = {"args": args, "delay": delay, "log": str(log) if log else None}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the zygote process died")
        return json.loads(line)

    def close(self) -> None:
        """Stop the zygote (its stdin closes, its loop ends)."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def model_json(bundle: Path) -> str | None:
    path = bundle / "model.json"
    return path.read_text() if path.is_file() else None


def bundle_predicts(bundle: Path, photo: Path) -> float | None:
    """The positive probability the bundle gives ``photo``, or ``None`` when it fails to load."""
    from mpoxscan.errors import MpoxscanError
    from mpoxscan.inference.predictor import Predictor

    try:
        # the network's output, without the photo checks (a generated photo may be 'retake')
        return float(Predictor.load(bundle).predict_proba([photo])[0, -1])
    except (MpoxscanError, OSError):
        return None


@dataclass
class Scenario:
    """One command to kill: the bundle it starts from and what its finished run changes.

    Attributes:
        name: the command as the results name it.
        pristine: the bundle each trial starts from (copied), or ``None`` for no bundle.
        args: the command's arguments, given the trial's bundle folder.
        is_new: whether a bundle that loads is the command's finished result.
    """

    name: str
    pristine: Path
    args: Callable[[Path], list[str]]
    is_new: Callable[[dict[str, Any]], bool]
    seconds: float = 0.0


@dataclass
class Outcome:
    """What one trial left."""

    scenario: str
    delay: float
    fraction: float
    killed: bool
    state: str  # "old", "new" or "broken"
    leftovers: int = 0  # staging folders the killed command left beside the bundle
    left_after_cleanup: int = 0  # ... and after the next write's clean-up


@dataclass
class ResumeOutcome:
    """What killing ``predict --out`` (then running it to the end) left in the results file."""

    delays: list[float]
    killed: list[bool]
    rows: int
    expected: int
    lost: int
    repeated: int
    partial_lines_seen: int = 0
    counts: Counter = field(default_factory=Counter)


def judge(scenario: Scenario, bundle: Path, photo: Path, old_json: str | None) -> str:
    """``old``, ``new`` or ``broken``: what a trial left in ``bundle``."""
    if bundle_predicts(bundle, photo) is None:
        return "broken"
    text = model_json(bundle)
    if text == old_json:
        return "old"
    return "new" if scenario.is_new(json.loads(text or "{}")) else "broken"


def run_trial(zygote: Zygote, scenario: Scenario, work: Path, photo: Path, delay: float) -> Outcome:
    """Copy the pristine bundle, kill the command after ``delay`` s, judge the bundle."""
    bundle = work / "bundle"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copytree(scenario.pristine, bundle)
    old_json = model_json(bundle)
    reply = zygote.run(scenario.args(bundle), delay=delay)
    state = judge(scenario, bundle, photo, old_json)
    leftovers = sum(1 for p in work.iterdir() if p.name != "bundle")
    recover_interrupted(bundle)  # what the next write to this bundle does first
    after = sum(1 for p in work.iterdir() if p.name != "bundle")
    fraction = delay / scenario.seconds if scenario.seconds else 0.0
    return Outcome(scenario.name, delay, fraction, reply["killed"], state, leftovers, after)


def kill_trials(
    zygote: Zygote,
    scenarios: list[Scenario],
    trials: int,
    work: Path,
    photo: Path,
    rng: np.random.Generator,
) -> list[Outcome]:
    """``trials`` kills per scenario, at random points of its measured run (see
    :func:`kill_point`: every other one in the last 30%, where the bundle is written)."""
    outcomes = []
    for scenario in scenarios:
        start = time.perf_counter()
        reply = zygote.run(scenario.args(_fresh(work, scenario)), delay=None)
        scenario.seconds = time.perf_counter() - start
        assert reply["exit"] == 0, f"{scenario.name} failed: {reply}"
        for trial in range(trials):
            delay = kill_point(rng, scenario.seconds, late=trial % 2 == 1)
            outcomes.append(run_trial(zygote, scenario, work, photo, delay))
    return outcomes


def kill_point(rng: np.random.Generator, seconds: float, *, late: bool) -> float:
    """A random delay: uniform over 1.1 x the run, or (``late``) over its last 30% and a bit
    after, where the commands write (a finished run counts as "new", the usual outcome)."""
    low = 0.7 * seconds if late else 0.0
    return float(rng.uniform(low, 1.1 * seconds))


def _fresh(work: Path, scenario: Scenario) -> Path:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copytree(scenario.pristine, work / "bundle")
    return work / "bundle"


def resume_trial(
    zygote: Zygote,
    bundle: Path,
    photos: Path,
    out: Path,
    expected: set[str],
    delays: list[float],
) -> ResumeOutcome:
    """Kill ``predict --out`` after each delay in turn, then run it to the end; count rows."""
    out.unlink(missing_ok=True)
    args = ["predict", "--model-dir", str(bundle), str(photos), "--out", str(out)]
    args += ["--batch-size", "4"]
    killed = [zygote.run(args, delay=delay)["killed"] for delay in delays]
    partial = _has_partial_last_line(out)
    zygote.run(args, delay=None)
    files = [json.loads(line)["file"] for line in out.read_text().splitlines()]
    counts = Counter(files)
    return ResumeOutcome(
        delays=delays,
        killed=killed,
        rows=len(files),
        expected=len(expected),
        lost=len(expected - set(files)),
        repeated=sum(n - 1 for n in counts.values() if n > 1),
        partial_lines_seen=int(partial),
        counts=counts,
    )


def _has_partial_last_line(out: Path) -> bool:
    return out.is_file() and out.stat().st_size > 0 and not out.read_bytes().endswith(b"\n")


def summarise(outcomes: list[Outcome]) -> dict[str, Counter]:
    """Per scenario, how many trials left the old, the new or a broken bundle."""
    table: dict[str, Counter] = {}
    for outcome in outcomes:
        table.setdefault(outcome.scenario, Counter())[outcome.state] += 1
    return table


def cv_summary_for(meta: dict[str, Any]) -> dict[str, Any]:
    """A ``summary.json`` that ``attach-cv`` accepts for this bundle (same recipe and data)."""
    return {
        "command": "mpoxscan cv (made up for the fault-injection trials)",
        "versions": {},
        "config": meta["config"] | {"folds": 3, "repeats": 1},
        "classes": meta["classes"],
        "positive_class": meta["positive_class"],
        "data": {"fingerprint": meta["data_fingerprint"], "n_images": 48, "n_patients": 24},
        "mean_std": {
            "accuracy": {"mean": 0.75, "std": 0.05},
            "roc_auc": {"mean": 0.8, "std": 0.05},
        },
        "pooled": {"threshold": 0.5},
    }


def build_scenarios(
    zygote: Zygote, root: Path, data: Path, keras_h5: Path | None
) -> list[Scenario]:
    """The bundles the trials start from, and one scenario per bundle-writing command."""
    old = root / "old"
    train = ["train", "--data", str(data), "--model", "seed-cnn", "--epochs", "1"]
    train += ["--image-size", "96"]
    assert zygote.run([*train, "--out", str(old), "--seed", "1"])["exit"] == 0
    with_onnx = root / "with-onnx"
    shutil.copytree(old, with_onnx)
    assert zygote.run(["export", "--model-dir", str(with_onnx)])["exit"] == 0
    cv_dir = root / "cv"
    cv_dir.mkdir()
    meta = json.loads((old / "model.json").read_text())
    (cv_dir / "summary.json").write_text(json.dumps(cv_summary_for(meta)))
    scenarios = [
        Scenario(
            "train --overwrite",
            old,
            lambda b: [*train, "--out", str(b), "--overwrite", "--seed", "2"],
            lambda m: m["config"]["train"]["seed"] == 2,
        ),
        Scenario("export", old, lambda b: ["export", "--model-dir", str(b)], _has_onnx),
        Scenario(
            "export (again)", with_onnx, lambda b: ["export", "--model-dir", str(b)], _has_onnx
        ),
        Scenario(
            "attach-cv",
            with_onnx,
            lambda b: ["attach-cv", "--model-dir", str(b), "--cv-dir", str(cv_dir)],
            lambda m: "cross_validation" in m and _has_onnx(m),
        ),
    ]
    if keras_h5 is not None:
        scenarios.append(
            Scenario(
                "import-keras",
                old,
                lambda b: ["import-keras", str(keras_h5), "--out", str(b)],
                lambda m: m["architecture"]["name"] == "vgg16",
            )
        )
    return scenarios


def _has_onnx(meta: dict[str, Any]) -> bool:
    return "model.onnx" in meta["files"] and "onnx" in meta


def write_keras_h5(path: Path) -> Path:
    """The tutorial's whole Keras VGG16 model at 32x32 input (about 60 MB of weights)."""
    from keras_h5_helpers import he_dense, vgg_convs, write_tutorial_vgg

    rng = np.random.default_rng(0)
    convs = vgg_convs(rng, (64, 128, 256, 512, 512))
    dense = [he_dense(rng, 512, 64), he_dense(rng, 64, 32), he_dense(rng, 32, 1)]
    return write_tutorial_vgg(path, convs, dense, image_size=32, activation="sigmoid", nested=True)
