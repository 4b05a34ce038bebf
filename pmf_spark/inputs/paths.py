"""Which files an input path names, and how each one starts.

- A path that exists is read literally: glob characters ``[ ] { } * ?`` in it are
  escaped for Spark, a name with ``:`` is read through Hadoop's raw local filesystem
  (the checksummed one cannot name its ``.crc``), and a file whose name starts with
  ``_`` or ``.`` (which Spark's listing skips) is read through a symbolic link with a
  plain name in a private temporary directory (local files; elsewhere it is refused).
  A path that does not exist may be a glob.
- A directory is read whole: files in subdirectories too (recursively, or by Spark's
  partition discovery when every subdirectory is ``name=value``); hidden files
  (``_SUCCESS``, ``.crc``) are skipped as Spark does.
- Compressed files (``.gz``, ``.bz2``, ``.deflate``, ``.lz4``, ``.snappy``, ``.zst``) are
  read like their uncompressed name says; archives Spark cannot read (``.zip``, ``.xz``,
  ...) are refused naming the file.
- :func:`first_lines` reads the first line of every file (through its codec), so CSV
  header detection is per file and all files must agree (:func:`agree`).
"""

from __future__ import annotations

import atexit
import csv
import logging
import os
import posixpath
import re
import shutil
import tempfile
from dataclasses import dataclass, field

from pyspark.sql import SparkSession

from pmf_spark.errors import InputDataError
from pmf_spark.runtime.failures import read_failure
from pmf_spark.runtime.sparkutil import jvm
from pmf_spark.storage.hadoop import jvm_fs, short

log = logging.getLogger("pmf_spark")

CODECS = {".gz": "gzip", ".bz2": "bzip2", ".deflate": "deflate", ".lz4": "lz4",
          ".snappy": "snappy", ".zst": "zstd"}
UNREADABLE = {".zip": "zip", ".xz": "xz", ".7z": "7-Zip", ".rar": "RAR", ".tar": "tar",
              ".tgz": "tar", ".lzma": "lzma", ".z": "compress"}
MAX_HEADER_FILES = 1000
_GLOB = re.compile(r"([\[\]{}*?\\])")
_PARTITION = re.compile(r"[^=/]+=[^/]*")
_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_LINK_DIRS: list[str] = []
#: read local files through Hadoop's raw filesystem: the checksummed one derives a
#: ``.name.crc`` path that Hadoop cannot parse when the name holds ':'
RAW_LOCAL = {"fs.file.impl": "org.apache.hadoop.fs.RawLocalFileSystem",
             "fs.file.impl.disable.cache": "true"}


def strip_compression(name: str) -> str:
    """``name`` without a compression suffix Spark reads (``u.data.gz`` -> ``u.data``)."""
    low = name.lower()
    for suffix in CODECS:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


def check_readable(name: str, where: str) -> None:
    """Refuse an archive Spark cannot read, naming ``where``."""
    low = name.lower()
    for suffix, codec in UNREADABLE.items():
        if low.endswith(suffix):
            raise InputDataError(f"{where}: a {codec} archive, which Spark cannot read; unpack "
                                 f"it (or compress it with gzip or bzip2 instead)")


def escape_glob(path: str) -> str:
    return _GLOB.sub(r"\\\1", path)


def _hidden(name: str) -> bool:
    return name.startswith(("_", "."))


@dataclass
class InputFiles:
    """What :func:`resolve` found: the path to hand Spark, reader options, the data
    files (qualified URIs), and whether it is a single file (then rows name ``given``)."""

    given: str
    read_path: str
    files: list[str]
    options: dict[str, str] = field(default_factory=dict)
    single: bool = False


def _remove_links() -> None:
    for d in _LINK_DIRS:
        shutil.rmtree(d, ignore_errors=True)


def _link(uri: str, name: str) -> str:
    """A symbolic link with a plain name to the local file ``uri``, in a temporary
    directory removed at exit."""
    d = tempfile.mkdtemp(prefix="pmf-spark-input-")
    if not _LINK_DIRS:
        atexit.register(_remove_links)
    _LINK_DIRS.append(d)
    target = os.path.join(d, "input-" + name.lstrip("._"))
    os.symlink(short(uri), target)
    return "file:" + target


def _one_file(uri: str, given: str) -> InputFiles:
    name = posixpath.basename(uri)
    check_readable(name, given)
    options: dict[str, str] = {}
    read = escape_glob(uri)
    if _hidden(name):
        if not uri.startswith("file:"):
            raise InputDataError(f"{given}: Spark skips files whose names start with '_' or '.'; "
                                 f"rename it")
        read = escape_glob(_link(uri, name))
    if ":" in name and uri.startswith("file:"):
        options = dict(RAW_LOCAL)
    return InputFiles(given, read, [uri], options, single=True)


