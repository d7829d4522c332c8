"""The ``mpoxscan`` command line: parses options, calls the package, prints the result.

Heavy libraries (torch, onnxruntime, fastapi) are imported inside each command, so that
``mpoxscan --help`` answers at once.
"""

from __future__ import annotations

import errno
import inspect
import json
import logging
import os
import shlex
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup
from typer.exceptions import TyperException

from mpoxscan.errors import MpoxscanError

if TYPE_CHECKING:
    from mpoxscan.inference.batch import BatchSummary, PredictionEngine


class ExitCode(IntEnum):
    """What ``mpoxscan`` exits with; scripts can rely on these."""

    OK = 0
    FINDING = 1
    USER_ERROR = 2
    PARTIAL = 3
    INTERNAL_ERROR = 70
    INTERRUPTED = 130


#: The exit codes as every command's ``--help`` lists them.
EXIT_CODES_HELP = (
    "Exit codes: 0 done; 1 audit found a leak; 2 bad input or options (nothing done, or "
    "nothing scored); 3 done, but some files could not be read (counted in the summary); "
    "70 internal error (a bug: rerun with --debug and report it); 130 interrupted."
)

#: Environment variable that has the same effect as ``--debug``.
DEBUG_ENV = "MPOXSCAN_DEBUG"

#: ``click.Context.meta`` key under which commands note files they could not read.
UNREADABLE_META = "mpoxscan.unreadable"

#: Loggers whose INFO lines are progress (per fold, per stage) that commands show on stderr.
PROGRESS_LOGGERS = ("mpoxscan.training", "mpoxscan.data", "mpoxscan.evaluation")

#: How many unreadable files a summary names (the rest are counted).
SHOWN_FILES = 3

#: Errors a user can fix (bad paths, bad values); anything else is a bug in mpoxscan.
USER_ERRORS = (MpoxscanError, OSError, ValueError, KeyError, NotImplementedError)

err_console = Console(stderr=True)


