"""Reading ratings: MovieLens formats, CSV and Parquet, through Hadoop's FileSystem
API so the same code serves local paths, HDFS, S3A and the rest.

Which files a path names (literal names, directories, compression) is
:mod:`pmf_spark.inputs.paths`. CSV follows RFC 4180 (``"`` quotes, ``""`` inside them).
Validation happens at the boundary: schema problems (missing path, missing columns,
files that disagree on their header) here, before any Spark job; value problems
(wrong field count, nulls, non-numeric or non-finite ratings, ratings outside the
scale, ids the column's type cannot hold) in a single aggregation over the input
(:mod:`pmf_spark.inputs.validate`). Each problem raises
:class:`~pmf_spark.errors.InputDataError` with a one-line message that names the
file, the column and an example value.
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath
import re
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pmf_spark.errors import InputDataError
from pmf_spark.inputs.paths import (
    InputFiles,
    agree,
    fields_of,
    first_lines,
    resolve,
    strip_compression,
)
from pmf_spark.inputs.validate import CleanRatings, validate_raw
from pmf_spark.runtime.failures import read_failure
from pmf_spark.storage.hadoop import path_exists, short

log = logging.getLogger("pmf_spark")

CORRUPT = "_corrupt_record"


@dataclass(frozen=True)
class FormatSpec:
    """How a ratings format is laid out."""

    name: str
    sep: str | None
    header: bool
    columns: tuple[str, ...] | None   # positional names for header-less text formats
    user: str | None
    item: str | None
    rating: str | None
    timestamp: str | None
    scale: tuple[float, float] | None
    integer_ids: bool
    describe: str
    #: text without column types: an id column is integer when every value is an
    #: integer written as a 64-bit integer prints (no leading zero, no '+'), else string
    infer_ids: bool = False


SPECS = {
    "movielens-100k": FormatSpec("movielens-100k", "\t", False,
                                 ("user", "item", "rating", "timestamp"),
                                 "user", "item", "rating", "timestamp", (1.0, 5.0), True,
                                 "4 tab-separated fields: user item rating timestamp"),
    "movielens-dat": FormatSpec("movielens-dat", "::", False,
                                ("user", "item", "rating", "timestamp"),
                                "user", "item", "rating", "timestamp", (0.5, 5.0), True,
                                "4 '::'-separated fields: UserID::MovieID::Rating::Timestamp"),
    "movielens-csv": FormatSpec("movielens-csv", ",", True, None,
                                "userId", "movieId", "rating", "timestamp", (0.5, 5.0), True,
                                "a header userId,movieId,rating,timestamp"),
    "csv": FormatSpec("csv", ",", True, None, None, None, None, None, None, False,
                      "a header row and one rating per line", infer_ids=True),
    "parquet": FormatSpec("parquet", None, False, None, None, None, None, None, None, False,
                          "Parquet"),
}

# column names recognised without a flag, compared lower-case with only letters and
# digits kept (so "User-ID", "user_id" and "userId" all read as "userid")
_GUESS = {
    "user": ("user", "userid", "uid", "customer", "customerid", "reviewerid", "member",
             "memberid"),
    "item": ("item", "itemid", "movie", "movieid", "product", "productid", "asin", "isbn",
             "book", "bookid", "sku", "track", "trackid", "song", "songid", "iid"),
    "rating": ("rating", "ratings", "score", "stars", "bookrating", "overall", "value"),
    "timestamp": ("timestamp", "ts", "time", "unixreviewtime"),
}


def _norm(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


# --------------------------------------------------------------------------- reading

def guess_format(path: str, listing: list[str] | None = None) -> str:
    """The format a file name implies (a compression suffix aside: ``ratings.dat.gz``
    reads as ``ratings.dat``); for a directory, ``listing`` (its file names) decides:
    all CSV/TSV files make it csv."""
    base = strip_compression(posixpath.basename(path.rstrip("/")))
    names = [strip_compression(n) for n in listing or [] if not n.startswith((".", "_"))]
    if names and all(n.endswith((".csv", ".tsv")) for n in names):
        return "csv"
    if base == "u.data" or re.fullmatch(r"u[a-z0-9]*\.(base|test)", base):
        return "movielens-100k"
    if base.endswith(".dat"):
        return "movielens-dat"
    if base.endswith(".csv"):
        return "movielens-csv" if base == "ratings.csv" else "csv"
    if base.endswith(".tsv"):
        return "csv"
    if base.endswith(".parquet") or "." not in base:
        return "parquet"
    raise InputDataError(f"{path}: cannot tell the format from the file name; pass --format "
                         f"(one of {', '.join(k for k in SPECS)})")


def _pick(kind: str, given: str | None, default: str | None, columns: list[str], path: str,
          required: bool = True) -> str | None:
    if given is not None:
        if given not in columns:
            raise InputDataError(f"{path}: no column {given!r} for the {kind} "
                                 f"(columns: {', '.join(columns)})")
        return given
    if default is not None and default in columns:
        return default
    by_norm: dict[str, str] = {}
    for c in columns:
        by_norm.setdefault(_norm(c), c)
    for name in _GUESS[kind]:
        if name in by_norm:
            return by_norm[name]
    if required:
        raise InputDataError(f"{path}: cannot find the {kind} column (columns: "
                             f"{', '.join(columns)}); name it with --{kind}-col")
    return None


def _sniff_sep(lines: list[tuple[str, str | None]], path: str) -> str:
    """The field separator of a csv-format input without --sep: the first of , tab ; |
    that occurs most on its first line (',' when none does)."""
    line = next((ln for _, ln in lines if ln), "")
    counts = {c: line.count(c) for c in (",", "\t", ";", "|")}
    best = max(counts, key=lambda c: counts[c])
    if counts[best] == 0:
        return ","
    if best != ",":
        log.info("%s: fields separated by %r (pass --sep to choose another)", short(path), best)
    return best


def _positional(spec: FormatSpec, n: int, path: str, sep: str,
                implicit: bool = False) -> FormatSpec:
    """A header-less CSV: columns _c0.._c{n-1} (Spark's names), read as user, item,
    rating and, when there is a fourth, timestamp, unless named with the flags.
    Implicit feedback may be bare (user, item) pairs."""
    if implicit and n == 2:
        return dataclasses.replace(
            spec, header=False, columns=("_c0", "_c1"), user="_c0", item="_c1", rating=None,
            timestamp=None, describe=f"2 {sep!r}-separated fields with no header row: user, "
                                     f"item")
    if n < 3:
        raise InputDataError(f"{path}: no header row and {n} field(s) on the first line; a "
                             f"header-less CSV needs user, item, rating (and optionally "
                             f"timestamp) in that order")
    columns = tuple(f"_c{k}" for k in range(n))
    return dataclasses.replace(
        spec, header=False, columns=columns, user="_c0", item="_c1", rating="_c2",
        timestamp="_c3" if n > 3 else None,
        describe=f"{n} {sep!r}-separated fields with no header row: user, item, rating"
                 + (", timestamp" if n > 3 else ""))


def _header_names(fields: list[str], path: str) -> list[str]:
    names = [f or f"_c{k}" for k, f in enumerate(fields)]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputDataError(f"{path}: the header names column {twice[0]!r} twice; column "
                             f"names must be unique")
    return names


def _text_layout(spark: SparkSession, inputs: InputFiles, fmt: str, spec: FormatSpec,
                 sep: str | None, path: str, role: str,
                 implicit: bool = False) -> tuple[FormatSpec, list[str], str]:
    """(spec, column names, separator) of a text input, from every file's first line."""
    return layout_of(first_lines(spark, inputs.files, role), fmt, spec, sep, path, role,
                     implicit)


def layout_of(lines: list[tuple[str, str | None]], fmt: str, spec: FormatSpec,
              sep: str | None, path: str, role: str,
              implicit: bool = False) -> tuple[FormatSpec, list[str], str]:
    """(spec, column names, separator) of a text input from its files' first lines
    ((file, line or None when empty), as :func:`~pmf_spark.inputs.paths.first_lines` gives)."""
    delim = sep or (_sniff_sep(lines, path) if fmt == "csv" else spec.sep) or ","
    if not spec.header:
        return spec, list(spec.columns or ()), delim
    found = agree(lines, delim, role, path, detect=fmt == "csv")
    if found is None:
        raise InputDataError(f"{path}: empty file (expected {spec.describe})")
    has_header, fields = found
    if has_header:
        return spec, _header_names(fields, path), delim
    spec = _positional(spec, len(fields), path, delim, implicit)
    log.info("%s has no header row: reading its columns by position as %s", short(path),
             ", ".join(spec.columns or ()))
    return spec, list(spec.columns or ()), delim


def _auto_format(spark: SparkSession, inputs: InputFiles, path: str, role: str) -> str:
    name = path if inputs.single or not inputs.files else inputs.files[0]
    fmt = guess_format(path) if inputs.single else guess_format(name)
    if fmt == "movielens-csv":
        fmt = _movielens_or_csv(first_lines(spark, inputs.files[:1], role))
    return fmt


def _movielens_or_csv(lines: list[tuple[str, str | None]]) -> str:
    """ratings.csv is MovieLens' only with MovieLens' header."""
    line = next((ln for _, ln in lines if ln), "")
    return "movielens-csv" if {"userId", "movieId"} <= set(fields_of(line, ",")) else "csv"


def _value_column(kind_col: str | None, spec_col: str | None, columns, path: str,
                  implicit: bool, value_col: str | None) -> str | None:
    """The rating column, or with implicit feedback the --value-col (None: every row
    counts 1, whatever rating column the format has)."""
    if not implicit:
        return _pick("rating", kind_col, spec_col, columns, path)
    if value_col is None:
        return None
    if value_col not in columns:
        raise InputDataError(f"{path}: no column {value_col!r} for the feedback value "
                             f"(columns: {', '.join(c for c in columns if c != CORRUPT)})")
    return value_col


def _rating_or_one(r: str | None) -> Column:
    return F.col(f"`{r}`") if r else F.lit(1).cast("int")


def read_raw(spark: SparkSession, path: str, fmt: str, *, user_col=None, item_col=None,
             rating_col=None, timestamp_col=None, sep=None,
             role: str = "ratings", feedback: str = "explicit",
             value_col: str | None = None) -> tuple[DataFrame, FormatSpec]:
    """Read ratings without interpreting values: columns u, i, r, ts, _file, _bad
    (the raw line of a row with the wrong number of fields, else null). With
    ``feedback`` 'implicit', r is ``value_col`` (or 1 for every row)."""
    implicit = feedback == "implicit"
    inputs = resolve(spark, path, role)
    if fmt == "auto":
        fmt = _auto_format(spark, inputs, path, role)
    if fmt not in SPECS:
        raise InputDataError(f"unknown format {fmt!r} (choose from {', '.join(SPECS)})")
    spec = SPECS[fmt]
    reader = spark.read.options(**inputs.options)
    if fmt == "parquet":
        try:
            df = reader.parquet(inputs.read_path)
        except Exception as exc:  # a non-Parquet file
            raise read_failure(exc, role, path) or InputDataError(
                f"{path}: not readable as Parquet ({str(exc).splitlines()[0][:200]})") from None
        bad = F.lit(None).cast("string")
        columns = df.columns
    else:
        spec, columns, delim = _text_layout(spark, inputs, fmt, spec, sep, path, role,
                                            implicit)
        schema = T.StructType([T.StructField(c, T.StringType()) for c in columns]
                              + [T.StructField(CORRUPT, T.StringType())])
        df = (reader.schema(schema).option("sep", delim).option("header", spec.header)
              .option("quote", '"').option("escape", '"')
              .option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT)
              .option("ignoreLeadingWhiteSpace", True).option("ignoreTrailingWhiteSpace", True)
              .csv(inputs.read_path))
        bad = F.col(CORRUPT)
    u, i, r, t = _columns(spec, columns, path, user_col, item_col, rating_col, timestamp_col,
                          implicit, value_col)
    source = F.lit(path) if inputs.single else F.col("_metadata.file_path")
    out = df.select(
        F.col(f"`{u}`").alias("u"), F.col(f"`{i}`").alias("i"), _rating_or_one(r).alias("r"),
        (F.col(f"`{t}`") if t else F.lit(None).cast("string")).alias("ts"),
        source.alias("_file"), bad.alias("_bad"))
    return out, dataclasses.replace(spec, user=u, item=i, rating=r, timestamp=t)


