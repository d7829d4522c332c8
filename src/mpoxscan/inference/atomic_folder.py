"""Replace a folder in one atomic step, so a reader (or a crash) sees the old or the new one.

:func:`replacing_folder` builds the new state in a hidden staging folder beside the target
(``.NAME.new-PID-XXXX``, on the same file system), flushes every file to disk, then switches:

- On Linux the staging folder and the target are exchanged with ``renameat2(RENAME_EXCHANGE)``
  (one system call: there is no moment without a complete folder at the target path), and
  the old state, now in the staging folder, is deleted.
- Where exchange is not supported (other systems, some file systems) the target is first
  renamed to ``.NAME.old-PID-XXXX``, then the staging folder to the target. A crash between
  the two leaves the old folder under that name; the next :func:`replacing_folder` for the
  same target renames it back before it starts.

Staging and old folders left by a killed process (its PID no longer runs) are deleted the next
time the same target is replaced. A killed run therefore leaves the target as it was, or as
the finished run would have left it; it never leaves a mix.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Kinds of sibling folder :func:`replacing_folder` makes: the new state, the old one.
STAGE_KINDS = ("new", "old")

#: ``renameat2`` arguments (linux/fcntl.h, linux/fs.h).
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@contextmanager
def replacing_folder(target: str | Path, *, start_from_old: bool) -> Iterator[Path]:
    """Yield a staging folder that becomes ``target`` when the block ends without an error.

    Args:
        target: the folder to replace (created when it does not exist). A symbolic link is
            followed: the folder it points to is replaced.
        start_from_old: copy the target's files (and sub-folders) into the staging folder
            first, to change a few of them; ``False`` starts from an empty folder.

    Yields:
        The staging folder: write the complete new state in it.

    Raises:
        OSError: the staging folder cannot be made or the switch fails (the target is then
            left as it was).
    """
    target = Path(target)
    if target.is_symlink():
        target = target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted(target)
    stage = Path(tempfile.mkdtemp(prefix=_sibling_prefix(target, "new"), dir=target.parent))
    try:
        if start_from_old and target.is_dir():
            _copy_contents(target, stage)
        yield stage
        _fsync_tree(stage)
        os.chmod(stage, _folder_mode(target))
        _switch(stage, target)
    finally:
        # After an exchange the staging folder holds the old state; after an error, the new.
        shutil.rmtree(stage, ignore_errors=True)


def recover_interrupted(target: Path) -> None:
    """Undo what killed runs left beside ``target``: put back an old folder whose replacement
    never arrived, delete the staging folders of processes that no longer run."""
    if not target.parent.is_dir():
        return
    for sibling in sorted(target.parent.iterdir()):
        kind, pid = _parse_sibling(target, sibling.name)
        if kind is None or _running(pid):
            continue
        if kind == "old" and not target.exists():
            os.rename(sibling, target)
        else:
            shutil.rmtree(sibling, ignore_errors=True)


def left_old_folder(target: Path) -> Path | None:
    """The old folder a run interrupted between its two renames left beside a missing
    ``target`` (only where the atomic exchange is unsupported), or ``None``."""
    if target.exists() or not target.parent.is_dir():
        return None
    for sibling in sorted(target.parent.iterdir()):
        if _parse_sibling(target, sibling.name)[0] == "old":
            return sibling
    return None


def _sibling_prefix(target: Path, kind: str) -> str:
    return f".{target.name}.{kind}-{os.getpid()}-"


def _parse_sibling(target: Path, name: str) -> tuple[str | None, int]:
    for kind in STAGE_KINDS:
        prefix = f".{target.name}.{kind}-"
        if name.startswith(prefix):
            pid = name[len(prefix) :].split("-", 1)[0]
            if pid.isdigit():
                return kind, int(pid)
    return None, 0


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _copy_contents(source: Path, stage: Path) -> None:
    for entry in source.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, stage / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, stage / entry.name, follow_symlinks=False)


def _fsync_tree(folder: Path) -> None:
    """Flush every file and folder under ``folder`` to disk (folders last)."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                _fsync(path, os.O_RDONLY)
        _fsync(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync(path: str | Path, flags: int) -> None:
    try:
        descriptor = os.open(path, flags)
    except OSError:
        return  # e.g. folders cannot be opened on some systems: nothing to flush there
    try:
        os.fsync(descriptor)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.EBADF):  # not supported for this object
            raise
    finally:
        os.close(descriptor)


def _folder_mode(target: Path) -> int:
    if target.is_dir():
        return target.stat().st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def _switch(stage: Path, target: Path) -> None:
    """Make ``stage`` the target; the old target's content ends in ``stage`` (to delete)."""
    if not target.exists():
        os.rename(stage, target)
        os.mkdir(stage)  # the caller deletes it, as after an exchange
    elif not _exchange(stage, target):
        old = Path(tempfile.mkdtemp(prefix=_sibling_prefix(target, "old"), dir=target.parent))
        os.rmdir(old)
        os.rename(target, old)
        os.rename(stage, target)
        os.rename(old, stage)
    _fsync(target.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); ``False`` where that is unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False  # a C library without renameat2 (glibc < 2.28, some others)
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    result = renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))