class MpoxscanCommands(TyperGroup):
    """The ``mpoxscan`` group: every command runs through one error and warning path.

    A user error (:data:`USER_ERRORS`) prints one or two lines on stderr and exits 2; any
    other exception is a bug and exits 70; neither prints a traceback unless ``--debug`` (or
    ``MPOXSCAN_DEBUG=1``) is given. Warnings are collected while the command runs and
    summarised at the end; files a command could not read (noted with
    :func:`note_unreadable`, or warned about as "skipping FILE: reason") are counted and
    make it exit 3. Every command's help ends with the exit codes.
    """

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        """The command, with the exit codes added to its help."""
        command = super().get_command(ctx, cmd_name)
        if command is not None and not command.epilog:
            command.epilog = EXIT_CODES_HELP
        return command

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """List the commands, each with the whole first sentence of its help, wrapped to the
        terminal's width (click cuts it to what fits on one line and adds "...")."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=sys.maxsize)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: Any) -> Any:
        """Run the chosen command through the one error and warning path."""
        debug = bool(ctx.params.get("debug")) or _env_flag(DEBUG_ENV)
        with warnings.catch_warnings(record=True) as caught, _progress_lines():
            try:
                result = super().invoke(ctx)
            except (TyperException, typer.Exit, typer.Abort):
                raise  # parsing errors, --help, explicit exits: click reports them
            except KeyboardInterrupt:
                err_console.print("interrupted: run the same command again to resume or redo it")
                raise typer.Exit(ExitCode.INTERRUPTED) from None
            except Exception as error:
                _report_warnings(caught, ctx.meta, debug)
                if debug:
                    raise
                raise typer.Exit(_report_error(error)) from None
        if _report_warnings(caught, ctx.meta, debug):
            raise typer.Exit(ExitCode.PARTIAL)
        return result


@contextmanager
def _progress_lines() -> Iterator[None]:
    """Show the progress lines the library logs (per fold, per stage) on stderr, timed."""
    handler = logging.StreamHandler(err_console.file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    loggers = [logging.getLogger(name) for name in PROGRESS_LOGGERS]
    saved = [(logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        yield
    finally:
        for logger, (level, propagate) in zip(loggers, saved, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def fail(message: str, hint: str | None = None) -> None:
    """Stop the command with a user error: ``message`` (what went wrong) and ``hint`` (what
    to do), exit code 2."""
    raise MpoxscanError(message if hint is None else f"{message}\n{hint}", code="cli")


def note_unreadable(ctx: typer.Context, files: Iterable[tuple[str, str]]) -> None:
    """Count ``(file, reason)`` pairs the running command could not read: the summary names
    the first few and the command exits 3 (or 2 when it scored nothing and says so)."""
    ctx.meta.setdefault(UNREADABLE_META, []).extend(files)


def _report_error(error: BaseException) -> ExitCode:
    """Print a caught exception as one or two lines; return the exit code it means."""
    if isinstance(error, MpoxscanError):
        _print_error(error.message)
        return ExitCode.USER_ERROR
    if isinstance(error, OSError):
        _print_error(_os_error_message(error))
        return ExitCode.USER_ERROR
    if isinstance(error, USER_ERRORS):
        text = error.args[0] if isinstance(error, KeyError) and error.args else error
        _print_error(f"{text}\n(rerun with --debug to see where this came from)")
        return ExitCode.USER_ERROR
    _print_error(
        f"internal error: {type(error).__name__}: {error}\n"
        "This is a bug in mpoxscan: rerun with --debug for the traceback and report it."
    )
    return ExitCode.INTERNAL_ERROR


def _os_error_message(error: OSError) -> str:
    where = error.filename if error.filename is not None else "a file"
    what = error.strerror or str(error)
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "choose a location you may write to, or change its permissions"
    elif error.errno == errno.ENOSPC:
        hint = "free some disk space, or write somewhere else"
    elif error.errno in (errno.EEXIST, errno.ENOTDIR):
        hint = "a file stands where a folder is needed: choose another path"
    elif error.errno == errno.EISDIR:
        hint = "a folder stands where a file is needed: choose a file name"
    elif error.errno == errno.ENOENT:
        hint = "check the path (its folder must exist)"
    else:
        hint = "check the path and try again"
    return f"{where}: {what}\n{hint}"


def _print_error(text: str) -> None:
    first, _, rest = str(text).partition("\n")
    err_console.print(f"[bold red]error:[/] {escape(first)}", soft_wrap=True)
    if rest:
        err_console.print(escape(rest), soft_wrap=True)


def _report_warnings(caught: list[warnings.WarningMessage], meta: dict, debug: bool) -> bool:
    """Summarise the warnings and unreadable files of a command run; ``True`` when files
    could not be read."""
    unreadable = list(meta.get(UNREADABLE_META, []))
    others: dict[str, int] = {}
    for item in caught:
        text = str(item.message)
        if text.lower().startswith("skipping ") and ": " in text:
            path, _, reason = text[len("skipping ") :].partition(": ")
            unreadable.append((path, reason))
        else:
            others[text] = others.get(text, 0) + 1
    for text, count in list(others.items())[: 5 if not debug else None]:
        times = f" ({count} times)" if count > 1 else ""
        err_console.print(f"[yellow]warning:[/] {escape(text)}{times}", soft_wrap=True)
    if len(others) > 5 and not debug:
        err_console.print(f"[yellow]warning:[/] and {len(others) - 5} more kinds of warning")
    if unreadable:
        _summarise_unreadable(unreadable, debug)
    return bool(unreadable)


def _summarise_unreadable(unreadable: list[tuple[str, str]], debug: bool) -> None:
    """One line for the count, then one per reason with its first few files."""
    by_reason: dict[str, list[str]] = {}
    for path, reason in unreadable:
        short = str(reason).split(". The run goes on")[0].rstrip(".")
        by_reason.setdefault(short, []).append(str(path))
    noun = "file" if len(unreadable) == 1 else "files"
    err_console.print(
        f"[yellow]warning:[/] {len(unreadable)} {noun} could not be read and were left out:",
        soft_wrap=True,
    )
    for reason, paths in by_reason.items():
        shown = paths if debug else paths[:SHOWN_FILES]
        more = f" and {len(paths) - len(shown)} more" if len(paths) > len(shown) else ""
        err_console.print(
            f"  {len(paths)} x {escape(reason)}: {escape(', '.join(shown))}{more}", soft_wrap=True
        )


app = typer.Typer(
    cls=MpoxscanCommands,
    help="Screen photos of skin lesions for mpox: train, evaluate, explain and serve models.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
)
console = Console()


def _show_version(value: bool) -> None:
    if value:
        from mpoxscan._version import __version__

        typer.echo(f"mpoxscan {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help=f"Show the full traceback of an error (or set {DEBUG_ENV}=1)."
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_show_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Screen photos of skin lesions for mpox: train, evaluate, explain and serve models."""


