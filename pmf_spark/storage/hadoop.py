"""Files through Hadoop's FileSystem API (via the session's JVM), so the same code
serves local paths, HDFS and the rest: existence, text in and out, standard JSON.
The output directory that is replaced safely is
:class:`pmf_spark.outputs.commit.AtomicOutput`.
"""

from __future__ import annotations

import json
import math
import os
import re

from pyspark.sql import SparkSession

from pmf_spark.errors import InputDataError
from pmf_spark.runtime.sparkutil import jvm
from pmf_spark.storage.ops import jvm_fs as _jvm_fs

_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:/")


def hadoop_path(path: str) -> str:
    """``path`` as Hadoop's Path parses it: a relative name whose first component holds
    ':' (``a:b.csv``) would be read as a URI scheme, so it gets a leading ``./``."""
    if _URI.match(path) or path.startswith("file:"):
        return path
    head = path.split("/", 1)[0]
    return "./" + path if ":" in head else path


def jvm_fs(spark: SparkSession, path: str):
    """(Hadoop FileSystem, Path) of ``path``."""
    return _jvm_fs(spark, hadoop_path(path))


def path_exists(spark: SparkSession, path: str) -> bool:
    fs, jpath = jvm_fs(spark, path)
    found = fs.globStatus(jpath)
    return found is not None and len(found) > 0


def qualify(spark: SparkSession, path: str) -> str:
    """The fully qualified form of ``path`` (scheme, absolute)."""
    fs, jpath = jvm_fs(spark, path)
    return str(fs.makeQualified(jpath).toString())


def write_text(spark: SparkSession, path: str, text: str) -> None:
    fs, jpath = jvm_fs(spark, path)
    try:
        fs.setWriteChecksum(False)   # no .crc side files for our small JSON/HTML files
    except Exception:  # not a checksummed filesystem
        pass
    out = fs.create(jpath, True)
    try:
        out.write(bytearray(text.encode("utf-8")))
    finally:
        out.close()


def read_text(spark: SparkSession, path: str) -> str:
    fs, jpath = jvm_fs(spark, path)
    if not fs.exists(jpath):
        raise InputDataError(f"{path}: no such file")
    stream = fs.open(jpath)
    try:
        data = jvm(spark).org.apache.commons.io.IOUtils.toByteArray(stream)
    finally:
        stream.close()
    return bytes(data).decode("utf-8")


def delete_path(spark: SparkSession, path: str) -> None:
    fs, jpath = jvm_fs(spark, path)
    if fs.exists(jpath):
        fs.delete(jpath, True)


def short(file_uri: str) -> str:
    """A ``file:`` URI as the path people typed."""
    return re.sub(r"^file:(//)?", "", file_uri or "")


def local_path(path: str) -> str | None:
    """The local filesystem path of a ``file:`` or scheme-less path, else None."""
    if path.startswith("file:"):
        return re.sub(r"^file:(//)?", "", path) or "/"
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", path):
        return None
    return os.path.abspath(path)


def json_safe(o):
    """``o`` with numpy scalars and arrays as Python values and non-finite floats as
    None, so the JSON is standard (``null``, never ``NaN``)."""
    import numpy as np

    if isinstance(o, dict):
        return {str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if isinstance(o, np.ndarray):
        return json_safe(o.tolist())
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(o) else None
    return o


def dumps(obj) -> str:
    """Standard JSON (non-finite numbers as null), indented."""
    return json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n"


def is_local_uri(uri: str) -> bool:
    return uri.startswith("file:")


__all__ = ["dumps", "jvm_fs", "path_exists", "qualify",
           "read_text", "short", "write_text"]
