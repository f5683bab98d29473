"""One run per workdir: a lock file that works on local disks and on gs:// buckets.

Process 0 of a run holds ``WORKDIR/run.lock``, a JSON record of its owner (host, pid, the pid's
start time, a random token) and a heartbeat time it rewrites every ``heartbeat_s`` seconds.
Buckets have no ``flock``, so the lock is this file, and a launch decides from its content:

- no lock, or one released by a clean exit or SIGTERM: take it;
- the owner is on this host and its process is gone (``kill -9``, a crash; a pid reused by
  another process has another start time): take it at once;
- the owner is on another host and its heartbeat is older than ``stale_s``: take it (that
  host died without releasing);
- otherwise a live run holds the workdir: refuse (``WorkdirLocked``), naming it.

Taking it writes our record and reads it back ``settle_s`` later: of two launches that found
the lock free at the same moment, only the one whose record is there goes on. A new lock on a
local disk is created with ``O_EXCL``, which needs no waiting. The lock is released (the file
deleted, if still ours) when ``release`` runs: at the end of the run, on an error and when a
SIGTERM stops the run.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from absl import logging
from etils import epath

from ramen_jax.training.failures import RunError

LOCK_FILE = "run.lock"


class WorkdirLocked(RunError):
    """Another live run holds the workdir."""


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    return started is None or _process_start(pid) in (None, started)


class WorkdirLock:
    def __init__(
        self,
        workdir: str,
        *,
        heartbeat_s: float = 20.0,
        stale_s: float = 120.0,
        settle_s: float | None = None,
    ):
        self.remote = "://" in workdir
        self.path = epath.Path(workdir) / LOCK_FILE
        self.heartbeat_s = heartbeat_s
        self.stale_s = stale_s
        self.settle_s = (2.0 if self.remote else 0.5) if settle_s is None else settle_s
        self.token = uuid.uuid4().hex
        self.record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_started": _process_start(os.getpid()),
            "token": self.token,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the file ------------------------------------------------------------------------

    def read(self) -> dict | None:
        """The lock's record, None if there is none, {} if it cannot be parsed."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            record = json.loads(text)
        except ValueError:
            return {}
        return record if isinstance(record, dict) else {}

    def _write(self, *, exclusive: bool) -> bool:
        text = json.dumps({**self.record, "heartbeat": time.time()})
        if self.remote:  # an object write is atomic: readers see the old or the new record
            self.path.write_text(text)
            return True
        if exclusive:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return True
        partial = f"{self.path}.{self.token}"
        with open(partial, "w") as f:
            f.write(text)
        os.replace(partial, self.path)
        return True

    # -- the rule ------------------------------------------------------------------------

    def holder(self, record: dict | None) -> str | None:
        """Who holds the workdir according to ``record``, or None when it is free to take."""
        if not record or "host" not in record:
            return None
        age = time.time() - float(record.get("heartbeat", 0))
        who = f"host {record['host']} pid {record.get('pid')} (since {record.get('since')})"
        if record["host"] == socket.gethostname():
            if _alive(int(record.get("pid", -1)), record.get("pid_started")):
                return f"{who}, a live process on this host"
            return None
        if age > self.stale_s:
            return None
        return (
            f"{who}, heartbeat {age:.0f} s ago; a lock whose heartbeat is older than "
            f"{self.stale_s:.0f} s is taken over"
        )

    def acquire(self) -> None:
        for _ in range(3):
            record = self.read()
            holder = self.holder(record)
            if holder:
                raise WorkdirLocked(f"{self.path.parent} is in use by another run: {holder}")
            if record is not None:
                logging.warning("taking over the stale workdir lock %s: %s", self.path, record)
            if not self._write(exclusive=record is None and not self.remote):
                continue  # created by another launch since we looked
            if record is not None or self.remote:
                time.sleep(self.settle_s)
            if (self.read() or {}).get("token") == self.token:
                self._thread = threading.Thread(target=self._beat, daemon=True, name="lock")
                self._thread.start()
                return
        raise WorkdirLocked(f"{self.path.parent}: another launch took the lock at the same time")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                record = self.read()
                if (record or {}).get("token") != self.token:
                    logging.error("the workdir lock %s was taken over: %s", self.path, record)
                    return
                self._write(exclusive=False)
            except OSError as e:  # a storage hiccup: the next beat tries again
                logging.warning("workdir lock heartbeat failed: %s", e)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            if (self.read() or {}).get("token") == self.token:
                self.path.unlink()
        except OSError as e:
            logging.warning("could not release the workdir lock %s: %s", self.path, e)