#: The per-fold columns ``mpoxscan cv`` prints (all measures follow in the summary table).
CV_FOLD_COLUMNS = ("accuracy", "sensitivity", "specificity", "roc_auc")

DataOpt = Annotated[
    Path, typer.Option("--data", help="Dataset folder (DIR/<class> or DIR/Train|Val|Test/<class>).")
]
DataListOpt = Annotated[
    list[Path],
    typer.Option(
        "--data",
        metavar="PATH",
        help="Dataset folder (DIR/<class> or DIR/Train|Val|Test/<class>) or data manifest "
        "(.toml naming several sources); repeat it to read several sources in one run.",
    ),
]
BundleOpt = Annotated[Path, typer.Option("--model-dir", help="Model bundle directory.")]
ModelOpt = Annotated[str, typer.Option("--model", help="Architecture from the model registry.")]
PositiveOpt = Annotated[
    str | None, typer.Option("--positive", help="Positive class (default: the mpox folder).")
]
PatientOpt = Annotated[
    str | None,
    typer.Option("--patient-pattern", help="Regex for the patient id in a file stem (group 1)."),
]


def _command_line(ctx: typer.Context) -> str:
    """The running command as a user would retype it, complete: every argument and every
    option that has a value, defaults included (so the record says what was run even when a
    default changes later)."""
    words = ["mpoxscan", ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        values = value if isinstance(value, list | tuple) else [value]
        if param.param_type_name == "argument":
            words.extend(str(v) for v in values)
        elif value is not None and param.name != "help":
            flag = max(param.opts, key=len)
            if getattr(param, "is_flag", False):
                words.extend([flag] if value else param.secondary_opts[:1])
            else:
                for item in values:
                    words.extend([flag, str(item)])
    return shlex.join(words)


def _fail(error: Exception) -> None:
    """Stop with a user error (kept for commands that still catch their own errors)."""
    fail(str(error))


class RecipeChoice(StrEnum):
    """How ``mpoxscan train`` and ``mpoxscan cv`` train a model (see ``TrainConfig.recipe``)."""

    auto = "auto"
    finetune = "finetune"
    frozen_features = "frozen-features"


class HeadChoice(StrEnum):
    """The head the frozen-features recipe trains on cached embeddings."""

    logreg = "logreg"
    linear = "linear"


RecipeOpt = Annotated[
    RecipeChoice,
    typer.Option(
        help="auto: the benchmarked default for the model (frozen-features for "
        "efficientnet-lite*, finetune otherwise); finetune: train the whole network; "
        "frozen-features: embed photos once through the frozen backbone, train the head."
    ),
]


def _option(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default
    )


#: The options ``train`` and ``cv`` share, declared once (see :func:`training_options`).
TRAINING_OPTIONS = (
    _option("model", ModelOpt, "efficientnet-lite0"),
    _option(
        "epochs",
        Annotated[
            int | None,
            typer.Option(
                help="Maximum epochs (per fold in cv); early stopping may end sooner.", min=1
            ),
        ],
        None,
    ),
    _option(
        "seed",
        Annotated[int, typer.Option(help="Seed for the split, initialisation and augmentation.")],
        0,
    ),
    _option(
        "weights",
        Annotated[
            Path | None,
            typer.Option(help="ImageNet weights file for vgg16 (.h5 Keras notop or .pth)."),
        ],
        None,
    ),
    _option("positive", PositiveOpt, None),
    _option(
        "multiclass",
        Annotated[bool, typer.Option(help="One output per class instead of positive vs rest.")],
        False,
    ),
    _option("patient_pattern", PatientOpt, None),
    _option(
        "image_size",
        Annotated[int | None, typer.Option(help="Input size (default: the model's).", min=16)],
        None,
    ),
    _option(
        "target_sensitivity",
        Annotated[
            float,
            typer.Option(
                help="Sensitivity the decision threshold aims for on validation data.",
                min=0.0,
                max=1.0,
            ),
        ],
        0.95,
    ),
    _option("recipe", RecipeOpt, RecipeChoice.auto),
    _option(
        "head",
        Annotated[
            HeadChoice | None,
            typer.Option(help="frozen-features head: logreg (C chosen on validation) or linear."),
        ],
        None,
    ),
    _option(
        "views",
        Annotated[
            int | None,
            typer.Option(
                help="frozen-features: views per training photo (photo, mirror, augmented).",
                min=1,
            ),
        ],
        None,
    ),
    _option(
        "tta",
        Annotated[
            bool | None,
            typer.Option(
                "--tta/--no-tta", help="frozen-features: average photo and mirror at test time."
            ),
        ],
        None,
    ),
    _option(
        "feature_cache",
        Annotated[
            Path | None,
            typer.Option("--feature-cache", help="frozen-features: folder to keep embeddings in."),
        ],
        None,
    ),
    _option(
        "tail_blocks",
        Annotated[
            int | None,
            typer.Option(
                help="frozen-features: also fine-tune the last N backbone blocks on cached inputs.",
                min=0,
            ),
        ],
        None,
    ),
    _option(
        "trainable_from",
        Annotated[
            str | None,
            typer.Option(
                help="finetune: first backbone parameter prefix to train (partial fine-tuning)."
            ),
        ],
        None,
    ),
    _option(
        "patience",
        Annotated[
            int | None,
            typer.Option(help="Early-stopping patience in epochs (default: the recipe's).", min=1),
        ],
        None,
    ),
    _option(
        "train_config",
        Annotated[
            Path | None,
            typer.Option(
                "--train-config",
                help="JSON file of TrainConfig fields (flags given here override it).",
            ),
        ],
        None,
    ),
)


def training_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command the shared training options (:data:`TRAINING_OPTIONS`) after its own.

    The command takes them as ``**options`` (they reach it by name, as typer passes every
    option); declaring them once keeps ``train`` and ``cv`` from drifting apart.
    """
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    command.__signature__ = signature.replace(parameters=[*own, *TRAINING_OPTIONS])
    return command


def _configs(options: Mapping[str, Any]):
    """The data, model and training configurations from the options of ``train`` or ``cv``
    (``ctx.params``; a ``--train-config`` JSON file is the base the flags override)."""
    from mpoxscan.training.config import DataConfig, ModelConfig, TrainConfig

    data_dir, *more_data = (str(path) for path in options["data"])
    data_cfg = DataConfig(
        data_dir=data_dir,
        more_data=more_data,
        positive=options["positive"],
        multiclass=options["multiclass"],
        patient_pattern=options["patient_pattern"],
    )
    weights = options["weights"]
    model_cfg = ModelConfig(
        name=options["model"],
        image_size=options["image_size"],
        weights=str(weights) if weights else None,
    )
    train_config = options["train_config"]
    train_kwargs = json.loads(train_config.read_text()) if train_config else {}
    train_kwargs |= {"seed": options["seed"], "target_sensitivity": options["target_sensitivity"]}
    if options["recipe"] is not RecipeChoice.auto:
        train_kwargs["recipe"] = options["recipe"].value
    flags = {key: options[key] for key in ("epochs", "trainable_from", "patience")}
    train_kwargs |= {key: value for key, value in flags.items() if value is not None}
    chosen = {key: value for key, value in _feature_options(options).items() if value is not None}
    if chosen:
        train_kwargs["features"] = train_kwargs.get("features", {}) | chosen
    return data_cfg, model_cfg, TrainConfig.from_dict(train_kwargs)


def _feature_options(options: Mapping[str, Any]) -> dict:
    """The frozen-features flags as ``FeatureConfig`` fields (``None``: not given)."""
    head, cache = options["head"], options["feature_cache"]
    return {
        "head": head.value if head else None,
        "train_views": options["views"],
        "tta": options["tta"],
        "cache_dir": str(cache) if cache else None,
        "tail_blocks": options["tail_blocks"],
    }


@app.command()
@training_options
def train(
    ctx: typer.Context,
    data: DataListOpt,
    out: Annotated[Path, typer.Option("--out", help="Bundle directory to write.")],
    overwrite: Annotated[
        bool, typer.Option(help="Replace the bundle already at --out (else refuse).")
    ] = False,
    **options: Any,
) -> None:
    """Train a model on a patient-grouped split and save it as a bundle."""
    from mpoxscan.evaluation.tables import metrics_table
    from mpoxscan.training.train import train_bundle

    if not overwrite and out.exists() and (not out.is_dir() or any(out.iterdir())):
        fail(
            f"{out} already exists and is not empty, so train would overwrite it.",
            "Pass --overwrite to replace it, or choose another --out.",
        )
    configs = _configs(ctx.params)  # the options above, by name
    result = train_bundle(*configs, out, command=_command_line(ctx))
    console.print(
        metrics_table(
            result.test_metrics,
            title=f"Test split ({options['model']}, best epoch {result.best_epoch})",
        )
    )
    console.print(f"Bundle written to [bold]{result.bundle_dir}[/]")


@app.command()
def evaluate(
    model_dir: BundleOpt,
    data: DataListOpt,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the metrics as JSON here.")
    ] = None,
    plots_dir: Annotated[
        Path | None, typer.Option("--plots", help="Folder for the confusion-matrix and ROC PNGs.")
    ] = None,
) -> None:
    """Measure a bundle on a dataset's test split (or on all of it when it has no split)."""
    from mpoxscan.evaluation.evaluate import evaluate_bundle
    from mpoxscan.evaluation.tables import metrics_table, per_source_table

    report = evaluate_bundle(model_dir, data, plots_dir=plots_dir or model_dir / "evaluation")
    console.print(metrics_table(report.metrics, title=f"Evaluation on {report.description}"))
    console.print(per_source_table(report.per_source, "Photos per source"))
    for plot in report.plots:
        console.print(f"wrote {plot}")
    if json_out:
        json_out.write_text(json.dumps(report.to_dict(), indent=2))
        console.print(f"wrote {json_out}")


class EngineChoice(StrEnum):
    """Where ``mpoxscan predict`` runs the model."""

    local = "local"
    ray = "ray"


@app.command()
def predict(
    ctx: typer.Context,
    model_dir: BundleOpt,
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write rows to this .csv or .jsonl file as they come (for big folders); "
            "rerunning with the same file resumes, skipping the files already in it.",
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Photos per forward pass (8 is fastest on 2 CPU cores).", min=1)
    ] = 8,
    engine: Annotated[
        EngineChoice,
        typer.Option(
            help="local: this process; ray: Ray Data actors (needs mpoxscan's ray extra)."
        ),
    ] = EngineChoice.local,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Ray cluster for --engine ray (default: RAY_ADDRESS, else a local Ray)."),
    ] = None,
) -> None:
    """Predict image files or folders; unreadable files get an error entry."""
    from mpoxscan.inference.batch import BatchConfig, iter_image_files, output_format
    from mpoxscan.inference.engines import open_engine

    if out is not None:  # a bad --out fails before the model loads
        output_format(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(out))
    if next(iter_image_files(paths), None) is None:
        fail(
            f"No image files in {', '.join(map(str, paths))}.",
            "Pass photos (.jpg, .png, .webp, ...) or folders that hold them.",
        )
    predictor_engine = open_engine(
        model_dir,
        engine=engine.value,
        config=BatchConfig(batch_size=batch_size),
        ray_address=ray_address,
    )
    if out is not None:
        summary = _predict_with_progress(predictor_engine, paths, out)
        console.print(
            f"wrote {summary.out}: {summary.predicted} predicted, {summary.failed} unreadable, "
            f"{summary.skipped} already done, {summary.retake} to retake (photo checks); "
            f"{summary.images_per_second:.1f} images/s",
            soft_wrap=True,
        )
        note_unreadable(ctx, summary.failures)
        scored = summary.predicted + summary.retake + summary.skipped
    else:
        threshold = getattr(predictor_engine, "threshold_", None)
        rows = [
            _with_band(row, threshold)
            for batch in predictor_engine(iter_image_files(paths))
            for row in batch
        ]
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
        else:
            console.print(_predictions_table(rows, threshold))
        note_unreadable(ctx, [(row["file"], row["error"]) for row in rows if row["error"]])
        scored = sum(row["error"] is None for row in rows)
    if not scored:
        fail(
            "No photo could be scored: every file was unreadable (see above).",
            "Pass JPEG, PNG, WebP, BMP, TIFF or HEIC photos.",
        )


