"""Kill bundle-writing commands with SIGKILL at random points and judge what they leave.

Used by ``tests/test_fault_injection.py`` (a few dozen trials) and by
``benchmarks/fault_injection.py`` (the long form). Importing torch and mpoxscan costs seconds,
so one *zygote* process imports everything once and forks a child per trial; the child runs
the command as ``mpoxscan ARGS`` would (``app(ARGS)``), the zygote kills it with SIGKILL after
the trial's delay, counted from the fork or from the moment the command's staging folder
appears (while it writes the bundle). Another forked child then loads the bundle left behind,
so the test process never imports torch. The zygote never runs a model itself, so its
children start clean.

A bundle left by a killed command must be the old bundle (``model.json`` byte for byte, and
it loads) or the new one (it loads, and shows the change the command makes); anything else is
*broken*. A ``predict --out`` results file, killed and then run to the end, must hold each
photo exactly once.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mpoxscan.inference.atomic_folder import STAGE_KINDS, recover_interrupted

REPO_ROOT = Path(__file__).resolve().parents[1]

#: The zygote: imports what the commands need, then forks one child per request line. A child
#: runs ``mpoxscan ARGS`` or, for a probe, loads a bundle and scores a photo (exit 0 when it
#: can, 1 when the bundle is refused), so the test process itself never imports torch. The
#: zygote polls the child every 2 ms; with ``watch`` (a folder and a name prefix) it notes
#: when such an entry first appears (a staging folder, a results file), and a ``delay`` then
#: counts from that moment instead of from the fork.
ZYGOTE = r"""
import json, os, resource, signal, sys, time
import torch, torch._dynamo, onnx, onnxruntime  # noqa: F401  (imported once, before any fork)
import mpoxscan.inference.onnx_export, mpoxscan.inference.keras_import  # noqa: F401
import mpoxscan.training.train, mpoxscan.evaluation.cv_card  # noqa: F401
import mpoxscan.evaluation.tables  # noqa: F401
import matplotlib.pyplot, mpoxscan.evaluation.plots  # noqa: F401
from mpoxscan.cli import app
from mpoxscan.errors import MpoxscanError
from mpoxscan.inference.predictor import Predictor


def child(request):
    if "probe" in request:
        bundle, photo = request["probe"]
        try:  # the network's output, without the photo checks (a generated photo may be 'retake')
            Predictor.load(bundle).predict_proba([photo])
        except (MpoxscanError, OSError):
            return 1
        return 0
    try:
        app(request["args"], prog_name="mpoxscan")
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 1
    return 0


def appeared(watch):
    folder, prefix = watch
    return any(name.startswith(prefix) for name in os.listdir(folder))


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


for line in sys.stdin:
    request = json.loads(line)
    start, cpu = time.perf_counter(), cpu_seconds()
    pid = os.fork()
    if pid == 0:
        log = os.open(request.get("log") or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(log, 1)
        os.dup2(log, 2)
        try:
            code = child(request)
        except BaseException:
            code = 99
        os._exit(code)
    delay, watch = request.get("delay"), request.get("watch")
    kill_at = None if watch else delay
    seen = None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        now = time.perf_counter() - start
        if watch and seen is None and appeared(watch):
            seen = now
            kill_at = None if delay is None else now + delay
        if kill_at is not None and now >= kill_at:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.002)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    reply = {
        "killed": killed,
        "exit": None if killed else os.WEXITSTATUS(status),
        "seconds": time.perf_counter() - start,
        "seen": seen,
        "cpu": cpu_seconds() - cpu,
    }
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
"""


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
        self.cpu = 0.0  # CPU seconds of the children so far (their share of the machine)

    def run(
        self,
        args: list[str],
        delay: float | None = None,
        log: Path | None = None,
        watch: tuple[Path, str] | None = None,
    ) -> dict[str, Any]:
        """Run ``mpoxscan ARGS``; with ``delay``, SIGKILL it that many seconds after the fork,
        or, with ``watch`` (a folder and a name prefix), after an entry so named appears there.
        Its output goes to ``log`` (appended), else nowhere.

        Returns:
            ``killed``, ``exit`` (``None`` when killed), ``seconds`` from the fork to the end,
            ``seen``: seconds from the fork until the watched entry appeared (or ``None``),
            ``cpu``: the child's CPU seconds (user and system).
        """
        request: dict[str, Any] = {"args": args, "delay": delay, "log": str(log) if log else None}
        if watch is not None:
            request["watch"] = [str(watch[0]), watch[1]]
        return self._ask(request)

    def loads(self, bundle: Path, photo: Path) -> bool:
        """Whether ``bundle`` loads and scores ``photo`` (in a forked child)."""
        return self._ask({"probe": [str(bundle), str(photo)]})["exit"] == 0

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the zygote process died")
        reply = json.loads(line)
        self.cpu += reply["cpu"]
        return reply

    def close(self) -> None:
        """Stop the zygote (its stdin closes, its loop ends; on a busy machine its exit may
        take a while, after which it is killed)."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, error_type: type | None, *exc: object) -> None:
        if error_type is not None:
            self.process.kill()  # no more trials: do not wait for the one that runs
        self.close()


