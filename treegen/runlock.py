"""One process per run: an advisory lock on ``<run folder>/.lock``.

Two processes on one run would both reserve against the same caps from their own ledgers and
overspend. The lock is ``flock``: the kernel drops it when its process ends, however it ends,
so a lock left by a killed process is taken over with no manual step.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from treegen.errors import RunLockedError

LOCK_NAME = ".lock"


class RunLock:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLockedError(
                f"{self.path.parent} is being worked on by process {holder}. One process per run: wait for it "
                f"to finish, or stop it (kill {holder}) and then `treegen resume {self.path.parent}`."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
