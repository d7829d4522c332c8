"""The ``mpoxscan`` command line: parses options, calls the package, prints the result.

Heavy libraries (torch, onnxruntime, fastapi) are imported inside each command, so that
``mpoxscan --help`` answers at once.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from mpoxscan.inference.batch import BatchSummary, PredictionEngine

app = typer.Typer(
    help="Screen photos of skin lesions for mpox: train, evaluate, explain and serve models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()
err_console = Console(stderr=True)
#: The per-fold columns ``mpoxscan cv`` prints (all measures follow in the summary table).
CV_FOLD_COLUMNS = ("accuracy", "sensitivity", "specificity", "roc_auc")

DataOpt = Annotated[
    Path, typer.Option("--data", help="Dataset folder (DIR/<class> or DIR/Train|Val|Test/<class>).")
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
    """The running command as a user would retype it: arguments, and options not at default."""
    words = ["mpoxscan", ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.param_type_name == "argument":
            words.extend(str(v) for v in (value if isinstance(value, list | tuple) else [value]))
        elif value is not None and value != param.default:
            flag = max(param.opts, key=len)
            if getattr(param, "is_flag", False):
                words.append(flag if value else (param.secondary_opts or [flag])[0])
            else:
                words.extend([flag, str(value)])
    return shlex.join(words)


def _fail(error: Exception) -> None:
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(str(error))}")
    raise typer.Exit(code=2)


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
HeadOpt = Annotated[
    HeadChoice | None,
    typer.Option(help="frozen-features head: logreg (C chosen on validation) or linear."),
]
ViewsOpt = Annotated[
    int | None,
    typer.Option(
        "--views", help="frozen-features: views per training photo (photo, mirror, augmented)."
    ),
]
TtaOpt = Annotated[
    bool | None,
    typer.Option("--tta/--no-tta", help="frozen-features: average photo and mirror at test time."),
]
CacheOpt = Annotated[
    Path | None,
    typer.Option("--feature-cache", help="frozen-features: folder to keep embeddings in."),
]
TailOpt = Annotated[
    int | None,
    typer.Option(
        help="frozen-features: also fine-tune the last N backbone blocks on cached inputs."
    ),
]
TrainableOpt = Annotated[
    str | None,
    typer.Option(help="finetune: first backbone parameter prefix to train (partial fine-tuning)."),
]
PatienceOpt = Annotated[
    int | None, typer.Option(help="Early-stopping patience in epochs (default: the recipe's).")
]
TrainConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--train-config", help="JSON file of TrainConfig fields (flags given here override it)."
    ),
]


def _configs(options: Mapping[str, Any]):
    """The data, model and training configurations from the options of ``train`` or ``cv``
    (``ctx.params``; a ``--train-config`` JSON file is the base the flags override)."""
    from mpoxscan.training.config import DataConfig, ModelConfig, TrainConfig

    data_cfg = DataConfig(
        data_dir=str(options["data"]),
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
def train(
    ctx: typer.Context,
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Bundle directory to write.")],
    model: ModelOpt = "efficientnet-lite0",
    epochs: Annotated[
        int | None, typer.Option(help="Maximum epochs (early stopping may end sooner).", min=1)
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Seed for the split, initialisation and augmentation.")
    ] = 0,
    weights: Annotated[
        Path | None, typer.Option(help="ImageNet weights file for vgg16 (.h5 Keras notop or .pth).")
    ] = None,
    positive: PositiveOpt = None,
    multiclass: Annotated[
        bool, typer.Option(help="One output per class instead of positive vs rest.")
    ] = False,
    patient_pattern: PatientOpt = None,
    image_size: Annotated[
        int | None, typer.Option(help="Input size (default: the model's).")
    ] = None,
    target_sensitivity: Annotated[
        float, typer.Option(help="Sensitivity the decision threshold aims for on validation data.")
    ] = 0.95,
    recipe: RecipeOpt = RecipeChoice.auto,
    head: HeadOpt = None,
    views: ViewsOpt = None,
    tta: TtaOpt = None,
    feature_cache: CacheOpt = None,
    tail_blocks: TailOpt = None,
    trainable_from: TrainableOpt = None,
    patience: PatienceOpt = None,
    train_config: TrainConfigOpt = None,
) -> None:
    """Train a model on a patient-grouped split and save it as a bundle."""
    from mpoxscan.errors import MpoxscanError
    from mpoxscan.evaluation.tables import metrics_table
    from mpoxscan.training.train import train_bundle

    try:
        configs = _configs(ctx.params)  # the options above, by name
        result = train_bundle(*configs, out, command=_command_line(ctx))
    except (MpoxscanError, KeyError, FileNotFoundError, ValueError) as error:
        _fail(error)
    console.print(
        metrics_table(
            result.test_metrics, title=f"Test split ({model}, best epoch {result.best_epoch})"
        )
    )
    console.print(f"Bundle written to [bold]{result.bundle_dir}[/]")


@app.command()
def evaluate(
    model_dir: BundleOpt,
    data: DataOpt,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the metrics as JSON here.")
    ] = None,
    plots_dir: Annotated[
        Path | None, typer.Option("--plots", help="Folder for the confusion-matrix and ROC PNGs.")
    ] = None,
) -> None:
    """Measure a bundle on a dataset's test split (or on all of it when it has no split)."""
    from mpoxscan.errors import MpoxscanError
    from mpoxscan.evaluation.evaluate import evaluate_bundle
    from mpoxscan.evaluation.tables import metrics_table

    try:
        report = evaluate_bundle(model_dir, data, plots_dir=plots_dir or model_dir / "evaluation")
    except MpoxscanError as error:
        _fail(error)
    console.print(metrics_table(report.metrics, title=f"Evaluation on {report.description}"))
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
    from mpoxscan.errors import MpoxscanError
    from mpoxscan.inference.batch import BatchConfig, iter_image_files
    from mpoxscan.inference.engines import open_engine

    try:
        predictor_engine = open_engine(
            model_dir,
            engine=engine.value,
            config=BatchConfig(batch_size=batch_size),
            ray_address=ray_address,
        )
        if out is not None:
            summary = _predict_with_progress(predictor_engine, paths, out)
        else:
            rows = [row for batch in predictor_engine(iter_image_files(paths)) for row in batch]
    except (MpoxscanError, ValueError) as error:
        _fail(error)
    except KeyboardInterrupt:
        err_console.print("interrupted: run the same command again to resume")
        raise typer.Exit(code=130) from None
    if out is not None:
        console.print(
            f"wrote {summary.out}: {summary.predicted} predicted, {summary.failed} unreadable, "
            f"{summary.skipped} already done; {summary.images_per_second:.1f} images/s"
        )
    elif as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        console.print(_predictions_table(rows))


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
            done = summary.predicted + summary.failed + summary.skipped
            progress.update(task, completed=done, rate=summary.images_per_second)

        return predict_to_file(engine, paths, out, on_progress=show)


