"""Keep the last lines a stage writes while passing them through unchanged.

DVC starts a stage's command with this process's stdout and stderr and keeps none of its output, so
the stage's `error:` line (the message of a failed task and flow run) can only be seen here, at the
file-descriptor level, below Python's sys.stdout and sys.stderr.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Captured:
    """The last lines written to a file descriptor, and how many lines were written in all."""

    lines: deque[str]
    count: int = 0

    def since(self, count: int) -> list[str]:
        """The lines written after ``count`` lines had been (as many as are kept)."""
        new = self.count - count
        return list(self.lines)[-new:] if new > 0 else []


@contextmanager
def tee_fd(fd: int, keep: int = 200) -> Iterator[Captured]:
    """Pass everything written to ``fd`` through unchanged while keeping its last ``keep`` lines."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(fd)
    read_end, write_end = os.pipe()
    os.dup2(write_end, fd)
    os.close(write_end)
    captured = Captured(deque(maxlen=keep))

    def pump() -> None:
        with os.fdopen(read_end, "rb") as source:
            for raw in source:
                os.write(saved, raw)
                captured.lines.append(raw.decode(errors="replace").rstrip()[-500:])
                captured.count += 1

    reader = threading.Thread(target=pump, name=f"tee-fd{fd}", daemon=True)
    reader.start()
    try:
        yield captured
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved, fd)  # drops this process's last write end of the pipe: the reader gets EOF
        reader.join(timeout=10)
        if not reader.is_alive():  # a stray grandchild may still hold the pipe: keep `saved` for it
            os.close(saved)