def _columns(spec: FormatSpec, columns: list[str], path: str, user_col, item_col, rating_col,
             timestamp_col, implicit: bool, value_col: str | None):
    """(user, item, rating or None, timestamp or None) column names of an input."""
    u = _pick("user", user_col, spec.user, columns, path)
    i = _pick("item", item_col, spec.item, columns, path)
    r = _value_column(rating_col, spec.rating, columns, path, implicit, value_col)
    t = _pick("timestamp", timestamp_col, spec.timestamp, columns, path, required=False)
    _distinct(path, u, i, r, implicit)
    return u, i, r, t


def load_ratings(spark: SparkSession, path: str, fmt: str = "auto", *, user_col=None,
                 item_col=None, rating_col=None, timestamp_col=None, sep=None,
                 rating_min: float | None = None, rating_max: float | None = None,
                 role: str = "ratings", id_type: str = "auto", feedback: str = "explicit",
                 value_col: str | None = None) -> CleanRatings:
    """Read and validate ratings in one aggregation; raise InputDataError on bad input.
    ``id_type``: 'auto' (from the format and the column types), 'string', or
    'integer'/'long' (parse them). ``feedback`` 'implicit': events whose values
    (``value_col``, else 1 per row) are counts or weights >= 0."""
    raw, spec = read_raw(spark, path, fmt, user_col=user_col, item_col=item_col,
                         rating_col=rating_col, timestamp_col=timestamp_col, sep=sep, role=role,
                         feedback=feedback, value_col=value_col)
    return validate_raw(raw, spec, path, role=role, rating_min=rating_min,
                        rating_max=rating_max, id_type=id_type,
                        implicit=feedback == "implicit")