def _predictions_table(rows: list[dict]):
    from rich.table import Table

    table = Table(title="Predictions")
    for column in ("file", "label", "probability", "note"):
        table.add_column(column)
    for row in rows:
        probability = row.get("probability")
        table.add_row(
            row["file"],
            row.get("label") or "-",
            "-" if probability is None else f"{probability:.3f}",
            row.get("error") or "",
        )
    return table


@app.command()
def explain(
    model_dir: BundleOpt,
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the heat-map PNGs.")] = Path(
        "heatmaps"
    ),
) -> None:
    """Write a Grad-CAM heat map over each photo (what the model looked at), with its result."""
    from rich.table import Table

    from mpoxscan.errors import MpoxscanError
    from mpoxscan.inference.batch import iter_image_files
    from mpoxscan.inference.heatmaps import write_heatmaps
    from mpoxscan.inference.predictor import Predictor

    try:
        predictor = Predictor.load(model_dir)
    except MpoxscanError as error:
        _fail(error)
    table = Table("mpox", "band")
    table.add_column("photo", overflow="fold", ratio=1)
    table.add_column("heat map or reason", overflow="fold", ratio=1)
    for item in write_heatmaps(predictor, iter_image_files(paths), out):
        assessment = item.assessment
        if assessment is None:
            table.add_row("", "", str(item.path), f"unreadable: {item.error}")
        elif assessment.prediction is None:
            reasons = "; ".join(reason.message for reason in assessment.reasons)
            table.add_row("", "retake", str(item.path), reasons)
        else:
            prediction = assessment.prediction
            probability = "" if prediction.probability is None else f"{prediction.probability:.1%}"
            table.add_row(probability, prediction.band or "", str(item.path), str(item.heatmap))
    console.print(table)


@app.command()
def samples(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="PNG file to write.")],
    seed: int = 0,
) -> None:
    """Write the tutorial's 4x3 grid of sample photos with their class names."""
    from mpoxscan.errors import MpoxscanError
    from mpoxscan.evaluation.sample_grid import write_samples_grid

    try:
        path = write_samples_grid(data, out, seed=seed)
    except MpoxscanError as error:
        _fail(error)
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
) -> None:
    """Serve the screening web page and the JSON API."""
    from mpoxscan.errors import MpoxscanError
    from mpoxscan.web.app import serve as serve_app

    try:
        serve_app(
            model_dir,
            host=host,
            port=port,
            workers=workers,
            micro_batch_max_size=micro_batch_max_size,
            micro_batch_max_wait_ms=micro_batch_max_wait_ms,
            max_concurrent_predictions=max_concurrent_predictions,
        )
    except MpoxscanError as error:
        _fail(error)


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
    from mpoxscan.errors import MpoxscanError
    from mpoxscan.inference.keras_import import import_keras_bundle

    try:
        bundle = import_keras_bundle(
            h5_file,
            out,
            classes=[c.strip() for c in classes.split(",")],
            positive=positive,
            command=_command_line(ctx),
        )
    except (MpoxscanError, OSError, KeyError) as error:
        _fail(error)
    console.print(f"Bundle written to [bold]{bundle}[/]")


