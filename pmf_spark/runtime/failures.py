"""Spark and JVM failures a person causes, as one-line errors.

Spark reports a corrupt file, a Python worker without numpy or a full disk as a
Java exception with a long stack trace. :func:`read_failure` turns the failures of
reading an input into :class:`~pmf_spark.errors.InputDataError` naming the file;
:func:`user_failure` turns the rest (worker environment, space, permissions) into the
error kind with the right exit code, or returns None for a genuine bug.
"""

from __future__ import annotations

import re

from pmf_spark.errors import InputDataError, OutputError, PMFError, PMFUserError
from pmf_spark.storage.hadoop import short

_FILE = re.compile(r"Encountered error while reading file (\S+?)\.?(?:\s|$)")
_PARQUET = re.compile(r"Parquet column \[([^\]]*)\]\. Expected Spark type (\S+), actual "
                      r"Parquet type (\S+?)\.")
_MODULE = re.compile(r"ModuleNotFoundError: No module named '([^']+)'")
_CAUSE = re.compile(r"^Caused by: ([\w.$]+)(?::\s*(.*))?$", re.M)


def text_of(exc: BaseException) -> str:
    """The whole message of an exception, the Java side's included."""
    parts = [str(exc)]
    java = getattr(exc, "java_exception", None)
    if java is not None:
        try:
            parts.append(str(java.toString()))
        except Exception:  # the gateway is gone
            pass
    return "\n".join(parts)


_THROWN = re.compile(r"^:? ?([\w.$]+(?:Exception|Error))(?::\s*(.*))?$", re.M)
_COMPRESSED = (".gz", ".bz2", ".deflate", ".lz4", ".snappy", ".zst")


def root_cause(text: str) -> str:
    """The innermost 'Caused by:' of a Java trace (else the exception thrown), as
    'Exception: message'."""
    causes = _CAUSE.findall(text) or _THROWN.findall(text)
    if not causes:
        return ""
    name, message = causes[-1]
    name = name.rsplit(".", 1)[-1]
    return f"{name}: {message}".strip().rstrip(":")[:200]


def read_failure(exc: BaseException, role: str, path: str) -> InputDataError | None:
    """An InputDataError for a failure while reading ``path``, or None."""
    text = text_of(exc)
    found = _FILE.search(text)
    where = short(found.group(1)) if found else path
    m = _PARQUET.search(text)
    if m:
        return InputDataError(f"{role} {where}: column {m.group(1)!r} is {m.group(3)} in this "
                              f"file but {m.group(2)} in the others; all Parquet files of an "
                              f"input must have the same schema")
    if "CANNOT_READ_FILE_FOOTER" in text or "is not a Parquet file" in text:
        return InputDataError(f"{role} {where}: not readable as Parquet (truncated or "
                              f"corrupt footer)")
    cause = root_cause(text)
    compressed = where.lower().endswith(_COMPRESSED)
    if found or compressed or "EOFException" in text:
        kind = "truncated or corrupt compressed file" if compressed else "cannot be read"
        return InputDataError(f"{role} {where}: {kind} ({cause or 'read failed'})")
    m = re.search(r"Relative path in absolute URI: (\S+)", text)
    if m:
        return InputDataError(f"{role} {path}: holds a file named {m.group(1)!r}; Hadoop cannot "
                              f"list names with ':' in a directory (rename it, or name the "
                              f"other files)")
    return None


def user_failure(exc: BaseException) -> PMFError | None:
    """The one-line error for a failure the environment or the user caused, or None."""
    if isinstance(exc, PMFError):
        return exc
    text = text_of(exc)
    kernels = re.search(r"the numba kernels cannot be loaded here \((.*?)\); install numba "
                        r"or run with --kernel numpy", text)
    if kernels:               # --kernel numba on an executor without a working numba
        return PMFUserError(f"--kernel numba: the numba kernels cannot be loaded in the "
                            f"Python workers ({kernels.group(1)}); install numba there or "
                            f"run with --kernel auto (falls back to numpy) or numpy")
    m = _MODULE.search(text)
    if m:
        name = m.group(1)
        fix = ("ship it with --py-files (spark-submit.sh does unless PMF_SPARK_SHIP=0) or "
               "install it on every node" if name.split(".")[0] == "pmf_spark" else
               "install pmf-spark's dependencies (numpy, pandas, pyarrow) in the Python that "
               "runs them, or point PYSPARK_PYTHON at one that has them")
        return PMFUserError(f"the Python workers cannot import {name!r} (No module named "
                            f"{name!r}): {fix}")
    if "No space left on device" in text or "Disk quota exceeded" in text:
        cause = root_cause(text) or "disk full"
        return OutputError(f"no space left on device while writing ({cause}); free some space "
                           f"or choose another --output")
    if isinstance(exc, OSError) and exc.errno is not None:
        name = getattr(exc, "filename", None)
        return OutputError(f"{name + ': ' if name else ''}{exc.strerror or exc}")
    if re.search(r"AccessDeniedException|Permission denied", text):
        return OutputError(f"permission denied ({root_cause(text) or 'see the path above'})")
    return None