def model_json(bundle: Path) -> str | None:
    path = bundle / "model.json"
    return path.read_text() if path.is_file() else None


def staging_prefix(bundle: Path) -> str:
    """The name every staging folder of ``bundle`` starts with (``atomic_folder``)."""
    return f".{bundle.name}.{STAGE_KINDS[0]}-"


@dataclass
class Scenario:
    """One command to kill: the bundle it starts from and what its finished run changes.

    Attributes:
        name: the command as the results name it.
        pristine: the bundle each trial starts from (copied).
        args: the command's arguments, given the trial's bundle folder.
        is_new: whether a bundle that loads is the command's finished result.
        seconds: its uninterrupted run, fork to exit (measured by the first trial; a later
            trial that finishes sooner, on a machine that got less busy, shortens it).
        staged: when, in that run, its staging folder appeared (the write began).
    """

    name: str
    pristine: Path
    args: Callable[[Path], list[str]]
    is_new: Callable[[dict[str, Any]], bool]
    seconds: float = 0.0
    staged: float = 0.0

    @property
    def writing(self) -> float:
        """How long the write took: from the staging folder's appearance to the exit."""
        return max(self.seconds - self.staged, 0.01)

    def measured(self, reply: dict[str, Any]) -> None:
        """Take the timings of a run that finished, when it was the shortest so far."""
        if reply["killed"] or reply["seen"] is None:
            return
        if not self.seconds or reply["seconds"] < self.seconds:
            self.seconds, self.staged = reply["seconds"], reply["seen"]


@dataclass
class Outcome:
    """What one trial left."""

    scenario: str
    phase: str  # "whole run" (not killed on purpose), "anywhere" or "in the write"
    delay: float
    fraction: float  # when the kill came, as a share of the uninterrupted run
    killed: bool
    state: str  # "old", "new" or "broken"
    leftovers: int = 0  # staging folders the killed command left beside the bundle
    left_after_cleanup: int = 0  # ... and after the next write's clean-up


@dataclass
class ResumeOutcome:
    """What killing ``predict --out`` (then running it to the end) left in the results file."""

    out: str
    delays: list[float]
    killed: list[bool]
    rows: int
    expected: int
    lost: int
    repeated: int
    partial_lines_seen: int = 0
    counts: Counter = field(default_factory=Counter)


def judge(zygote: Zygote, scenario: Scenario, bundle: Path, photo: Path, old: str | None) -> str:
    """``old``, ``new`` or ``broken``: what a trial left in ``bundle``."""
    if not zygote.loads(bundle, photo):
        return "broken"
    text = model_json(bundle)
    if text == old:
        return "old"
    return "new" if scenario.is_new(json.loads(text or "{}")) else "broken"


def run_trial(
    zygote: Zygote,
    scenario: Scenario,
    work: Path,
    photo: Path,
    kill: tuple[str, float | None],
) -> Outcome:
    """Copy the pristine bundle, run the command (killed as ``kill`` says), judge the bundle.

    ``kill`` is ``(phase, share)``: ``("whole run", None)`` lets it finish, ``("anywhere",
    s)`` kills it after ``s`` x the run from the fork, ``("in the write", s)`` after ``s`` x
    the write from the moment its staging folder appeared.
    """
    phase, share = kill
    bundle = _fresh(work, scenario)
    old = model_json(bundle)
    watch = (work, staging_prefix(bundle))
    if phase == "anywhere":
        delay = share * scenario.seconds
        reply = zygote.run(scenario.args(bundle), delay=delay)
    else:
        delay = None if share is None else share * scenario.writing
        reply = zygote.run(scenario.args(bundle), delay=delay, watch=watch)
    if phase == "whole run":
        assert reply["exit"] == 0 and reply["seen"] is not None, f"{scenario.name}: {reply}"
    scenario.measured(reply)
    state = judge(zygote, scenario, bundle, photo, old)
    leftovers = sum(1 for p in work.iterdir() if p.name != "bundle")
    recover_interrupted(bundle)  # what the next write to this bundle does first
    after = sum(1 for p in work.iterdir() if p.name != "bundle")
    fraction = reply["seconds"] / scenario.seconds
    return Outcome(
        scenario.name, phase, delay or 0.0, fraction, reply["killed"], state, leftovers, after
    )


