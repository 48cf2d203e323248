"""One training run per workdir: a lock file naming the host and PID of the run that holds it.

Two runs started on one workdir would both write its checkpoints, each overwriting the other's.
`WorkdirLock` holds `<workdir>/run.lock` for the life of a training run (process 0 of a
multi-process run): an exclusive `flock` on the file, which holds `{"host", "pid", "started",
"pid_start", "boot_id"}`: `pid_start` is the process's start time in clock ticks after boot
(field 22 of `/proc/<pid>/stat`) and `boot_id` the kernel's id of this boot, which together tell
the process that wrote the lock from an unrelated one that was later given the same PID.

  * A second run on a live workdir is refused with `WorkdirLockedError`, naming the holder.
  * A run that died (killed, crashed, its machine rebooted) holds nothing: the kernel drops a
    dead process's `flock`, so the next run takes the lock over (and logs whose it was).
  * Where `flock` is not shared between the hosts that see the workdir (some network
    filesystems), the contents still name the holder: a lock written on this host by a process
    that is still alive is refused even when the `flock` was granted. A PID that is alive but
    started at another time (or in another boot) than the lock's writer is a reused PID: the
    lock is stale and taken over. (Without /proc, as on macOS, a live PID is taken as the owner.)
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


def process_start_ticks(pid: int) -> int | None:
    """Start time of process `pid` in clock ticks after boot (/proc/<pid>/stat field 22), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    # Field 2 (the command name) is in parentheses and may hold spaces: count after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])  # Fields 3.. here; field 22 is the 20th of them.
    except (IndexError, ValueError):
        return None


def boot_id() -> str | None:
    """This boot's id (/proc/sys/kernel/random/boot_id), or None where there is none."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _alive_here(pid: int, pid_start: int | None = None, boot: str | None = None) -> bool:
    """Whether the process that wrote a lock as `pid` (started at `pid_start` ticks in boot `boot`)
    still runs on this host: `pid` exists and, where both are known, started at that time in this boot."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Exists, owned by another user.
        pass
    if boot is not None and boot_id() is not None and boot != boot_id():
        return False  # Written before a reboot: every PID since is another process.
    if pid_start is not None:
        now = process_start_ticks(pid)
        if now is not None and now != pid_start:
            return False  # The PID was reused by a process started later.
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
            owner = int(previous["pid"])
            if _alive_here(owner, previous.get("pid_start"), previous.get("boot_id")):
                os.close(fd)  # flock not honoured here, but its owner lives.
                raise WorkdirLockedError(self._refusal(previous))
        if previous:
            logging.warning("Taking over the stale lock of %s in %s.", _describe(previous), self.path)
        record = {"host": host, "pid": pid, "started": time.time()}
        record.update(pid_start=process_start_ticks(pid), boot_id=boot_id())
        record = json.dumps(record).encode()
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
