"""Files through Hadoop's FileSystem API (via the session's JVM), so the same code
serves local paths, HDFS, S3A and the rest: existence, text in and out, and the
atomic output directory.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import re
import uuid

from pyspark.sql import SparkSession

from .errors import InputDataError, OutputError
from .sparkutil import jvm


def jvm_fs(spark: SparkSession, path: str):
    """(Hadoop FileSystem, Path) of ``path``."""
    jpath = jvm(spark).org.apache.hadoop.fs.Path(path)
    fs = jpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs, jpath


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


class AtomicOutput:
    """Write a directory of outputs to a staging sibling and move it into place
    only when everything is written; a failure leaves the previous output as it was.

    Usage::

        out = AtomicOutput(spark, "out/model")
        df.write.parquet(out.path("user_factors"))
        out.write_json("model.json", {...})
        out.commit(manifest)       # or out.abort()
    """

    def __init__(self, spark: SparkSession, final: str):
        self.spark = spark
        self.final = qualify(spark, final.rstrip("/"))
        token = uuid.uuid4().hex[:12]
        parent, base = posixpath.split(self.final)
        self.staging = posixpath.join(parent, f".{base}.staging-{token}")
        self.backup = posixpath.join(parent, f".{base}.previous-{token}")
        fs, jpath = jvm_fs(spark, self.staging)
        fs.mkdirs(jpath)

    def path(self, name: str) -> str:
        return posixpath.join(self.staging, name)

    def write_text(self, name: str, text: str) -> None:
        write_text(self.spark, self.path(name), text)

    def write_json(self, name: str, obj) -> None:
        self.write_text(name, dumps(obj))

    def commit(self, marker: dict | None = None) -> str:
        """Write the completion marker ``_SUCCESS`` and swap the staging directory in."""
        self.write_json("_SUCCESS", marker or {})
        fs, final = jvm_fs(self.spark, self.final)
        _, staging = jvm_fs(self.spark, self.staging)
        _, backup = jvm_fs(self.spark, self.backup)
        had_previous = fs.exists(final)
        if had_previous and not fs.rename(final, backup):
            raise OutputError(f"output {short(self.final)}: cannot move the previous output "
                              f"aside to {short(self.backup)}")
        if not fs.rename(staging, final):
            if had_previous:
                fs.rename(backup, final)
            raise OutputError(f"output {short(self.final)}: cannot move {short(self.staging)} "
                              f"into place")
        if had_previous:
            fs.delete(backup, True)
        return self.final

    def abort(self) -> None:
        try:
            delete_path(self.spark, self.staging)
        except Exception:  # best effort: never hide the original failure
            pass