def _with_band(row: dict, threshold: float | None) -> dict:
    """A result row with the screening band and the decision threshold (binary bundles)."""
    from mpoxscan.inference.predictor import screening_band

    probability = row.get("probability")
    band = None
    if probability is not None and threshold is not None:
        band = screening_band(probability, threshold)
    return row | {"band": band, "threshold": threshold}


def _predict_with_progress(engine: PredictionEngine, paths: list[Path], out: Path) -> BatchSummary:
    """Run ``predict_to_file`` under a progress bar (on stderr) with images per second."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from mpoxscan.inference.batch import iter_image_files, predict_to_file

    total = sum(1 for _ in iter_image_files(paths))
    columns = (
        TextColumn("predicting"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.1f} images/s"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console) as progress:
        task = progress.add_task("predict", total=total, rate=0.0)

        def show(summary: BatchSummary) -> None:
            done = summary.predicted + summary.retake + summary.failed + summary.skipped
            progress.update(task, completed=done, rate=summary.images_per_second)

        return predict_to_file(engine, paths, out, on_progress=show)


def _predictions_table(rows: list[dict], threshold: float | None):
    """The predictions as a table; probabilities as percentages, as on the web page."""
    from rich.table import Table

    caption = None
    if threshold is not None:
        caption = (
            f"positive at {_percent(threshold)} or more; uncertain from half of that "
            "(retake or ask a clinician)"
        )
    table = Table(title="Predictions", caption=caption)
    table.add_column("file", overflow="fold")
    for column in ("label", "probability", "band", "note"):
        table.add_column(column, overflow="fold")
    for row in rows:
        probability = row.get("probability")
        table.add_row(
            row["file"],
            row.get("label") or "-",
            "-" if probability is None else _percent(probability),
            row.get("band") or "",
            row.get("error") or row.get("reason") or "",
        )
    return table


def _percent(probability: float) -> str:
    """A probability as every human-facing output shows it (CLI tables, web page)."""
    return f"{probability:.1%}"


@app.command()
def explain(
    ctx: typer.Context,
    model_dir: BundleOpt,
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the heat-map PNGs.")] = Path(
        "heatmaps"
    ),
) -> None:
    """Write a Grad-CAM heat map over each photo (what the model looked at), with its result."""
    from rich.table import Table

    from mpoxscan.inference.batch import iter_image_files
    from mpoxscan.inference.heatmaps import write_heatmaps
    from mpoxscan.inference.predictor import Predictor

    predictor = Predictor.load(model_dir)
    table = Table("mpox", "band")
    table.add_column("photo", overflow="fold", ratio=1)
    table.add_column("heat map or reason", overflow="fold", ratio=1)
    unreadable = []
    for item in write_heatmaps(predictor, iter_image_files(paths), out):
        assessment = item.assessment
        if assessment is None:
            table.add_row("", "", str(item.path), f"unreadable: {item.error}")
            unreadable.append((str(item.path), str(item.error)))
        elif assessment.prediction is None:
            reasons = "; ".join(reason.message for reason in assessment.reasons)
            table.add_row("", "retake", str(item.path), reasons)
        else:
            prediction = assessment.prediction
            probability = "" if prediction.probability is None else _percent(prediction.probability)
            table.add_row(probability, prediction.band or "", str(item.path), str(item.heatmap))
    console.print(table)
    note_unreadable(ctx, unreadable)


@app.command()
def samples(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="PNG file to write.")],
    seed: int = 0,
) -> None:
    """Write the tutorial's 4x3 grid of sample photos with their class names."""
    from mpoxscan.evaluation.sample_grid import write_samples_grid

    path = write_samples_grid(data, out, seed=seed)
    console.print(f"wrote {path}")