def _distinct(where: str, u: str | None, i: str | None, r: str | None,
              implicit: bool) -> None:
    cols = [u, i] + ([r] if r else [])
    if len(set(cols)) < len(cols):
        what = "user, item and " + ("value" if implicit else "rating")
        raise InputDataError(f"{where}: {what} must be different columns (got "
                             f"{', '.join(repr(c) for c in cols)})")


def frame_ratings(df: DataFrame, user_col: str, item_col: str, rating_col: str,
                  timestamp_col: str | None = None, *, rating_min: float | None = None,
                  rating_max: float | None = None, role: str = "ratings",
                  implicit: bool = False) -> CleanRatings:
    """Validate ratings given as a DataFrame (the Python API) like a file
    (``implicit``: the rating column holds event counts or weights >= 0)."""
    for kind, c in (("user", user_col), ("item", item_col), ("rating", rating_col),
                    ("timestamp", timestamp_col)):
        if c is not None and c not in df.columns:
            raise InputDataError(f"{role} DataFrame: no column {c!r} for the {kind} "
                                 f"(columns: {', '.join(df.columns)})")
    raw = df.select(F.col(f"`{user_col}`").alias("u"), F.col(f"`{item_col}`").alias("i"),
                    F.col(f"`{rating_col}`").alias("r"),
                    (F.col(f"`{timestamp_col}`") if timestamp_col
                     else F.lit(None).cast("string")).alias("ts"),
                    F.lit("DataFrame").alias("_file"), F.lit(None).cast("string").alias("_bad"))
    spec = dataclasses.replace(SPECS["parquet"], user=user_col, item=item_col,
                               rating=rating_col, timestamp=timestamp_col)
    return validate_raw(raw, spec, "DataFrame", role=role, rating_min=rating_min,
                        rating_max=rating_max, implicit=implicit)



