"""One run per run directory: an advisory lock held for the run's lifetime.

The lock is `flock` on `<run dir>/.lock`, so the kernel releases it when the process ends in any way (SIGKILL
included): a lock left by a dead run is never in the way. The file also records who holds it (host, pid, start), so
a refused second run can say which one is running. A run that ends removes the file (and the run directory, when
the run created it and left nothing in it: a run refused at its first check leaves no trace).
"""
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from train.errors import UsageError


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._fd, self.created = None, []

    def acquire(self) -> "RunLock":
        self.created = [d for d in [self.path.parent, *self.path.parent.parents] if not d.exists()]   # deepest first
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise UsageError(f"{self.path.parent} is in use by another run ({holder}); wait for it to end, or "
                                 f"pass another --out_dir or --save_weight") from None
            if _same_file(fd, self.path):     # not a file that the previous holder removed as we opened it
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)     # while still held: a waiting run then locks a new file
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
        for d in self.created:                 # the directories this run made, if it left them empty
            try:
                d.rmdir()
            except OSError:
                break

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} on {info['host']}, since {info['since']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"