@app.command()
def serve(
    model_dir: BundleOpt = Path("models/default"),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.", min=1)] = 1,
    micro_batch_max_size: Annotated[
        int | None,
        typer.Option(
            help="Most photos of concurrent requests run through the model together; "
            "1 turns micro-batching off. [default: 1, or MPOXSCAN_MICRO_BATCH_MAX_SIZE]"
        ),
    ] = None,
    micro_batch_max_wait_ms: Annotated[
        float | None,
        typer.Option(
            help="Longest wait (ms) for photos of other requests still being decoded. "
            "[default: 5, or MPOXSCAN_MICRO_BATCH_MAX_WAIT_MS]"
        ),
    ] = None,
    max_concurrent_predictions: Annotated[
        int | None,
        typer.Option(
            help="Requests decoded and predicted at once per process (about 2x the micro-batch "
            "size with batching). [default: 2, or MPOXSCAN_MAX_CONCURRENT_PREDICTIONS]"
        ),
    ] = None,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            help="Reverse proxies whose X-Forwarded-For is believed (addresses or networks, "
            "comma-separated; see docs/security.md). [default: none, or "
            "MPOXSCAN_FORWARDED_ALLOW_IPS]"
        ),
    ] = None,
) -> None:
    """Serve the screening web page and the JSON API."""
    from mpoxscan.web.app import serve as serve_app

    serve_app(
        model_dir,
        host=host,
        port=port,
        workers=workers,
        micro_batch_max_size=micro_batch_max_size,
        micro_batch_max_wait_ms=micro_batch_max_wait_ms,
        max_concurrent_predictions=max_concurrent_predictions,
        forwarded_allow_ips=forwarded_allow_ips,
    )


