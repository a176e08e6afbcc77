"""An inter-process build lock that cannot outlive its holder.

It is an advisory ``flock`` on a file: the kernel drops it when the holding process exits, however it exits
(a killed build never leaves a lock that hangs the next process). Waiting is bounded by ``MOEJIT_LOCK_TIMEOUT``
seconds (default 3600) and the error names the lock file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Callable, Iterator

from moejit.errors import MoejitError

DEFAULT_TIMEOUT_S = 3600.0


def lock_timeout() -> float:
    return float(os.environ.get("MOEJIT_LOCK_TIMEOUT", DEFAULT_TIMEOUT_S))


@contextlib.contextmanager
def file_lock(path: Path, timeout: float | None = None, on_wait: Callable[[Path], None] | None = None,
              poll_s: float = 0.2) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the ``with`` body.

    ``on_wait(path)`` is called once if the lock is busy, so callers can say whom they are waiting for.
    """
    timeout = lock_timeout() if timeout is None else timeout
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + timeout
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced and on_wait is not None:
                    on_wait(path)
                    announced = True
                if time.monotonic() >= deadline:
                    raise MoejitError(
                        f"timed out after {timeout:.0f} s waiting for the build lock {path} (another process is "
                        "building the same module; if none is, delete the file, or raise MOEJIT_LOCK_TIMEOUT)"
                    ) from None
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
