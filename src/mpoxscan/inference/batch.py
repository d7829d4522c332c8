"""Batch prediction of image files: streamed, in parallel worker threads, resumable.

Folders are walked lazily; each worker thread reads, checks and resizes a batch of photos and
runs the model on it (Pillow and ONNX Runtime release the GIL), a few batches at a time, so
memory stays constant however many files there are and every core works on its own batch.
Results go to CSV or JSON Lines, one row per file, flushed batch by batch; a rerun with the
same output file skips the files already in it. A file that cannot be read gets an error row
and the run goes on.

The rows (see :func:`row_columns`) are produced by an *engine*: :class:`LocalEngine` (this
process) or :class:`~mpoxscan.inference.ray_engine.RayEngine` (Ray Data), which compute the
same rows with the same functions.
"""

from __future__ import annotations

import csv
import json
import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol

import numpy as np

from mpoxscan.data.images import IMAGE_SUFFIXES
from mpoxscan.data.photos import photo_pixels, read_photo
from mpoxscan.errors import InvalidImageError
from mpoxscan.inference.onnx_runtime import default_threads
from mpoxscan.inference.predictor import Predictor
from mpoxscan.inference.quality import QualityIssue, QualitySettings, check_photo

Row = dict[str, Any]
OutputFormat = Literal["csv", "jsonl"]
Engine = Literal["local", "ray"]

#: Photos per forward pass. On 2 cores batches of 8 cost EfficientNet-Lite0 the least CPU
#: per photo at 224x224 (larger batches' activations outgrow the caches; benchmarks/speed.md).
BATCH_SIZE = 8

#: Worker threads of the local engine when ``BatchConfig.workers`` is ``None``: the usable
#: cores (at most 4). Each reads and checks a whole batch and runs the model on it with one
#: ONNX Runtime thread. On 2 cores this costs less CPU per photo than one 2-thread session fed
#: by decode threads (benchmarks/speed.md, section (e)).
default_workers = default_threads

#: Batches read ahead of the ones the workers are running (the bound on memory).
PREFETCH_BATCHES = 2

#: Output suffixes and their formats.
OUTPUT_FORMATS: dict[str, OutputFormat] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}

#: ``code`` of an error row when reading the file failed without an mpoxscan error code.
UNREADABLE_CODE = "unreadable_file"

#: Prefix of the per-class probability columns in CSV output (``p_Monkey Pox``).
CLASS_COLUMN_PREFIX = "p_"

#: Output columns before and after the per-class probabilities (see :func:`row_columns`).
_LEADING_COLUMNS = ("file", "status", "label", "probability", "band")
_TRAILING_COLUMNS = ("reason", "error", "code")


@dataclass(frozen=True)
class BatchConfig:
    """How the local engine batches and spreads the work.

    Attributes:
        batch_size: photos per forward pass.
        workers: threads that each read, check and predict whole batches; ``None``: the usable
            cores (:func:`default_workers`).
        prefetch_batches: batches read ahead of the ones being predicted (bounds memory).
        threads: ONNX Runtime intra-op threads of the session the workers share; ``None``:
            one (the workers run the model in parallel, one core each).
    """

    batch_size: int = BATCH_SIZE
    workers: int | None = None
    prefetch_batches: int = PREFETCH_BATCHES
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("batch_size", "workers", "prefetch_batches", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"BatchConfig.{name} must be at least 1, got {value}")


class PredictionEngine(Protocol):
    """Something that turns image files into result rows, batch by batch, in input order."""

    classes_: list[str]

    def __call__(self, files: Iterable[Path]) -> Iterator[list[Row]]:
        """Yield one list of rows (see :func:`row_columns`) per batch of ``files``."""
        ...


@dataclass
class BatchSummary:
    """What a run of :func:`predict_to_file` did.

    Attributes:
        out: the output file.
        predicted: rows with a prediction (status ``ok``) written in this run.
        failed: error rows (unreadable files) written in this run.
        skipped: files left alone because the output already had them.
        seconds: wall time of this run.
        failures: ``(file, error)`` of the unreadable files of this run.
        retake: rows of photos the checks refused (status ``retake``) written in this run.
    """

    out: Path
    predicted: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    retake: int = 0

    @property
    def images_per_second(self) -> float:
        """Files processed (predicted, refused or failed) per second in this run."""
        done = self.predicted + self.retake + self.failed
        return done / self.seconds if self.seconds > 0 else 0.0