@app.command("import-keras")
def import_keras(
    ctx: typer.Context,
    h5_file: Annotated[Path, typer.Argument(help="The tutorial's saved Keras model (.h5).")],
    out: Annotated[Path, typer.Option("--out", help="Bundle directory to write.")],
    classes: Annotated[
        str, typer.Option(help="Comma-separated class names in the model's output order.")
    ] = "Monkey Pox,Others",
    positive: Annotated[str, typer.Option(help="The positive class.")] = "Monkey Pox",
) -> None:
    """Turn the tutorial's trained Keras VGG16 model into an mpoxscan bundle."""
    from mpoxscan.inference.keras_import import import_keras_bundle

    bundle = import_keras_bundle(
        h5_file,
        out,
        classes=[c.strip() for c in classes.split(",")],
        positive=positive,
        command=_command_line(ctx),
    )
    console.print(f"Bundle written to [bold]{bundle}[/]")


class ExportFormat(StrEnum):
    """What ``mpoxscan export`` writes."""

    onnx = "onnx"


class Quantization(StrEnum):
    """What ``mpoxscan export --quantize`` writes besides the fp32 graph."""

    int8 = "int8"


class Int8Float(StrEnum):
    """What ``mpoxscan export --quantize int8`` keeps in float (``QuantizeConfig.keep_float``)."""

    ends = "ends"
    early = "early"
    head = "head"