def kill_trials(
    zygote: Zygote,
    scenarios: list[Scenario],
    kills: int | dict[str, int],
    work: Path,
    photo: Path,
    rng: np.random.Generator,
) -> list[Outcome]:
    """Per scenario, one uninterrupted run (measured; it must leave a bundle that loads),
    then ``kills`` (or ``kills[name]``) SIGKILLs at the points :func:`kill_points` spreads
    over that run."""
    outcomes = []
    for scenario in scenarios:
        outcomes.append(run_trial(zygote, scenario, work, photo, ("whole run", None)))
        count = kills if isinstance(kills, int) else kills[scenario.name]
        for kill in kill_points(rng, count):
            outcomes.append(run_trial(zygote, scenario, work, photo, kill))
    return outcomes


def kill_points(rng: np.random.Generator, count: int) -> list[tuple[str, float]]:
    """``count`` kill points, as shares of a span, spread (one uniform draw in each equal
    slice):

    - half of them (rounded up) *in the write*: from the moment the staging folder appears,
      over 1.1 x the write (the bundle is written and switched in there; a kill past the end
      is a finished run);
    - the others *anywhere*: from the fork, over the whole run.
    """
    in_write = (count + 1) // 2
    anywhere = count - in_write
    points = [("in the write", 1.1 * (i + rng.uniform()) / in_write) for i in range(in_write)]
    points += [("anywhere", (i + rng.uniform()) / anywhere) for i in range(anywhere)]
    return [(phase, float(share)) for phase, share in points]


def _fresh(work: Path, scenario: Scenario) -> Path:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copytree(scenario.pristine, work / "bundle")
    return work / "bundle"


def resume_trials(
    zygote: Zygote,
    bundle: Path,
    photos: Path,
    outs: list[Path],
    rng: np.random.Generator,
) -> list[ResumeOutcome]:
    """Run ``predict --out`` once to the end (measured), then for each of ``outs`` kill it
    twice and run it to the end (:func:`resume_trial`). The kill delays count from the moment
    the results file appears, spread over the rest of the measured run: the first kill of
    trial ``k`` of ``n`` in the ``k``-th of ``n`` equal slices, the second anywhere."""
    expected = {str(p) for p in photos.iterdir()}
    whole = outs[0].with_name(f"whole-{outs[0].name}")
    reply = zygote.run(_predict_args(bundle, photos, whole), watch=(whole.parent, whole.name))
    assert reply["exit"] in (0, 3) and reply["seen"] is not None, reply
    assert sorted(_result_files(whole)) == sorted(expected)
    writing = reply["seconds"] - reply["seen"]
    n = len(outs)
    return [
        resume_trial(
            zygote,
            bundle,
            photos,
            out,
            expected,
            [writing * (k + rng.uniform()) / n, writing * rng.uniform()],
        )
        for k, out in enumerate(outs)
    ]


def resume_trial(
    zygote: Zygote,
    bundle: Path,
    photos: Path,
    out: Path,
    expected: set[str],
    delays: list[float],
) -> ResumeOutcome:
    """Kill ``predict --out`` after each delay (counted from when ``out`` exists) in turn,
    then run it to the end; count rows."""
    out.unlink(missing_ok=True)
    args = _predict_args(bundle, photos, out)
    watch = (out.parent, out.name)
    killed = [zygote.run(args, delay=delay, watch=watch)["killed"] for delay in delays]
    partial = _has_partial_last_line(out)
    zygote.run(args, delay=None)
    files = _result_files(out)
    counts = Counter(files)
    return ResumeOutcome(
        out=out.name,
        delays=delays,
        killed=killed,
        rows=len(files),
        expected=len(expected),
        lost=len(expected - set(files)),
        repeated=sum(n - 1 for n in counts.values() if n > 1),
        partial_lines_seen=int(partial),
        counts=counts,
    )


def _predict_args(bundle: Path, photos: Path, out: Path) -> list[str]:
    return ["predict", "--model-dir", str(bundle), str(photos), "--out", str(out), "--batch-size=4"]


def _result_files(out: Path) -> list[str]:
    """The ``file`` of every row of a CSV or JSON Lines results file."""
    with out.open(newline="", encoding="utf-8") as handle:
        if out.suffix == ".csv":
            return [row["file"] for row in csv.DictReader(handle)]
        return [json.loads(line)["file"] for line in handle]


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
    """The bundles the trials start from, and one scenario per bundle-writing command.

    ``train`` keeps the copy finder's photo embeddings in a shared cache, so only the first
    run embeds them (its local-feature checks still run each time)."""
    old = root / "old"
    train = ["train", "--data", str(data), "--model", "seed-cnn", "--epochs", "1"]
    train += ["--image-size", "96", "--feature-cache", str(root / "features")]
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