def iter_image_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Yield image files: files as given, folders walked recursively in sorted order.

    The walk is lazy: it holds the names of one folder at a time, never the whole tree.
    Symbolic links to folders are followed, each folder at most once (a link back to a folder
    already walked is skipped with a warning, so there are no cycles); a subfolder that cannot
    be listed is yielded itself, so that it gets an error row.

    Args:
        paths: files and folders.

    Yields:
        Files with an image suffix (``IMAGE_SUFFIXES``) in folders, plus every file given
        directly, in the order of ``sorted(folder.rglob("*"))``.
    """
    for path in map(Path, paths):
        if path.is_dir():
            yield from _walk(path, set())
        else:
            yield path


def _walk(folder: Path, seen: set[tuple[int, int]]) -> Iterator[Path]:
    try:
        status = folder.stat()
        with os.scandir(folder) as entries:
            # Sorting by name, depth first, gives the order of sorted(rglob("*")).
            listing = sorted(
                (entry.name, entry.is_dir()) for entry in entries if _is_dir_or_image(entry)
            )
    except OSError:
        yield folder
        return
    if (status.st_dev, status.st_ino) in seen:
        warnings.warn(
            f"not walking {folder} again: it links to a folder already walked", stacklevel=2
        )
        return
    seen.add((status.st_dev, status.st_ino))
    for name, is_dir in listing:
        yield from _walk(folder / name, seen) if is_dir else (folder / name,)


def _is_dir_or_image(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir() or _is_image_file(entry)
    except OSError:
        return False


def _is_image_file(entry: os.DirEntry[str]) -> bool:
    suffix = os.path.splitext(entry.name)[1].lower()
    return suffix in IMAGE_SUFFIXES and entry.is_file()


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Split an iterable into lists of ``size`` items (the last may be shorter), lazily."""
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass
class PreparedBatch:
    """Files read (:func:`~mpoxscan.data.photos.read_photo`), checked and resized.

    Attributes:
        files: the files, in order.
        pixels: ``(n_ok, 3, S, S)`` float32 input of the files that were read and passed the
            photo checks, in order.
        failures: per file, ``None`` when it was read, else ``(error message, error code)``.
        issues: per file, the photo checks' objections (:func:`check_photo`; empty when it
            passed or could not be read).
    """

    files: list[Path]
    pixels: np.ndarray
    failures: list[tuple[str, str] | None]
    issues: list[list[QualityIssue]]


def prepare_batch(
    files: Sequence[Path], image_size: int, quality: QualitySettings | None = None
) -> PreparedBatch:
    """Read, check and resize files into model input; unreadable and refused files are noted.

    Each photo is read reduced and checked (size, exposure, sharpness) on that reduced image,
    as the web service does; the pixels are those of
    :func:`~mpoxscan.inference.predictor.images_to_pixels` on the photos that pass.

    Args:
        files: image files.
        image_size: the model's input side.
        quality: the photo checks' thresholds (the predictor's ``quality``).

    Returns:
        The :class:`PreparedBatch`.
    """
    pixels = np.empty((len(files), 3, image_size, image_size), dtype=np.float32)
    failures: list[tuple[str, str] | None] = []
    issues: list[list[QualityIssue]] = []
    n_ok = 0
    for path in files:
        try:
            photo = read_photo(path, image_size)
        except (InvalidImageError, OSError) as error:
            message = error.strerror if isinstance(error, OSError) and error.strerror else error
            failures.append((str(message), getattr(error, "code", UNREADABLE_CODE)))
            issues.append([])
            continue
        failures.append(None)
        issues.append(check_photo(photo, quality))
        if not issues[-1]:
            # uint8 HWC straight into the float32 CHW slot: one pass, no temporary float image.
            pixels[n_ok] = photo_pixels(photo, image_size).transpose(2, 0, 1)
            n_ok += 1
    return PreparedBatch(list(files), pixels[:n_ok], failures, issues)