@app.command()
def export(
    model_dir: BundleOpt,
    fmt: Annotated[ExportFormat, typer.Option("--format", help="Export format.")] = (
        ExportFormat.onnx
    ),
    quantize: Annotated[
        Quantization | None,
        typer.Option(
            help="int8: also write an int8 graph (static quantisation calibrated on the "
            "training photos), kept only if its held-out ROC AUC is within 0.005 of fp32's.",
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="The bundle's training data for --quantize (default: as recorded)."),
    ] = None,
    int8_float: Annotated[
        Int8Float,
        typer.Option(
            help="Layers --quantize keeps in float: ends (stem, depthwise convolutions and "
            "their readers, classifier: closest to fp32, no faster on AVX2), early (the first "
            "6 convolutions and the classifier: about 1.5x less CPU on AVX2, larger "
            "probability changes) or head (only the classifier).",
        ),
    ] = Int8Float.ends,
) -> None:
    """Export a bundle's model to ONNX (with a parity check against PyTorch)."""
    from mpoxscan.inference.onnx_export import export_onnx

    report = export_onnx(model_dir)
    console.print(
        f"wrote {report.path}; max |p_onnx - p_torch| = {report.max_abs_diff:.2e} "
        f"over {report.n_samples} samples",
        soft_wrap=True,
    )
    if quantize is Quantization.int8:
        from mpoxscan.evaluation.quantize import QuantizeConfig, quantize_bundle

        config = QuantizeConfig(keep_float=int8_float.value)
        for line in quantize_bundle(model_dir, data, config).lines():
            console.print(line, soft_wrap=True)


@app.command()
@training_options
def cv(
    ctx: typer.Context,
    data: DataListOpt,
    out: Annotated[Path, typer.Option("--out", help="Folder for the fold results.")] = Path(
        "runs/cv"
    ),
    folds: Annotated[int, typer.Option(help="Number of patient-grouped folds.", min=2)] = 5,
    repeats: Annotated[int, typer.Option(help="Repeats with reshuffled folds.", min=1)] = 1,
    leave_source_out: Annotated[
        bool,
        typer.Option(
            "--leave-source-out",
            help="Train on all sources but one and test the one left out, for every source "
            "without mpox photos; the mpox sources are split by patient across these folds.",
        ),
    ] = False,
    **options: Any,
) -> None:
    """Cross-validate a recipe with patient-grouped, stratified folds."""
    from mpoxscan.evaluation.tables import cv_summary_table, folds_table, per_source_table
    from mpoxscan.training.cv import run_cv

    configs = _configs(ctx.params)  # the options above, by name
    summary = run_cv(
        *configs,
        out,
        folds=folds,
        repeats=repeats,
        leave_source_out=leave_source_out,
        command=_command_line(ctx),
    )
    per_fold = {key: summary["mean_std"][key] for key in CV_FOLD_COLUMNS}
    console.print(folds_table(summary["folds"], per_fold, with_mean=False))
    console.print(cv_summary_table(summary["mean_std"], summary["pooled"], len(summary["folds"])))
    console.print(per_source_table(summary["per_source"], "Out-of-fold photos per source"))
    console.print(f"wrote {out / 'summary.json'} and {out / 'oof.csv'}", soft_wrap=True)


