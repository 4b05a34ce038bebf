"""The output lock: one writer per output at a time, and never stuck forever.

:class:`OutputLock` is a lock file beside the output, ``<parent>/.<name>.pmf-lock``,
holding the owner's pid, host, start time and a token. It is stale when its owner is
provably gone (same host, boot and pid namespace, and the pid is dead or was reused)
or, for an owner elsewhere, when its heartbeat (the file's modification time,
refreshed every minute) is older than ten minutes. A stale lock is taken over (moved
aside first, so only one run can take it), and its token tells which leftover staging
and previous directories belong to the run that died.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time

from pmf_spark.errors import ConfigError

log = logging.getLogger("pmf_spark")

HEARTBEAT_SECONDS = 60.0
STALE_SECONDS = 600.0


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _proc_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), or None."""
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _namespace() -> str:
    """Boot and pid namespace: pids can be compared only within one."""
    parts = []
    with contextlib.suppress(OSError):
        with open("/proc/sys/kernel/random/boot_id") as fh:
            parts.append(fh.read().strip())
    with contextlib.suppress(OSError):
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    return ":".join(parts)


def owner_info(token: str, job: str) -> dict:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "namespace": _namespace(),
            "proc_start": _proc_start(pid), "started": time.time(),
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "token": token, "job": job}


def owner_alive(info: dict, age: float) -> bool:
    """Whether the run that wrote lock ``info`` may still be running."""
    same = info.get("host") == socket.gethostname() and info.get("namespace") == _namespace()
    pid = info.get("pid")
    if same and isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        fields = _proc_stat(pid)
        if fields and fields[0] in ("Z", "X"):      # exited, not yet reaped by its parent
            return False
        recorded = info.get("proc_start")
        return recorded is None or _proc_start(pid) in (None, recorded)
    return age < STALE_SECONDS


class OutputLock:
    """``<parent>/.<name>.pmf-lock``: one writer per output at a time.

    :meth:`acquire` returns the tokens of the runs that died holding a stale lock it
    took over (the dead run's and those it had inherited itself, when it died while
    recovering), empty when the lock was free; it refuses with a one-line error while
    another run holds the lock.
    """

    def __init__(self, ops, path: str, target: str, token: str, job: str):
        self.ops, self.path, self.target, self.token, self.job = ops, path, target, token, job
        self.held = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _holder(self) -> tuple[dict, float] | None:
        """(the lock's content, its age in seconds), or None when there is no lock;
        an unreadable or half-written lock reads as ``{}``."""
        try:
            age = time.time() - self.ops.mtime(self.path)
        except Exception:  # gone (OSError locally, FileNotFoundException on Hadoop)
            return None
        try:
            info = json.loads(self.ops.read_text(self.path))
        except Exception:  # half-written, not JSON, not UTF-8, or gone meanwhile
            info = {}
        return (info if isinstance(info, dict) else {}), age

    def _refuse(self, info: dict) -> ConfigError:
        who = (f"pid {info.get('pid')} on {info.get('host')}, started "
               f"{info.get('started_utc', '?')}" if info else "a run whose lock is unreadable")
        return ConfigError(f"output {self.target}: another pmf-spark run ({who}) is writing it; "
                           f"wait for it to finish, or remove {self.path} if that run is gone")

    def acquire(self) -> list[str]:
        mine = json.dumps(owner_info(self.token, self.job))
        if self.ops.create_exclusive(self.path, mine):
            self._start()
            return []
        found = self._holder()
        if found is None:          # released meanwhile: try once more
            if self.ops.create_exclusive(self.path, mine):
                self._start()
                return []
            found = self._holder() or ({}, 0.0)
        info, age = found
        if (info and owner_alive(info, age)) or (not info and age < STALE_SECONDS / 10):
            raise self._refuse(info)
        # stale: move it aside (only one taker can), then take the lock
        aside = f"{self.path}.stale-{self.token}"
        try:
            self.ops.rename(self.path, aside)
        except Exception:  # another run took it first
            raise self._refuse(info) from None
        if not self.ops.create_exclusive(self.path, mine):
            now = self._holder()
            raise self._refuse(now[0] if now else {})
        with contextlib.suppress(Exception):
            self.ops.remove_file(aside)
        self._start()
        log.info("output %s: took over the lock of a run that is gone (pid %s on %s, started "
                 "%s)", self.target, info.get("pid"), info.get("host"),
                 info.get("started_utc", "?"))
        tokens = [info.get("token")] + list(info.get("inherited") or [])
        return [t for t in tokens if isinstance(t, str) and re.fullmatch(r"[0-9a-f]{12}", t)]

    def inherit(self, tokens: list[str]) -> None:
        """Record in the lock the dead runs whose leftovers this run is cleaning up, so
        that a run taking over from this one finishes the job."""
        info = {**owner_info(self.token, self.job), "inherited": tokens}
        self.ops.write_text(self.path, json.dumps(info))

    def _start(self) -> None:
        self.held = True
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name="pmf-spark output lock",
                                      daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(Exception):
                self.ops.touch(self.path)

    def release(self) -> None:
        if not self.held:
            return
        self._stop.set()
        self.held = False
        found = self._holder()
        if found is not None and found[0].get("token") == self.token:
            with contextlib.suppress(Exception):
                self.ops.remove_file(self.path)


