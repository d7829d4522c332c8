"""The one error path of the command line: messages instead of tracebacks, exit codes."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mpoxscan import cli
from mpoxscan.cli import ExitCode, app

runner = CliRunner()


def run(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def test_version_prints_the_package_version():
    from mpoxscan import __version__

    result = run("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"mpoxscan {__version__}"


def test_a_user_error_is_one_or_two_lines_and_exit_2(tmp_path):
    (tmp_path / "photo.jpg").write_bytes(b"")
    result = run("predict", "--model-dir", tmp_path / "nope", tmp_path)
    assert result.exit_code == ExitCode.USER_ERROR
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("error: No model bundle at")
    assert len(lines) <= 2 and "Traceback" not in result.output


def test_a_real_process_prints_no_traceback_for_a_user_error(tmp_path):
    command = [sys.executable, "-m", "mpoxscan.cli", "export", "--model-dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == ExitCode.USER_ERROR
    assert "Traceback" not in done.stderr and done.stderr.startswith("error: ")


def raise_bug(*args, **kwargs):
    raise TypeError("an unexpected bug")


def test_an_internal_error_says_it_is_a_bug_and_exits_70(monkeypatch, tmp_path):
    monkeypatch.setattr("mpoxscan.inference.onnx_export.export_onnx", raise_bug)
    result = run("export", "--model-dir", tmp_path)
    assert result.exit_code == ExitCode.INTERNAL_ERROR
    assert "internal error: TypeError: an unexpected bug" in result.output
    assert "--debug" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("debug", [("--debug",), ()])
def test_debug_lets_the_exception_through(monkeypatch, tmp_path, debug):
    monkeypatch.setattr("mpoxscan.inference.onnx_export.export_onnx", raise_bug)
    env = {} if debug else {cli.DEBUG_ENV: "1"}
    result = run(*debug, "export", "--model-dir", tmp_path, env=env)
    assert isinstance(result.exception, TypeError)  # the traceback is printed by typer


def _locked(path: Path) -> PermissionError:
    return PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))


@pytest.mark.parametrize(
    ("out", "reason", "hint"),
    [
        ("a-file/rows.csv", "File exists", "a file stands where a folder is needed"),
        ("a-file/sub/rows.jsonl", "Not a directory", "a file stands where a folder is needed"),
        ("a-folder.csv", "Is a directory", "a folder stands where a file is needed"),
        ("locked/rows.csv", "Permission denied", "choose a location you may write to"),
    ],
)
def test_an_unwritable_out_file_is_a_message_not_a_traceback(
    tmp_path, monkeypatch, out, reason, hint
):
    """Each fails before the model loads (``--model-dir`` is not even a bundle). The tests
    run as root, who may write anywhere, so a folder without write permission is played by
    ``os.mkdir`` refusing to make ``locked`` as the kernel would (EACCES)."""
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-folder.csv").mkdir()
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if Path(path).name == "locked":
            raise _locked(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    photo = tmp_path / "photo.jpg"
    from testdata import make_lesion_photo

    make_lesion_photo(positive=True, seed=1).save(photo)
    result = run("predict", "--model-dir", tmp_path, photo, "--out", tmp_path / out)
    assert result.exit_code == ExitCode.USER_ERROR
    message, advice = result.output.splitlines()  # what went wrong, what to do
    assert message.startswith(f"error: {tmp_path}/") and message.endswith(f": {reason}")
    assert advice.startswith(hint)
    assert "Traceback" not in result.output


def test_train_refuses_to_overwrite_a_bundle_without_overwrite(tiny_bundle, tiny_dataset):
    before = sorted(p.name for p in tiny_bundle.iterdir())
    result = run("train", "--data", tiny_dataset, "--out", tiny_bundle)
    assert result.exit_code == ExitCode.USER_ERROR
    assert "--overwrite" in result.output
    assert sorted(p.name for p in tiny_bundle.iterdir()) == before


def _command_names() -> list[str]:
    import typer.main

    return list(typer.main.get_command(app).commands)


#: A help text or option name cut short: "…" (rich), or "..." ending a line after a word
#: (click's short help); "PATHS..." in a usage line and "paths... <list[Path]>" are not cut.
CUT = re.compile(r"…|\w\.\.\.$", re.MULTILINE)


@pytest.mark.parametrize("command", ["", *_command_names()])
def test_help_fits_80_columns_and_lists_the_exit_codes(command):
    result = run(*([command] if command else []), "--help", env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert max(len(line) for line in result.output.splitlines()) <= 80
    text = "\n".join(line for line in result.output.splitlines() if "Usage:" not in line)
    assert not CUT.findall(text), text
    assert "Exit codes: 0 done" in result.output and "3 done, but some files" in result.output


def test_the_command_list_gives_each_command_its_whole_first_sentence():
    import typer.main

    result = run("--help", env={"COLUMNS": "80"})
    listing = " ".join(result.output.split("Commands:")[1].split("Exit codes:")[0].split())
    for name, command in typer.main.get_command(app).commands.items():
        sentence = " ".join(command.help.split("\n\n")[0].split()).split(". ")[0]
        assert f"{name} {sentence}" in listing, name


def test_the_truncation_check_catches_clicks_shortened_help():
    assert CUT.findall("  train  Train a model on a patient-grouped split and save it as a...")
    assert CUT.findall("  --patient-patte…  Regular expression")
    assert not CUT.findall("  paths... <list[Path]>  Image files or folders.  [required]")


def test_train_and_cv_share_one_declaration_of_their_options():
    import typer.main

    command = typer.main.get_command(app)
    ctx = command.make_context("mpoxscan", ["train", "--help"], resilient_parsing=True)

    def options(name):
        return {p.name: p.help for p in command.get_command(ctx, name).params if p.name != "help"}

    train, cv = options("train"), options("cv")
    shared = (set(train) & set(cv)) - {"out"}  # --out means a bundle or a results folder
    assert len(shared) >= 18
    assert all(train[name] and train[name] == cv[name] for name in shared)


@pytest.fixture
def photos(tmp_path):
    from testdata import make_lesion_photo

    folder = tmp_path / "photos"
    folder.mkdir()
    for seed in (1, 2):
        make_lesion_photo(positive=seed == 1, seed=seed).save(folder / f"good-{seed}.jpg")
    return folder


def test_predict_with_nothing_to_score_exits_2(tiny_bundle, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("predict", "--model-dir", tiny_bundle, empty)
    assert result.exit_code == ExitCode.USER_ERROR
    assert f"error: No image files in {empty}" in result.output

    (empty / "notes.jpg").write_text("not a photo")
    result = run("predict", "--model-dir", tiny_bundle, empty, tmp_path / "missing.jpg")
    assert result.exit_code == ExitCode.USER_ERROR
    assert "error: No photo could be scored" in result.output
    assert "2 files could not be read" in result.output


def test_predict_with_some_unreadable_files_counts_them_and_exits_3(tiny_bundle, photos):
    for index in range(5):
        (photos / f"bad-{index}.jpg").write_text("not a photo")
    result = run("predict", "--model-dir", tiny_bundle, photos, "--json")
    assert result.exit_code == ExitCode.PARTIAL
    assert "warning: 5 files could not be read and were left out:" in result.output
    assert "bad-0.jpg, " in result.output and "and 2 more" in result.output
    assert "Traceback" not in result.output


def test_predict_out_counts_unreadable_files_and_exits_3(tiny_bundle, photos, tmp_path):
    (photos / "bad.jpg").write_text("not a photo")
    out = tmp_path / "rows.csv"
    result = run("predict", "--model-dir", tiny_bundle, photos, "--out", out)
    assert result.exit_code == ExitCode.PARTIAL
    assert "2 predicted, 1 unreadable" in result.output
    rerun = run("predict", "--model-dir", tiny_bundle, photos, "--out", out)
    assert rerun.exit_code == ExitCode.OK  # everything already done: nothing failed this time
    assert "0 predicted, 0 unreadable, 3 already done" in rerun.output


def test_predict_gives_band_and_threshold_in_json_and_table(tiny_bundle, photos):
    from mpoxscan.inference.bundle import read_bundle_meta

    threshold = read_bundle_meta(tiny_bundle).threshold
    result = run("predict", "--model-dir", tiny_bundle, photos, "--json")
    import json

    rows = json.loads(result.output)
    assert {row["band"] for row in rows} <= {"low", "uncertain", "high"}
    assert all(row["threshold"] == threshold for row in rows)
    table = run("predict", "--model-dir", tiny_bundle, photos).output
    assert f"positive at {threshold:.1%} or more" in table
    assert f"{rows[0]['probability']:.1%}" in table  # percentages, as on the web page
    assert rows[0]["band"] in table


def test_predict_follows_symlinked_folders_once(tiny_bundle, photos, tmp_path):
    import json

    top = tmp_path / "top"
    top.mkdir()
    (top / "linked").symlink_to(photos, target_is_directory=True)
    (photos / "loop").symlink_to(photos, target_is_directory=True)  # a cycle
    result = run("predict", "--model-dir", tiny_bundle, top, "--json")
    assert result.exit_code == ExitCode.OK, result.output
    files = [row["file"] for row in json.loads(result.stdout)]
    assert sorted(Path(f).name for f in files) == ["good-1.jpg", "good-2.jpg"]
    assert "not walking" in result.output and "already walked" in result.output


def test_evaluate_on_a_folder_of_unreadable_files_is_a_message(tiny_bundle, tmp_path):
    data = tmp_path / "data"
    for name in ("Monkey Pox", "Others"):
        (data / name).mkdir(parents=True)
        for index in range(4):
            (data / name / f"P{index}_1.jpg").write_text("x")
    result = run("evaluate", "--model-dir", tiny_bundle, "--data", data)
    assert result.exit_code == ExitCode.USER_ERROR
    assert "error: None of the 8 photos" in result.output
    assert "warning: 8 files could not be read" in result.output
    assert "Traceback" not in result.output and len(result.output.splitlines()) <= 5

    out = tmp_path / "bundle"
    for command in ("train", "cv"):
        result = run(
            *(command, "--data", data, "--out", out, "--model", "seed-cnn", "--epochs", "1"),
            *(("--folds", "2") if command == "cv" else ()),
        )
        assert result.exit_code == ExitCode.USER_ERROR, result.output
        assert "nothing to train or test on" in result.output
        assert "UserWarning" not in result.output and len(result.output.splitlines()) <= 6


def test_the_licence_file_matches_pyproject():
    import tomllib

    root = Path(__file__).resolve().parents[1]
    licence = tomllib.loads((root / "pyproject.toml").read_text())["project"]["license"]
    assert licence == {"text": "MIT"}
    assert (root / "LICENSE").read_text().startswith("MIT License")
    assert "research and education use only" in (root / "README.md").read_text()


def test_every_row_of_the_bad_input_table_names_tests_that_exist():
    root = Path(__file__).resolve().parents[1]
    table = (root / "docs" / "cli.md").read_text().split("## Bad inputs", 1)[1]
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]  # not the header
    assert len(rows) >= 25
    for row in rows:
        tests = re.findall(r"`([\w/]+\.py)::(\w+)", row.rsplit("|", 2)[1])
        assert tests, f"docs/cli.md: no test named in its last column: {row[:60]}"
        for path, name in tests:
            source = (root / "tests" / path).read_text()
            assert f"def {name}(" in source, f"docs/cli.md names {path}::{name}"
