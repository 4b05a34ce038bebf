"""Filesystem operations for committing outputs safely, on two backends, and the
output lock.

- :class:`LocalOps` works on ``file:`` paths with the operating system's calls:
  ``rename`` never silently turns into copy-and-delete (Hadoop's local filesystem
  does that when a rename fails), and Linux's ``renameat2(RENAME_EXCHANGE)`` swaps a
  new output directory with the old one in one atomic step.
- :class:`HadoopOps` works through Hadoop's FileSystem API (HDFS and the rest).

Both offer the same small set of calls, so :class:`pmf_spark.outputs.commit.AtomicOutput` and
:class:`pmf_spark.outputs.lock.OutputLock` are written once.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import posixpath
import shutil
import time
import uuid
from collections.abc import Iterator

from pyspark.sql import SparkSession

from pmf_spark.errors import OutputError
from pmf_spark.runtime.sparkutil import jvm

_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100


def jvm_fs(spark: SparkSession, path: str):
    """(Hadoop FileSystem, Path) of ``path``."""
    jpath = jvm(spark).org.apache.hadoop.fs.Path(path)
    fs = jpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs, jpath


def _renameat2(src: str, dst: str, flags: int) -> None:
    """Linux renameat2; OSError(ENOSYS/EINVAL) where the kernel, libc or filesystem
    lacks it."""
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available", src)
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), src)


def _reason(exc: BaseException) -> str:
    """The short reason in an OS or Java exception: "Permission denied", ..."""
    java = getattr(exc, "java_exception", None)
    if java is not None:
        with contextlib.suppress(Exception):
            return str(java.toString()).splitlines()[0][:200]
    text = getattr(exc, "strerror", None) or (str(exc).splitlines() or [""])[0]
    return (text or type(exc).__name__)[:200]


class LocalOps:
    """Operations on local paths (plain strings, no scheme)."""

    local = True

    def exists(self, p: str) -> bool:
        return os.path.lexists(p)

    def is_dir(self, p: str) -> bool:
        return os.path.isdir(p) and not os.path.islink(p)

    def listdir(self, p: str) -> list[str]:
        return sorted(os.listdir(p))

    def files(self, root: str) -> Iterator[str]:
        """Every entry under ``root`` that is not a directory (symlinks included, never
        followed), relative to it."""
        for base, dirs, names in os.walk(root):
            links = [d for d in dirs if os.path.islink(os.path.join(base, d))]
            dirs[:] = [d for d in dirs if d not in links]
            for n in sorted(names + links):
                yield os.path.relpath(os.path.join(base, n), root)

    def mkdirs(self, p: str) -> None:
        os.makedirs(p, exist_ok=True)

    def rename(self, src: str, dst: str) -> None:
        """Atomic rename that refuses to replace anything at ``dst``."""
        try:
            _renameat2(src, dst, _RENAME_NOREPLACE)
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EINVAL):
                raise
            if os.path.lexists(dst):
                raise FileExistsError(errno.EEXIST, "exists", dst) from None
            os.rename(src, dst)

    def exchange(self, a: str, b: str) -> bool:
        """Swap two directories atomically; False where the system cannot."""
        try:
            _renameat2(a, b, _RENAME_EXCHANGE)
        except OSError as exc:
            if exc.errno in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
                return False
            raise
        return True

    def remove_file(self, p: str) -> None:
        os.unlink(p)

    def rmdir(self, p: str) -> None:
        os.rmdir(p)

    def delete_tree(self, p: str) -> None:
        if os.path.islink(p) or not os.path.isdir(p):
            os.unlink(p)
        else:
            shutil.rmtree(p)

    def read_text(self, p: str) -> str:
        with open(p, encoding="utf-8") as fh:
            return fh.read()

    def write_text(self, p: str, text: str) -> None:
        with open(p, "w", encoding="utf-8") as fh:
            fh.write(text)

    def create_exclusive(self, p: str, text: str) -> bool:
        """Create ``p`` holding ``text`` unless it exists (atomic: written aside,
        then hard-linked into place)."""
        tmp = f"{p}.{uuid.uuid4().hex[:8]}.tmp"
        self.write_text(tmp, text)
        try:
            os.link(tmp, p)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def mtime(self, p: str) -> float:
        return os.lstat(p).st_mtime

    def touch(self, p: str) -> None:
        os.utime(p)

    def free_bytes(self, p: str) -> int | None:
        st = os.statvfs(p)
        return st.f_bavail * st.f_frsize


class HadoopOps:
    """Operations through Hadoop's FileSystem API (fully qualified path strings)."""

    local = False

    def __init__(self, spark: SparkSession):
        self.spark = spark

    def _fs(self, p: str):
        return jvm_fs(self.spark, p)

    def exists(self, p: str) -> bool:
        fs, jp = self._fs(p)
        return bool(fs.exists(jp))

    def is_dir(self, p: str) -> bool:
        fs, jp = self._fs(p)
        return bool(fs.exists(jp) and fs.getFileStatus(jp).isDirectory())

    def listdir(self, p: str) -> list[str]:
        fs, jp = self._fs(p)
        return sorted(str(s.getPath().getName()) for s in fs.listStatus(jp))

    def files(self, root: str) -> Iterator[str]:
        fs, jp = self._fs(root)
        it = fs.listFiles(jp, True)
        prefix = str(fs.makeQualified(jp).toString()).rstrip("/") + "/"
        names = []
        while it.hasNext():
            names.append(str(it.next().getPath().toString())[len(prefix):])
        yield from sorted(names)

    def mkdirs(self, p: str) -> None:
        fs, jp = self._fs(p)
        if not fs.mkdirs(jp):
            raise OSError(errno.EIO, "mkdirs failed", p)

    def rename(self, src: str, dst: str) -> None:
        fs, jsrc = self._fs(src)
        _, jdst = self._fs(dst)
        if fs.exists(jdst):   # Hadoop would move src *into* an existing directory
            raise FileExistsError(errno.EEXIST, "exists", dst)
        if not fs.rename(jsrc, jdst):
            raise OSError(errno.EIO, f"rename to {dst} failed", src)

    def exchange(self, a: str, b: str) -> bool:
        return False

    def remove_file(self, p: str) -> None:
        fs, jp = self._fs(p)
        fs.delete(jp, False)

    def rmdir(self, p: str) -> None:
        fs, jp = self._fs(p)
        if len(fs.listStatus(jp)) == 0:
            fs.delete(jp, False)

    def delete_tree(self, p: str) -> None:
        fs, jp = self._fs(p)
        fs.delete(jp, True)

    def read_text(self, p: str) -> str:
        fs, jp = self._fs(p)
        stream = fs.open(jp)
        try:
            data = jvm(self.spark).org.apache.commons.io.IOUtils.toByteArray(stream)
        finally:
            stream.close()
        return bytes(data).decode("utf-8")

    def write_text(self, p: str, text: str) -> None:
        fs, jp = self._fs(p)
        with contextlib.suppress(Exception):   # no .crc side files where there are any
            fs.setWriteChecksum(False)
        out = fs.create(jp, True)
        try:
            out.write(bytearray(text.encode("utf-8")))
        finally:
            out.close()

    def create_exclusive(self, p: str, text: str) -> bool:
        fs, jp = self._fs(p)
        try:
            out = fs.create(jp, False)
        except Exception:  # FileAlreadyExistsException
            return False
        try:
            out.write(bytearray(text.encode("utf-8")))
        finally:
            out.close()
        return True

    def mtime(self, p: str) -> float:
        fs, jp = self._fs(p)
        return float(fs.getFileStatus(jp).getModificationTime()) / 1000.0

    def touch(self, p: str) -> None:
        fs, jp = self._fs(p)
        fs.setTimes(jp, int(time.time() * 1000), -1)

    def free_bytes(self, p: str) -> int | None:
        fs, jp = self._fs(p)
        try:
            return int(fs.getStatus(jp).getRemaining())
        except Exception:  # a filesystem that cannot say
            return None


def split_parent(path: str) -> tuple[str, str]:
    parent, base = posixpath.split(path.rstrip("/"))
    return parent, base


def os_reason(exc: BaseException) -> str:
    """The operating system's reason in an exception, short."""
    return _reason(exc)


def wrap_os_error(what: str, exc: BaseException) -> OutputError:
    return OutputError(f"{what} ({_reason(exc)})")