@app.command()
def export(
    model_dir: BundleOpt,
    fmt: Annotated[str, typer.Option("--format", help="Export format.")] = "onnx",
) -> None:
    """Export a bundle's model to ONNX (with a parity check against PyTorch)."""
    from mpoxscan.errors import MpoxscanError
    from mpoxscan.inference.onnx_export import export_onnx

    if fmt != "onnx":
        _fail(ValueError(f"unknown format {fmt!r}; only 'onnx' is supported"))
    try:
        report = export_onnx(model_dir)
    except MpoxscanError as error:
        _fail(error)
    console.print(
        f"wrote {report.path}; max |p_onnx - p_torch| = {report.max_abs_diff:.2e} "
        f"over {report.n_samples} samples",
        soft_wrap=True,
    )


@app.command()
def cv(
    ctx: typer.Context,
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Folder for the fold results.")] = Path(
        "runs/cv"
    ),
    model: ModelOpt = "efficientnet-lite0",
    folds: Annotated[int, typer.Option(help="Number of patient-grouped folds.", min=2)] = 5,
    repeats: Annotated[int, typer.Option(help="Repeats with reshuffled folds.", min=1)] = 1,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs per fold.", min=1)] = None,
    seed: int = 0,
    weights: Annotated[Path | None, typer.Option(help="ImageNet weights file for vgg16.")] = None,
    positive: PositiveOpt = None,
    multiclass: bool = False,
    patient_pattern: PatientOpt = None,
    image_size: Annotated[
        int | None, typer.Option(help="Input size (default: the model's).")
    ] = None,
    target_sensitivity: float = 0.95,
    recipe: RecipeOpt = RecipeChoice.auto,
    head: HeadOpt = None,
    views: ViewsOpt = None,
    tta: TtaOpt = None,
    feature_cache: CacheOpt = None,
    tail_blocks: TailOpt = None,
    trainable_from: TrainableOpt = None,
    patience: PatienceOpt = None,
    train_config: TrainConfigOpt = None,
) -> None:
    """Cross-validate a recipe with patient-grouped, stratified folds."""
    from mpoxscan.errors import MpoxscanError
    from mpoxscan.evaluation.tables import cv_summary_table, folds_table
    from mpoxscan.training.cv import run_cv

    try:
        configs = _configs(ctx.params)  # the options above, by name
        summary = run_cv(*configs, out, folds=folds, repeats=repeats, command=_command_line(ctx))
    except (MpoxscanError, KeyError, FileNotFoundError, ValueError) as error:
        _fail(error)
    per_fold = {key: summary["mean_std"][key] for key in CV_FOLD_COLUMNS}
    console.print(folds_table(summary["folds"], per_fold, with_mean=False))
    console.print(cv_summary_table(summary["mean_std"], summary["pooled"], len(summary["folds"])))
    console.print(f"wrote {out / 'summary.json'} and {out / 'oof.csv'}", soft_wrap=True)


@app.command("attach-cv")
def attach_cv(
    model_dir: BundleOpt,
    cv_dir: Annotated[Path, typer.Option("--cv-dir", help="The --out folder of mpoxscan cv.")],
) -> None:
    """Record a cross-validation of the bundle's own recipe and data in its model card."""
    from mpoxscan.errors import MpoxscanError
    from mpoxscan.evaluation.cv_card import attach_cv as attach

    try:
        meta = attach(model_dir, cv_dir)
    except MpoxscanError as error:
        _fail(error)
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
    data: DataOpt,
    against: Annotated[Path | None, typer.Option(help="A second dataset to compare with.")] = None,
    near_threshold: Annotated[
        int, typer.Option(help="Largest perceptual-hash distance counted as a near-duplicate.")
    ] = 6,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Also write the full report as JSON; '-' prints it instead."),
    ] = None,
) -> None:
    """Audit a dataset: unreadable files, duplicates, leaks across splits; exits 1 on a leak."""
    from mpoxscan.data.audit import audit_dataset
    from mpoxscan.errors import MpoxscanError
    from mpoxscan.evaluation.tables import audit_table

    try:
        report = audit_dataset(data, against=against, near_threshold=near_threshold)
    except MpoxscanError as error:
        _fail(error)
    payload = report.to_dict()
    if json_out == Path("-"):
        console.print_json(json.dumps(payload))
    else:
        console.print(audit_table(payload))
        if json_out:
            json_out.write_text(json.dumps(payload, indent=2))
            console.print(f"wrote {json_out}", soft_wrap=True)
    if report.has_leaks:
        err_console.print("[bold red]leak:[/] photos or patients straddle the splits (see above)")
        raise typer.Exit(code=1)


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
