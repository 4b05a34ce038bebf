"""The output directory that is replaced safely: :class:`AtomicOutput`.

How an output is committed
--------------------------
Everything is written to a staging directory beside the output,
``<parent>/.<name>.pmf-staging-<token>``, which ends with ``_SUCCESS``: a manifest
naming the job, its version and every file it wrote. Then, holding the output's lock
(:class:`~pmf_spark.outputs.lock.OutputLock`):

- on Linux local filesystems, one ``renameat2(RENAME_EXCHANGE)`` swaps the staging
  directory with the old output (or one no-replace rename when there is none): at every
  instant ``--output`` is the complete old output or the complete new one;
- elsewhere, the old output is renamed to ``.<name>.pmf-previous-<token>``, the staging
  directory into place, and the previous one removed. A run killed between the two
  renames leaves both directories named by its token in its stale lock, and the next
  run completes the commit (the new output is complete) or restores the old one, and
  says which.

An existing directory is replaced only when it is empty or its ``_SUCCESS`` manifest
shows a pmf-spark output and it holds no file the manifest does not list; anything
else is refused before any work starts. Filesystems that cannot rename a directory
atomically (object stores) and mount points are refused up front, and a symbolic-link
``--output`` is resolved (the link stays, its target is replaced) with a log line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import re
import time
import uuid
from typing import Any

from pyspark.sql import SparkSession

from pmf_spark.errors import ConfigError, OutputError
from pmf_spark.outputs.lock import OutputLock
from pmf_spark.storage.hadoop import dumps, is_local_uri, qualify, short
from pmf_spark.storage.ops import HadoopOps, LocalOps, os_reason
from pmf_spark.version import __version__

log = logging.getLogger("pmf_spark")
#: schemes whose directory rename is a copy: an output there cannot be replaced safely
NON_ATOMIC_SCHEMES = ("s3", "s3a", "s3n", "gs", "wasb", "wasbs", "oss", "cos", "cosn", "obs",
                      "swift", "ftp", "sftp", "http", "https", "har")
MANIFEST_VERSION = 1


def _manifest_lister(manifest):
    """A predicate telling whether a relative file path is listed in ``manifest``
    (this version's: ``contents``; older outputs: their ``tables`` and ``files``),
    or None when ``manifest`` is not a pmf-spark manifest."""
    if not isinstance(manifest, dict):
        return None
    if isinstance(manifest.get("contents"), list):
        listed = set(map(str, manifest["contents"]))
        return lambda rel: rel in listed
    if isinstance(manifest.get("tables"), dict):   # written before manifests listed files
        tops = set(map(str, manifest["tables"])) | set(map(str, manifest.get("files") or []))
        return lambda rel: rel.split("/", 1)[0] in tops
    return None


def read_manifest(ops, directory: str):
    """The parsed ``_SUCCESS`` of ``directory`` or None (absent, empty, not JSON)."""
    path = posixpath.join(directory, "_SUCCESS")
    if not ops.exists(path):
        return None
    try:
        return json.loads(ops.read_text(path))
    except (ValueError, OSError, UnicodeDecodeError):
        return None
    except Exception:  # Hadoop: unreadable
        return None


def is_complete(ops, directory: str) -> bool:
    """A pmf-spark output whose manifest lists only files that are there."""
    manifest = read_manifest(ops, directory)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("contents"), list):
        return False
    present = set(ops.files(directory))
    return all(str(f) in present for f in manifest["contents"])


class SimulatedCrash(BaseException):
    """Raised by the fault-injection hook (:data:`FAULT`) to stand for the process
    dying at that step: no cleanup runs, as after a SIGKILL."""


#: fault injection for tests: called with the name of each filesystem step of a
#: commit or a recovery right after it happened
FAULT = None


def _step(name: str) -> None:
    if FAULT is not None:
        FAULT(name)


def _mount_points() -> set[str]:
    out = set()
    with contextlib.suppress(OSError):
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) > 4:
                    out.add(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)),
                                   parts[4]))
    return out


class OutputChecks:
    """What is checked about an output path before anything is written to it: the
    path resolved (symbolic links, mount points), an existing directory that may be
    replaced, its parent created, room on its filesystem. :class:`AtomicOutput` sets
    the attributes in its constructor."""

    given: str
    final: str
    parent: str
    ops: Any

    def _show(self, p: str) -> str:
        return short(p)

    @property
    def shown(self) -> str:
        return self.given.rstrip("/") or "/"

    def _resolve(self, uri: str) -> str:
        """The path the ops work on: a local path with its parent's symbolic links
        resolved (and the output's own, which is reported), or the URI."""
        if not is_local_uri(uri):
            return uri
        p = short(uri)
        parent, base = os.path.split(p.rstrip("/") or "/")
        p = os.path.join(os.path.realpath(parent), base)
        if os.path.islink(p):
            target = os.path.realpath(p)
            if not os.path.exists(target):
                raise ConfigError(f"output {self.given}: is a symbolic link to {target}, which "
                                  f"does not exist; point it at a directory or choose another "
                                  f"--output")
            log.info("output %s is a symbolic link to %s: writing %s (the link stays)",
                     self.given, target, target)
            p = target
        if os.path.isdir(p) and (os.path.ismount(p) or p in _mount_points()):
            raise ConfigError(f"output {self.given}: is a mount point (a filesystem of its "
                              f"own), which cannot be replaced atomically; write to a "
                              f"directory inside it, e.g. --output {p.rstrip('/')}/model")
        return p

    def check_replaceable(self) -> None:
        """Refuse an existing output that is not an empty directory or a complete
        pmf-spark output holding only the files its manifest lists."""
        ops, final = self.ops, self.final
        if not ops.exists(final):
            return
        if not ops.is_dir(final):
            raise ConfigError(f"output {self.shown}: exists and is a file, not a directory; "
                              f"refusing to replace it (choose another --output)")
        if not ops.listdir(final):
            return
        lister = _manifest_lister(read_manifest(ops, final))
        if lister is None:
            raise ConfigError(f"output {self.shown}: exists and is not a pmf-spark output (no "
                              f"_SUCCESS manifest of pmf-spark); refusing to replace it "
                              f"(choose another --output or remove it)")
        unlisted = [f for f in ops.files(final) if f != "_SUCCESS" and not lister(f)]
        if unlisted:
            more = f" and {len(unlisted) - 1} more" if len(unlisted) > 1 else ""
            raise ConfigError(f"output {self.shown}: holds {unlisted[0]!r}{more}, which the "
                              f"pmf-spark run that wrote it did not write; refusing to "
                              f"replace it (move it away or choose another --output)")

    def _make_parent(self) -> None:
        try:
            self.ops.mkdirs(self.parent)
        except OSError as exc:
            blocker = self.parent
            while self.ops.local and blocker not in ("", "/") and not os.path.exists(blocker):
                blocker = os.path.dirname(blocker)
            if self.ops.local and os.path.exists(blocker) and not os.path.isdir(blocker):
                raise OutputError(f"output {self.shown}: cannot be created, {blocker} is a "
                                  f"file, not a directory") from None
            raise OutputError(f"output {self.shown}: cannot create {self._show(self.parent)} "
                              f"({os_reason(exc)})") from None

    def check_room(self, needed: int, what: str = "the outputs") -> None:
        """Refuse when the output's filesystem has less than ``needed`` bytes free."""
        try:
            free = self.ops.free_bytes(self.parent)
        except OSError:
            free = None
        if free is not None and free < needed:
            mb = 1 << 20
            raise OutputError(f"output {self.shown}: {what} need about {needed / mb:.0f} MB but "
                              f"{self._show(self.parent)} has {free / mb:.0f} MB free; free "
                              f"some space or choose another --output")

    # ---------------------------------------------------------------- recovery


class AtomicOutput(OutputChecks):
    """An output directory written to a staging sibling and swapped in only when
    complete (see the module docstring); a failure or a kill leaves the previous
    output as it was.

    Creating one checks the output (refusing foreign directories, files, mount points,
    non-atomic filesystems), creates its parent, takes the output's lock (recovering
    what a killed run left) and creates the staging directory: all before any work.

    Usage::

        with AtomicOutput(spark, "out/model", job="pmf-spark train") as out:
            df.write.parquet(out.path("user_factors"))
            out.write_json("model.json", {...})
            out.commit({"tables": {...}})   # leaving the block without commit aborts
    """

    def __init__(self, spark: SparkSession, final: str, job: str = "pmf-spark"):
        self.spark, self.job, self.given = spark, job, final
        self.committed = False
        m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*):/", final)
        scheme = m.group(1).lower() if m else ""
        if scheme in NON_ATOMIC_SCHEMES:
            raise ConfigError(f"output {final}: {scheme}:// cannot rename a directory "
                              f"atomically, so an output there could be lost half-replaced; "
                              f"write to HDFS or a local path and copy it")
        uri = qualify(spark, final.rstrip("/") or "/")
        self.ops = LocalOps() if is_local_uri(uri) else HadoopOps(spark)
        target = self._resolve(uri)
        parent, base = posixpath.split(target)
        self.final = target
        token = uuid.uuid4().hex[:12]
        self.token = token
        self.parent, self.base = parent, base
        self.staging = posixpath.join(parent, f".{base}.pmf-staging-{token}")
        self.previous = posixpath.join(parent, f".{base}.pmf-previous-{token}")
        self.lock = OutputLock(self.ops, posixpath.join(parent, f".{base}.pmf-lock"),
                               self.shown, token, job)
        self.check_replaceable()
        self._make_parent()
        try:
            stale = self.lock.acquire()
        except OSError as exc:
            raise OutputError(f"output {self.shown}: cannot write in {self._show(parent)} "
                              f"({os_reason(exc)})") from None
        try:
            if stale:
                self.lock.inherit(stale)
                for dead in stale:
                    self._recover(dead)
                self.lock.inherit([])
            self._recover_legacy()
            self.check_replaceable()
            self.ops.mkdirs(self.staging)
        except BaseException as exc:
            if not isinstance(exc, SimulatedCrash):
                self.lock.release()
            if isinstance(exc, OSError):
                raise OutputError(f"output {self.shown}: cannot create {self._show(self.staging)}"
                                  f" ({os_reason(exc)})") from None
            raise

    # ---------------------------------------------------------------- naming
    def _uri(self, p: str) -> str:
        return "file:" + p if self.ops.local else p

    def path(self, name: str) -> str:
        """Where a table or file goes (a URI for Spark's writers)."""
        return self._uri(posixpath.join(self.staging, name))

    def _recover(self, token: str) -> None:
        """Finish or undo what the run that held the stale lock ``token`` left."""
        if not token:
            return
        ops, p, b = self.ops, self.parent, self.base
        staging = posixpath.join(p, f".{b}.pmf-staging-{token}")
        previous = posixpath.join(p, f".{b}.pmf-previous-{token}")
        if not ops.exists(self.final) and ops.exists(previous):
            if ops.exists(staging) and is_complete(ops, staging):
                ops.rename(staging, self.final)
                _step("recover-forward")
                log.info("output %s: a run killed while committing had written a complete "
                         "output; moved it into place", self.shown)
            else:
                ops.rename(previous, self.final)
                _step("recover-back")
                log.info("output %s: a run killed while committing had moved the previous "
                         "output aside; restored it", self.shown)
        for d, what in ((staging, "staging"), (previous, "previous")):
            if ops.exists(d):
                ops.delete_tree(d)
                _step(f"recover-remove-{what}")
                log.info("output %s: removed %s, the %s directory of a run that did not "
                         "finish", self.shown, self._show(d), what)

    def _recover_legacy(self) -> None:
        """Leftovers no lock explains: an older version's hidden previous output is put
        back when the output is missing; anything else is reported and left alone."""
        ops, pat = self.ops, re.compile(
            rf"\.{re.escape(self.base)}\.(pmf-)?(staging|previous)-[0-9a-f]{{12}}")
        names = [n for n in ops.listdir(self.parent) if pat.fullmatch(n)
                 and n not in (posixpath.basename(self.staging),
                               posixpath.basename(self.previous))]
        for n in names:
            d = posixpath.join(self.parent, n)
            if ("previous" in n and not ops.exists(self.final)
                    and _manifest_lister(read_manifest(ops, d)) is not None):
                ops.rename(d, self.final)
                log.info("output %s was missing; restored the previous output left in %s",
                         self.shown, self._show(d))
            else:
                log.info("output %s: left %s as it is (from an earlier run that did not finish; "
                         "remove it when you no longer need it)", self.shown, self._show(d))

    # ---------------------------------------------------------------- writing
    def write_text(self, name: str, text: str) -> None:
        self.ops.write_text(posixpath.join(self.staging, name), text)

    def write_json(self, name: str, obj) -> None:
        self.write_text(name, dumps(obj))

    def manifest(self, marker: dict | None) -> dict:
        contents = sorted(f for f in self.ops.files(self.staging) if f != "_SUCCESS")
        return {**(marker or {}), "job": self.job, "version": __version__,
                "manifest_version": MANIFEST_VERSION,
                "written_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "contents": contents}

    def commit(self, marker: dict | None = None) -> str:
        """Write the manifest ``_SUCCESS`` and swap the staging directory in."""
        ops = self.ops
        ops.write_text(posixpath.join(self.staging, "_SUCCESS"), dumps(self.manifest(marker)))
        _step("manifest")
        try:
            if ops.exists(self.final):
                self.check_replaceable()
                self._replace()
            else:
                ops.rename(self.staging, self.final)
                _step("new-in-place")
        except OSError as exc:
            raise OutputError(f"output {self.shown}: cannot move the new output into place "
                              f"({os_reason(exc)}); the previous output was left as it was "
                              f"and the new one is in {self._show(self.staging)}") from None
        self.committed = True
        self.lock.release()
        _step("unlocked")
        return self._uri(self.final)

    def _replace(self) -> None:
        ops = self.ops
        if ops.exchange(self.staging, self.final):
            _step("exchanged")
            ops.delete_tree(self.staging)       # now the previous output
            _step("previous-removed")
            return
        ops.rename(self.final, self.previous)
        _step("previous-aside")
        try:
            ops.rename(self.staging, self.final)
        except BaseException as exc:
            if not isinstance(exc, SimulatedCrash) and not ops.exists(self.final):
                ops.rename(self.previous, self.final)
            raise
        _step("new-in-place")
        ops.delete_tree(self.previous)
        _step("previous-removed")

    def abort(self) -> None:
        """Remove the staging directory and release the lock (best effort: never hides
        the original failure). A committed output stays."""
        if not self.committed:
            with contextlib.suppress(Exception):
                if self.ops.exists(self.staging):
                    self.ops.delete_tree(self.staging)
        with contextlib.suppress(Exception):
            self.lock.release()

    def __enter__(self) -> AtomicOutput:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and issubclass(exc_type, SimulatedCrash):
            return
        self.abort()