def load_table(spark: SparkSession, name: str, *, user_col=None, item_col=None,
               rating_col=None, timestamp_col=None, rating_min: float | None = None,
               rating_max: float | None = None, role: str = "ratings",
               id_type: str = "auto", feedback: str = "explicit",
               value_col: str | None = None) -> CleanRatings:
    """Validate ratings from a table of the session's catalog (Hive metastore, Delta,
    Iceberg, ...) like a Parquet file: columns by name (or recognised), one pass."""
    from pyspark.errors import AnalysisException

    where = f"table {name}"
    try:
        df = spark.table(name)
    except AnalysisException as exc:
        reason = str(exc).splitlines()[0][:200]
        raise InputDataError(f"{role} {where}: not readable from the session catalog "
                             f"({reason})") from None
    cols = df.columns
    u = _pick("user", user_col, None, cols, where)
    i = _pick("item", item_col, None, cols, where)
    implicit = feedback == "implicit"
    r = _value_column(rating_col, None, cols, where, implicit, value_col)
    t = _pick("timestamp", timestamp_col, None, cols, where, required=False)
    _distinct(where, u, i, r, implicit)
    raw = df.select(F.col(f"`{u}`").alias("u"), F.col(f"`{i}`").alias("i"),
                    _rating_or_one(r).alias("r"),
                    (F.col(f"`{t}`") if t else F.lit(None).cast("string")).alias("ts"),
                    F.lit(where).alias("_file"), F.lit(None).cast("string").alias("_bad"))
    spec = dataclasses.replace(SPECS["parquet"], name="table", user=u, item=i, rating=r,
                               timestamp=t, describe="a table")
    return validate_raw(raw, spec, where, role=role, rating_min=rating_min,
                        rating_max=rating_max, id_type=id_type, implicit=implicit)