def prediction_rows(
    predictor: Predictor,
    batch: PreparedBatch,
    outputs: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[Row]:
    """Run the model on a prepared batch and give one result row per file, in order.

    Photos that passed the pixel checks go through the model and the out-of-domain check
    (:meth:`Predictor.judge`), so each row's ``status`` is the web page's: ``ok``, ``retake``
    (with the ``reason``) or ``error``.

    Args:
        predictor: a loaded predictor.
        batch: from :func:`prepare_batch`.
        outputs: the model's ``(probabilities, embeddings)`` of ``batch.pixels`` when already
            run (:func:`model_outputs`); run here when ``None``.

    Returns:
        Rows with the keys of :func:`row_columns` (``probabilities`` a dict by class).
    """
    assessments = iter(())
    if len(batch.pixels):
        outputs = outputs if outputs is not None else model_outputs(predictor, batch)
        assessments = iter(predictor.judge(*outputs))
    rows = []
    for path, failure, issues in zip(batch.files, batch.failures, batch.issues, strict=True):
        if failure is not None:
            rows.append(_row(path, "error", error=failure[0], code=failure[1]))
            continue
        if issues:
            rows.append(_row(path, "retake", reason=issues[0].code))
            continue
        assessment = next(assessments)
        prediction = assessment.prediction
        if prediction is None:
            rows.append(_row(path, "retake", reason=assessment.reasons[0].code))
        else:
            rows.append(
                _row(
                    path,
                    "ok",
                    label=prediction.label,
                    probability=prediction.probability,
                    band=prediction.band,
                    probabilities=prediction.probabilities,
                )
            )
    return rows


def model_outputs(predictor: Predictor, batch: PreparedBatch) -> tuple[np.ndarray, np.ndarray]:
    """The model's ``(probabilities, embeddings)`` of a prepared batch's photos."""
    if not len(batch.pixels):
        return np.empty((0, len(predictor.classes_)), np.float32), np.empty((0, 0), np.float32)
    return predictor.predict_pixels(batch.pixels)


def _row(
    path: Path,
    status: str,
    *,
    label: str | None = None,
    probability: float | None = None,
    band: str | None = None,
    probabilities: dict[str, float] | None = None,
    reason: str | None = None,
    error: str | None = None,
    code: str | None = None,
) -> Row:
    return {
        "file": str(path),
        "status": status,
        "label": label,
        "probability": probability,
        "band": band,
        "probabilities": probabilities,
        "reason": reason,
        "error": error,
        "code": code,
    }


class LocalEngine:
    """Predict in this process: worker threads read, check and predict whole batches.

    The workers share the predictor's ONNX Runtime session, so load it with one intra-op
    thread (:func:`~mpoxscan.inference.engines.open_engine` does); the out-of-domain check
    and the rows are made in the calling thread, batch by batch, in input order.

    Args:
        predictor: a loaded predictor (ONNX Runtime is much faster than PyTorch on a CPU).
        config: batching settings.
    """

    def __init__(self, predictor: Predictor, config: BatchConfig | None = None):
        self.predictor = predictor
        self.config = config or BatchConfig()

    @property
    def classes_(self) -> list[str]:
        """The predictor's classes, in output order."""
        return list(self.predictor.classes_)

    @property
    def threshold_(self) -> float | None:
        """The decision threshold on the positive-class probability (``None``: multi-class
        without a positive class)."""
        return self.predictor.threshold_ if self.predictor.positive_class_ else None

    def __call__(self, files: Iterable[Path]) -> Iterator[list[Row]]:
        """Yield the rows of each batch of ``files``, in order."""
        for batch, outputs in self._predicted(files):
            yield prediction_rows(self.predictor, batch, outputs)

    def _predicted(
        self, files: Iterable[Path]
    ) -> Iterator[tuple[PreparedBatch, tuple[np.ndarray, np.ndarray]]]:
        config = self.config
        workers = config.workers or default_workers()
        pool = ThreadPoolExecutor(workers, thread_name_prefix="mpoxscan-predict")
        pending: deque[Future[tuple[PreparedBatch, tuple[np.ndarray, np.ndarray]]]] = deque()
        try:
            for chunk in chunked(files, config.batch_size):
                pending.append(pool.submit(self._read_and_run, chunk))
                if len(pending) > workers + config.prefetch_batches:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            # Also on an early stop (an interrupt, a consumer that breaks off): no stray work.
            pool.shutdown(wait=True, cancel_futures=True)

    def _read_and_run(
        self, files: list[Path]
    ) -> tuple[PreparedBatch, tuple[np.ndarray, np.ndarray]]:
        predictor = self.predictor
        batch = prepare_batch(files, predictor.image_size_, predictor.quality)
        return batch, model_outputs(predictor, batch)


def predict_paths(
    predictor: Predictor, files: Iterable[Path], batch_size: int = BATCH_SIZE
) -> Iterator[Row]:
    """Yield one result row per file, in order (the local engine, row by row).

    Args:
        predictor: a loaded predictor.
        files: image files (e.g. from :func:`iter_image_files`).
        batch_size: photos per forward pass.

    Yields:
        Rows with the keys of :func:`row_columns`: ``label``, ``probability`` (of the positive
        class) and ``probabilities`` for a prediction, or ``error`` and ``code`` for a file
        that cannot be read (the other files are still predicted).
    """
    engine = LocalEngine(predictor, BatchConfig(batch_size=batch_size))
    for rows in engine(files):
        yield from rows


def output_format(out: Path) -> OutputFormat:
    """The format of an output file, from its suffix (``.csv``, ``.jsonl`` or ``.ndjson``)."""
    try:
        return OUTPUT_FORMATS[out.suffix.lower()]
    except KeyError:
        raise ValueError(
            f"Cannot tell the output format of {out}: name it *.csv or *.jsonl"
        ) from None


def row_columns(classes: Sequence[str], fmt: OutputFormat) -> list[str]:
    """The columns of an output file.

    JSON Lines rows have ``file, status, label, probability, band, probabilities, reason,
    error, code``, with ``probabilities`` an object by class; CSV has one ``p_<class>`` column
    per class instead. ``status`` is the web page's: ``ok`` (a prediction: ``label``,
    ``probability`` of the positive class, empty without one, and its screening ``band``),
    ``retake`` (the photo checks refused it; ``reason`` is the check's code, e.g.
    ``too_blurry`` or ``out_of_domain``) or ``error`` (the file cannot be read: ``error`` and
    ``code``).
    """
    if fmt == "jsonl":
        return [*_LEADING_COLUMNS, "probabilities", *_TRAILING_COLUMNS]
    per_class = [f"{CLASS_COLUMN_PREFIX}{name}" for name in classes]
    return [*_LEADING_COLUMNS, *per_class, *_TRAILING_COLUMNS]


def read_finished(out: Path, classes: Sequence[str]) -> set[str]:
    """Read the files an output already has, and cut off a partially written last line.

    The file is read line by line (memory follows the number of files, not the file size).

    Args:
        out: a CSV or JSON Lines output of an earlier, maybe interrupted, run.
        classes: the model's classes (the columns must match).

    Returns:
        The ``file`` of every complete row (an empty set when ``out`` does not exist).

    Raises:
        ValueError: ``out`` was written for other columns, or a row before the last is
            malformed (then the file is left as it is).
    """
    if not out.exists():
        return set()
    fmt = output_format(out)
    with out.open("rb") as handle:
        if fmt == "csv":
            files, end = _finished_csv(handle, out, classes)
        else:
            files, end = _finished_jsonl(handle, out)
        size = handle.seek(0, os.SEEK_END)
    if end < size:
        with out.open("r+b") as handle:
            handle.truncate(end)
    return files


def _complete_lines(handle: BinaryIO) -> Iterator[tuple[bytes, int]]:
    """Each newline-terminated line with the offset just after it; a partial last is left out."""
    offset = 0
    for line in handle:
        if not line.endswith(b"\n"):
            return
        offset += len(line)
        yield line, offset


def _malformed(out: Path, where: str) -> ValueError:
    return ValueError(
        f"{where} of {out} is not a result row of mpoxscan predict, and it is not the last "
        "(cut-off) line; repair the file or write to a new --out file"
    )


def _finished_jsonl(handle: BinaryIO, out: Path) -> tuple[set[str], int]:
    columns = set(row_columns((), "jsonl"))
    files: set[str] = set()
    end, malformed = 0, None
    for number, (line, offset) in enumerate(_complete_lines(handle), start=1):
        if malformed is not None:
            raise _malformed(out, f"Line {malformed}")
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            row = None
        if not isinstance(row, dict) or set(row) != columns:
            malformed = number  # fine only as the last line: a cut-off write, redone
            continue
        files.add(row["file"])
        end = offset
    return files, end


def _finished_csv(handle: BinaryIO, out: Path, classes: Sequence[str]) -> tuple[set[str], int]:
    columns = row_columns(classes, "csv")
    consumed = 0

    def lines() -> Iterator[str]:
        nonlocal consumed
        for line, offset in _complete_lines(handle):
            consumed = offset
            yield line.decode("utf-8", errors="replace")

    reader = csv.reader(lines())
    header = next(reader, None)
    if header is None:
        return set(), 0
    if header != columns:
        raise ValueError(
            f"{out} has the columns {header}, this model writes {columns}; "
            "write to a new --out file"
        )
    files: set[str] = set()
    end, malformed = consumed, False
    for row in reader:
        if malformed:
            raise _malformed(out, "A row")
        if len(row) != len(columns):
            malformed = True  # fine only as the last row: a cut-off write, redone
            continue
        files.add(row[0])
        # csv reads no further than a row's last line, so `consumed` is where this row ends.
        end = consumed
    return files, end


class _Writer:
    """Appends rows to an output file in its format, flushing after each batch."""

    def __init__(self, out: Path, fmt: OutputFormat, classes: Sequence[str]):
        self.fmt = fmt
        self.classes = list(classes)
        new = not out.exists() or out.stat().st_size == 0
        self.handle = out.open("a", encoding="utf-8", newline="")
        self.csv = csv.writer(self.handle, lineterminator="\n") if fmt == "csv" else None
        if new and self.csv is not None:
            self.csv.writerow(row_columns(classes, "csv"))

    def write(self, rows: list[Row]) -> None:
        for row in rows:
            if self.csv is not None:
                self.csv.writerow(self._cells(row))
            else:
                self.handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.handle.flush()

    def _cells(self, row: Row) -> list[Any]:
        # csv writes floats with repr: they read back exactly.
        probabilities = row["probabilities"] or {}
        per_class = [probabilities.get(name) for name in self.classes]
        leading = [row[column] for column in _LEADING_COLUMNS]
        return [*leading, *per_class, *(row[column] for column in _TRAILING_COLUMNS)]

    def close(self) -> None:
        self.handle.close()


def predict_to_file(
    engine: PredictionEngine,
    paths: Iterable[str | Path],
    out: str | Path,
    *,
    on_progress: Callable[[BatchSummary], None] | None = None,
) -> BatchSummary:
    """Predict image files and folders into a CSV or JSON Lines file, resuming an earlier run.

    Files already in ``out`` (from an interrupted run with the same output) are skipped; a
    partially written last line is cut off and redone. Rows are appended in walk order and
    flushed after every batch, so an interrupted run loses at most the batches in flight.

    Args:
        engine: from :func:`open_engine` (or a :class:`LocalEngine`).
        paths: image files and folders (walked with :func:`iter_image_files`).
        out: ``*.csv`` or ``*.jsonl`` file; created when missing.
        on_progress: called after every batch with the running summary.

    Returns:
        The :class:`BatchSummary` of this run.

    Raises:
        ValueError: the output's suffix is unknown, or it holds other columns.
    """
    out = Path(out)
    fmt = output_format(out)
    finished = read_finished(out, engine.classes_)
    summary = BatchSummary(out=out)
    start = time.perf_counter()

    def todo() -> Iterator[Path]:
        for path in iter_image_files(paths):
            if str(path) in finished:
                summary.skipped += 1
            else:
                yield path

    out.parent.mkdir(parents=True, exist_ok=True)
    writer = _Writer(out, fmt, engine.classes_)
    try:
        for rows in engine(todo()):
            writer.write(rows)
            failures = [(row["file"], row["error"]) for row in rows if row["status"] == "error"]
            summary.failures.extend(failures)
            summary.failed += len(failures)
            summary.retake += sum(row["status"] == "retake" for row in rows)
            summary.predicted += sum(row["status"] == "ok" for row in rows)
            summary.seconds = time.perf_counter() - start
            if on_progress is not None:
                on_progress(summary)
    finally:
        writer.close()
    summary.seconds = time.perf_counter() - start
    return summary
