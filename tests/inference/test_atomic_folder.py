"""Replacing a folder atomically: the exchange, the fallback, and what killed runs leave."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mpoxscan.inference import atomic_folder
from mpoxscan.inference.atomic_folder import left_old_folder, replacing_folder


def make(folder: Path, **files: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def contents(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(params=["exchange", "two renames"])
def switch_mode(request, monkeypatch):
    if request.param == "two renames":
        monkeypatch.setattr(atomic_folder, "_exchange", lambda first, second: False)
    return request.param


def test_the_new_state_replaces_the_old_and_nothing_is_left_beside_it(tmp_path, switch_mode):
    target = make(tmp_path / "bundle", a="old a", b="old b")
    (target / "sub").mkdir()
    (target / "sub" / "c").write_text("kept")
    with replacing_folder(target, start_from_old=True) as stage:
        assert contents(stage) == {"a": "old a", "b": "old b"}
        assert contents(target) == {"a": "old a", "b": "old b"}  # untouched meanwhile
        (stage / "a").write_text("new a")
    assert contents(target) == {"a": "new a", "b": "old b"}
    assert (target / "sub" / "c").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_an_error_leaves_the_old_folder_as_it_was(tmp_path, switch_mode):
    target = make(tmp_path / "bundle", a="old")
    with pytest.raises(RuntimeError), replacing_folder(target, start_from_old=False) as stage:
        (stage / "a").write_text("half-written")
        raise RuntimeError("killed")
    assert contents(target) == {"a": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_a_new_folder_is_created_with_the_usual_permissions(tmp_path):
    with replacing_folder(tmp_path / "deep" / "bundle", start_from_old=False) as stage:
        (stage / "a").write_text("x")
    target = tmp_path / "deep" / "bundle"
    assert contents(target) == {"a": "x"}
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700


def test_a_symlinked_bundle_folder_is_replaced_behind_its_link(tmp_path):
    real = make(tmp_path / "v1", a="old")
    link = tmp_path / "current"
    link.symlink_to(real, target_is_directory=True)
    with replacing_folder(link, start_from_old=True) as stage:
        (stage / "a").write_text("new")
    assert link.is_symlink() and contents(real) == {"a": "new"}


def dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_what_a_killed_run_left_is_cleaned_up_or_put_back(tmp_path):
    pid = dead_pid()
    target = tmp_path / "bundle"
    make(tmp_path / f".bundle.new-{pid}-abc", a="half-written")
    make(tmp_path / f".bundle.old-{pid}-def", a="old")  # killed between the two renames
    make(tmp_path / f".bundle.new-{os.getppid()}-ghi", a="a live run's stage")
    assert left_old_folder(target) == tmp_path / f".bundle.old-{pid}-def"

    with replacing_folder(target, start_from_old=True) as stage:
        assert contents(stage) == {"a": "old"}  # the old folder was put back first
    assert contents(target) == {"a": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f".bundle.new-{os.getppid()}-ghi",  # its process still runs: left alone
        "bundle",
    ]


def test_saving_over_a_bundle_replaces_all_of_it_but_never_a_folder_of_other_files(tmp_path):
    from inference_support import build_bundle

    from mpoxscan.errors import BundleError
    from mpoxscan.inference.bundle import read_bundle_meta

    bundle = build_bundle(tmp_path / "b")
    (bundle / "evaluation").mkdir()
    (bundle / "evaluation" / "roc.png").write_bytes(b"an old plot")
    build_bundle(bundle, seed=1)  # as train --overwrite does
    assert not (bundle / "evaluation").exists()
    read_bundle_meta(bundle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no staging folder left

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.txt").write_text("years of work")
    with pytest.raises(BundleError, match="would delete them"):
        build_bundle(notes)
    assert (notes / "thesis.txt").read_text() == "years of work"