def read_id_list(spark: SparkSession, path: str, id_type: str, role: str) -> DataFrame:
    """A file of ids, one per line ('#' comments and blank lines ignored), as a
    one-column frame ``id`` of the model's id type."""
    if not path_exists(spark, path):
        raise InputDataError(f"{role} {path}: no such file or directory")
    lines = (spark.read.text(path).select(F.trim(F.col("value")).alias("v"),
                                          F.col("_metadata.file_path").alias("_file"))
             .where((F.col("v") != "") & ~F.col("v").startswith("#")))
    if id_type == "long":
        ids = lines.select(F.col("v").try_cast("long").alias("id"), "v", "_file")
        bad = ids.where(F.col("id").isNull()).select("_file", "v").first()
        if bad is not None:
            raise InputDataError(f"{role} {short(bad[0])}: {bad[1]!r} is not an integer id")
        return ids.select("id")
    return lines.select(F.col("v").alias("id"))


def _local_first_line(path: str) -> tuple[bool, str | None]:
    """(read here, the first line of a local file or None when it is empty); not read
    here when its codec is not one Python reads, so the check is left to Spark."""
    import bz2
    import gzip
    from collections.abc import Callable
    from typing import Any

    low = path.lower()
    openers: dict[str, Callable[..., Any]] = {".gz": gzip.open, ".bz2": bz2.open}
    opener = openers.get(posixpath.splitext(low)[1], open)
    if opener is open and strip_compression(low) != low:
        return False, None
    with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as fh:
        line = fh.readline()
    return True, (line.rstrip("\r\n").lstrip("\ufeff") if line else None)


def check_local_input(path: str, fmt: str = "auto", *, role: str = "ratings",
                      on_local_fs: bool = True, user_col=None, item_col=None, rating_col=None,
                      timestamp_col=None, sep=None, feedback: str = "explicit",
                      value_col: str | None = None, columns: bool = True) -> None:
    """The checks of :func:`read_raw` that need no Spark, for an input on this machine:
    the path exists (or is a glob that matches), an archive Spark cannot read is refused,
    and a single text file's first line has the columns the options name. Raises
    :class:`InputDataError` with the message reading it with Spark would give; inputs
    elsewhere (a URI, or a scheme-less path when ``on_local_fs`` is False because the
    default filesystem may not be this machine's) are left to the job. ``columns``
    False: only that the path exists."""
    import glob
    import os

    from pmf_spark.inputs.paths import check_readable
    from pmf_spark.storage.hadoop import local_path

    local = local_path(path) if on_local_fs or path.startswith("file:") else None
    if local is None:
        return
    if not os.path.exists(local):
        if "{" not in local and not glob.glob(local):
            raise InputDataError(f"{path}: no such file or directory")
        return
    if not columns or not os.path.isfile(local):
        return
    check_readable(posixpath.basename(local), path)
    if fmt == "auto":
        fmt = guess_format(path)
    if fmt not in SPECS or fmt == "parquet":
        return
    import zlib

    try:
        read, line = _local_first_line(local)
    except OSError as exc:
        raise InputDataError(f"{role} {path}: cannot be read ({exc.strerror or exc})") from None
    except (EOFError, zlib.error) as exc:       # a truncated or corrupt archive
        raise InputDataError(f"{role} {path}: cannot be read (a truncated or corrupt "
                             f"archive: {exc})") from None
    if not read:
        return
    lines = [(path, line)]
    if fmt == "movielens-csv":
        fmt = _movielens_or_csv(lines)
    spec = SPECS[fmt]
    implicit = feedback == "implicit"
    spec, names, _ = layout_of(lines, fmt, spec, sep, path, role, implicit)
    _columns(spec, names, path, user_col, item_col, rating_col, timestamp_col, implicit,
             value_col)