def _directory(spark: SparkSession, fs, jp, uri: str, given: str, role: str) -> InputFiles:
    try:
        it = fs.listFiles(jp, True)
        found = []
        while it.hasNext():
            found.append(str(it.next().getPath().toString()))
    except Exception as exc:
        raise read_failure(exc, role, given) or InputDataError(
            f"{role} {given}: cannot list the directory") from None
    root = uri.rstrip("/") + "/"
    files = sorted(f for f in found
                   if not any(_hidden(part) for part in f[len(root):].split("/")))
    if not files:
        raise InputDataError(f"{role} {given}: no data files in this directory")
    for f in files:
        check_readable(posixpath.basename(f), f"{role} {short(f)}")
    subdirs = {posixpath.dirname(f[len(root):]) for f in files} - {""}
    options: dict[str, str] = {}
    if uri.startswith("file:") and any(":" in posixpath.basename(f) for f in files):
        options.update(RAW_LOCAL)
    if subdirs and not all(all(_PARTITION.fullmatch(p) for p in d.split("/")) for d in subdirs):
        options["recursiveFileLookup"] = "true"
        log.info("%s: reading all %d file(s), in %d subdirector(ies) too", given, len(files),
                 len(subdirs))
    return InputFiles(given, escape_glob(uri), files, options)


def resolve(spark: SparkSession, path: str, role: str) -> InputFiles:
    """The files ``path`` names (see the module docstring)."""
    fs, jp = jvm_fs(spark, path)
    try:
        literal = bool(fs.exists(jp))
    except Exception:  # an invalid path
        literal = False
    if not literal:
        try:
            matches = fs.globStatus(jp)
        except Exception:
            matches = None
        if not matches:
            raise InputDataError(f"{path}: no such file or directory")
        files = sorted(str(m.getPath().toString()) for m in matches if m.isFile())
        return InputFiles(path, path, files)
    uri = str(fs.makeQualified(jp).toString())
    if fs.getFileStatus(jp).isDirectory():
        return _directory(spark, fs, jp, uri, path, role)
    return _one_file(uri, path)


def first_lines(spark: SparkSession, files: list[str], role: str) -> list[tuple[str, str | None]]:
    """(file, its first line or None when empty) for up to MAX_HEADER_FILES files,
    decompressed by the codec its name implies."""
    j = jvm(spark)
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    codecs = j.org.apache.hadoop.io.compress.CompressionCodecFactory(conf)
    raw_local = j.org.apache.hadoop.fs.FileSystem.getLocal(conf).getRawFileSystem()
    out = []
    for f in files[:MAX_HEADER_FILES]:
        fs, jp = jvm_fs(spark, f)
        if f.startswith("file:"):       # no .crc to check (and names with ':' work)
            fs = raw_local
        try:
            stream = fs.open(jp)
            codec = codecs.getCodec(jp)
            if codec is not None:
                stream = codec.createInputStream(stream)
            reader = j.java.io.BufferedReader(j.java.io.InputStreamReader(stream, "UTF-8"))
            try:
                line = reader.readLine()
            finally:
                reader.close()
        except Exception as exc:
            raise read_failure(exc, role, short(f)) or InputDataError(
                f"{role} {short(f)}: cannot be read") from None
        out.append((f, None if line is None else str(line).lstrip("\ufeff")))
    if len(files) > MAX_HEADER_FILES:
        log.info("%s: checked the first line of %d of its %d files", role, MAX_HEADER_FILES,
                 len(files))
    return out


def fields_of(line: str, sep: str) -> list[str]:
    """The fields of one CSV line (RFC 4180 quoting), stripped."""
    if len(sep) != 1:
        return [f.strip() for f in line.split(sep)]
    row = next(csv.reader([line], delimiter=sep, quotechar='"', doublequote=True), [])
    return [f.strip() for f in row]


def is_header(fields: list[str]) -> bool:
    """A first line is a header when none of its fields is a number."""
    return bool(fields) and not any(_NUMBER.fullmatch(f) for f in fields)


def agree(lines: list[tuple[str, str | None]], sep: str, role: str, given: str,
          detect: bool) -> tuple[bool, list[str]] | None:
    """(has a header, the first file's fields) after checking every file starts alike;
    None when every file is empty. ``detect``: decide per file whether the first line
    is a header (else every file has one)."""
    seen: tuple[str, bool, list[str]] | None = None
    for f, line in lines:
        if line is None or not line.strip():
            continue
        fields = fields_of(line, sep)
        header = is_header(fields) if detect else True
        if seen is None:
            seen = (f, header, fields)
            continue
        f0, header0, fields0 = seen
        if header != header0:
            has, lacks = (f0, f) if header0 else (f, f0)
            raise InputDataError(f"{role} {given}: {short(has)} has a header row but "
                                 f"{short(lacks)} has none; all files must agree")
        if header and fields != fields0:
            raise InputDataError(f"{role} {given}: {short(f0)} has the header "
                                 f"{sep.join(fields0)!r} but {short(f)} has "
                                 f"{sep.join(fields)!r}; all files must have the same columns "
                                 f"in the same order")
        if not header and len(fields) != len(fields0):
            raise InputDataError(f"{role} {given}: {short(f0)} has {len(fields0)} fields per "
                                 f"line but {short(f)} has {len(fields)}; all files must agree")
    return None if seen is None else (seen[1], seen[2])
