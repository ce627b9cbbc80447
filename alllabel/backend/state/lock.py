"""One backend process per state directory."""

from __future__ import annotations

import os
import time
from pathlib import Path


class DirectoryLock:
    """One backend process per state directory: two would drive the same projects and push twice.

    An exclusive ``flock`` on ``<dir>/backend.lock``, released when the process ends (even by a
    crash). A new process waits up to ``wait`` seconds for a previous one to finish exiting."""

    def __init__(self, directory: str | Path, wait: float = 60.0):
        import fcntl
        import logging

        self.path = Path(directory) / "backend.lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+")
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = self.path.read_text().strip() or "?"
                if time.monotonic() >= deadline:
                    self._file.close()
                    raise RuntimeError(
                        f"another alllabel process (pid {holder}) is using the state in {self.path.parent}: stop it first, "
                        "or give this one its own ALLABEL_STATE_DIR (run one gunicorn worker; with a backend running, use "
                        "Start Training in Label Studio rather than 'alllabel prelabel --project')"
                    ) from None
                logging.getLogger("alllabel").warning(
                    "waiting for process %s to release %s", holder, self.path
                )
                time.sleep(0.5)
        self._file.truncate(0)
        self._file.write(str(os.getpid()))
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            self._file.close()  # closing the descriptor releases the lock