@app.command("attach-cv")
def attach_cv(
    model_dir: BundleOpt,
    cv_dir: Annotated[Path, typer.Option("--cv-dir", help="The --out folder of mpoxscan cv.")],
) -> None:
    """Record a cross-validation of the bundle's own recipe and data in its model card."""
    from mpoxscan.evaluation.cv_card import attach_cv as attach

    meta = attach(model_dir, cv_dir)
    cv = meta["metrics"]["cv"]
    console.print(
        f"{model_dir}: cross-validated over {cv['n_folds']} folds x {cv['repeats']} repeats, "
        f"{cv['n_patients']} patients: accuracy {_mean_sd(cv['accuracy'])}, "
        f"ROC AUC {_mean_sd(cv['roc_auc'])}",
        soft_wrap=True,
    )


def _mean_sd(stats: dict) -> str:
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


@app.command()
def audit(
    data: DataListOpt,
    against: Annotated[
        list[Path] | None,
        typer.Option(help="Another dataset to look for shared photos in (repeatable)."),
    ] = None,
    near_threshold: Annotated[
        int, typer.Option(help="Largest perceptual-hash distance counted as a near-duplicate.")
    ] = 6,
    min_inliers: Annotated[
        int, typer.Option(help="Matched points a cropped or rotated copy needs.")
    ] = 8,
    min_similarity: Annotated[
        float, typer.Option(help="Smallest embedding cosine checked for matched points.")
    ] = 0.6,
    top_k: Annotated[int, typer.Option(help="Candidates checked per photo.")] = 5,
    crops: Annotated[
        bool, typer.Option(help="Look for cropped/rotated/mirrored copies (pretrained features).")
    ] = True,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Folder where photo embeddings are cached by file hash.")
    ] = None,
    pairs_png: Annotated[
        Path | None,
        typer.Option("--pairs-png", help="Write a contact sheet of the copy pairs found."),
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Also write the full report as JSON; '-' prints it instead."),
    ] = None,
) -> None:
    """Audit datasets: unreadable files, copies of one photo, leaks across splits and sets;
    exits 1 on a leak."""
    from mpoxscan.data.audit import audit_dataset
    from mpoxscan.data.copies import CopyConfig
    from mpoxscan.evaluation.copy_sheet import write_pairs_sheet
    from mpoxscan.evaluation.tables import audit_table

    config = CopyConfig(
        min_inliers=min_inliers, min_similarity=min_similarity, top_k=top_k, cache_dir=cache_dir
    )
    embed = _copy_embedder() if crops else None
    report = audit_dataset(
        data, against=against, near_threshold=near_threshold, embed=embed, copy_config=config
    )
    payload = report.to_dict()
    if json_out == Path("-"):
        console.print_json(json.dumps(payload))
    else:
        console.print(audit_table(payload))
        if json_out:
            json_out.write_text(json.dumps(payload, indent=2))
            console.print(f"wrote {json_out}", soft_wrap=True)
    if pairs_png:
        write_pairs_sheet(report.all_pairs, pairs_png)
        err_console.print(f"wrote {pairs_png}", soft_wrap=True)
    if report.has_leaks:
        err_console.print("[bold red]leak:[/] photos or patients straddle the splits (see above)")
        raise typer.Exit(code=1)


def _copy_embedder() -> Any:
    """The pretrained features the copy finder compares photos by (imports torch)."""
    from mpoxscan.models.region_embedding import RegionEmbedder

    return RegionEmbedder()


@app.command()
def report(
    cv_dir: Annotated[Path, typer.Option("--cv-dir", help="Output folder of `mpoxscan cv`.")],
    out: Annotated[Path, typer.Option("--out", help="HTML file to write.")] = Path("report.html"),
) -> None:
    """Write a self-contained HTML report of a cross-validation run."""
    from mpoxscan.evaluation.report import write_report

    console.print(f"wrote {write_report(cv_dir, out)}")


if __name__ == "__main__":
    app()
