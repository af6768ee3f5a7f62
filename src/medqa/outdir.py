"""Stage output folders: written whole or not at all (``stage_output_dir``), and what killed runs left
beside them cleaned up. Every stage that writes a folder (validate, tokenize) goes through here.
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from medqa.fileio import atomic_dir


def _unheld(folder: Path) -> bool:
    """Whether no process holds a lock on ``folder`` (``stage_output_dir`` holds one on its temp
    folder until the rename): such a temp folder belongs to a run that was killed."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False  # gone already, or not ours to read
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing releases a lock taken here


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temp_dirs(path: Path) -> list[Path]:
    """Remove what killed runs writing ``path`` left beside it, and return it: ``.<name>.tmp-*``
    temp folders no live process holds a lock on, and ``.<name>.old-<pid>`` folders of a process
    that is gone (the previous output, moved aside for the swap: put back if ``path`` is missing,
    as the last good output). Other outputs' temp folders are never touched."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    removed = []
    for f in sorted(path.parent.glob(f".{glob.escape(path.name)}.*")):
        if not f.is_dir() or f.is_symlink():
            continue
        kind, _, pid = f.name[len(path.name) + 2 :].partition("-")
        orphaned_old = kind == "old" and pid.isdigit() and not _pid_alive(int(pid))
        if orphaned_old and not path.exists():
            os.replace(f, path)
        elif orphaned_old or (kind == "tmp" and _unheld(f)):
            shutil.rmtree(f, ignore_errors=True)
            removed.append(f)
    return removed


@contextmanager
def stage_output_dir(path: Path) -> Iterator[Path]:
    """``atomic_dir`` for a stage's output folder, after removing what killed runs left beside it.

    The temp folder is locked (flock, which dies with the process) from just after it is made until
    it has been renamed into place, so a run cleaning up never removes a live run's temp folder (but
    for the instant between mkdtemp and flock, which only two runs writing one output at once meet).
    """
    remove_stale_temp_dirs(path)
    fds: list[int] = []

    def close_all() -> None:
        for fd in fds:
            os.close(fd)

    with ExitStack() as stack:
        stack.callback(close_all)  # runs last: after the rename
        tmp = stack.enter_context(atomic_dir(path))
        fds.append(os.open(tmp, os.O_RDONLY))
        fcntl.flock(fds[0], fcntl.LOCK_EX)
        yield tmp
