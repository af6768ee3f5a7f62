"""Process-level safety for long stages: one trainer per state folder, no orphaned trainers.

Kept free of heavy imports so that ``medqa train`` can arm ``die_with_parent`` before it spends
seconds importing torch and transformers.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medqa.errors import BusyError


@contextmanager
def exclusive_state(state_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``state_dir`` (a ``.<name>.lock`` file beside it) while training.

    The lock is the kernel's (flock): it goes away with the process, however that dies, so a killed
    trainer never leaves a stale lock, and a second trainer on the same state is refused at once.
    """
    lock_path = state_dir.parent / f".{state_dir.name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise BusyError(
                f"{state_dir} is in use by another `medqa train` (pid {holder}); wait for it to "
                "finish or stop it, then rerun"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent (``dvc repro``, a flow worker) dies.

    Without it, killing only ``dvc`` leaves the trainer running, and the next ``dvc repro`` starts a
    second one. A no-op elsewhere (the state lock still refuses a second trainer).
    """
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
