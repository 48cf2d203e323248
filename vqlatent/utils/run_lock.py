"""One training run per workdir: a lock file naming the host and PID of the run that holds it.

Two runs started on one workdir would both write its checkpoints, each overwriting the other's.
`WorkdirLock` holds `<workdir>/run.lock` for the life of a training run (process 0 of a
multi-process run): an exclusive `flock` on the file, which holds `{"host", "pid", "started"}`.

  * A second run on a live workdir is refused with `WorkdirLockedError`, naming the holder.
  * A run that died (killed, crashed, its machine rebooted) holds nothing: the kernel drops a
    dead process's `flock`, so the next run takes the lock over (and logs whose it was).
  * Where `flock` is not shared between the hosts that see the workdir (some network
    filesystems), the contents still name the holder: a lock written on this host by a process
    that is still alive is refused even when the `flock` was granted.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from typing import Any

from absl import logging

from vqlatent.utils.errors import UserError

LOCK_NAME = "run.lock"


class WorkdirLockedError(UserError):
    """Another live run holds the workdir."""


def _alive_here(pid: int) -> bool:
    """Whether process `pid` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Exists, owned by another user.
        return True
    return True


def _read(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another run (its lock file is empty or unreadable)"
    started = holder.get("started")
    when = f", started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}" if started else ""
    return f"PID {holder.get('pid')} on host {holder.get('host')}{when}"


class WorkdirLock:
    """`with WorkdirLock(workdir):` holds the workdir for this process (see module docstring)."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_NAME)
        self._fd: int | None = None

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise WorkdirLockedError(self._refusal(_read(self.path))) from None
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break  # Locked the file that is at the path now (not one a releasing run removed).
            except FileNotFoundError:
                pass
            os.close(fd)
        previous = _read(self.path)
        host, pid = socket.gethostname(), os.getpid()
        if previous.get("host") == host and previous.get("pid") not in (None, pid):
            if _alive_here(int(previous["pid"])):  # flock not honoured here, but its owner lives.
                os.close(fd)
                raise WorkdirLockedError(self._refusal(previous))
        if previous:
            logging.warning("Taking over the stale lock of %s in %s.", _describe(previous), self.path)
        record = json.dumps({"host": host, "pid": pid, "started": time.time()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        os.fsync(fd)
        self._fd = fd

    def _refusal(self, holder: dict[str, Any]) -> str:
        workdir = os.path.dirname(self.path)
        return (
            f"Workdir {workdir} is in use by {_describe(holder)}: one run at a time writes a "
            f"workdir's checkpoints. Wait for that run to finish or stop it, or use another "
            f"--workdir. If no such run exists, delete {self.path}."
        )

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # Still holding the flock: nobody holds this file after us.
        except FileNotFoundError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
