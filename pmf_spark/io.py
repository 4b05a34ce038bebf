"""Reading ratings (MovieLens formats, CSV, Parquet) with validation in one pass,
and writing outputs atomically.

Every file operation goes through Hadoop's FileSystem API (via the session's
JVM) so the same code serves local paths, HDFS, S3A and the rest.

Validation happens at the boundary: schema problems (missing path, missing
columns) before any Spark job; value problems (wrong field count, nulls,
non-numeric or non-finite ratings, ratings outside the scale, fractional or
non-integer ids) in a single aggregation over the input. Each problem raises
:class:`~pmf_spark.errors.InputDataError` with a one-line message that names
the file, the column and an example value.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import posixpath
import re
import uuid
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from .errors import InputDataError

log = logging.getLogger("pmf_spark")

CORRUPT = "_corrupt_record"
_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_INT_PATTERN = r"^\s*[+-]?[0-9]+\s*$"


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
                      "a header row and one rating per line"),
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


@dataclass(frozen=True)
class CleanRatings:
    """Validated ratings: ``df`` has columns user, item (long or string), rating
    (double) and ts (long, may be null); plus what the validation pass saw."""

    df: DataFrame
    path: str
    n: int
    id_type: str          # "long" or "string"
    rating_min: float
    rating_max: float
    scale: tuple[float, float] | None
    float32_exact: bool
    has_timestamp: bool


# --------------------------------------------------------------------------- paths

def _jvm_fs(spark: SparkSession, path: str):
    jvm = spark.sparkContext._jvm
    jpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = jpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs, jpath


def path_exists(spark: SparkSession, path: str) -> bool:
    fs, jpath = _jvm_fs(spark, path)
    found = fs.globStatus(jpath)
    return found is not None and len(found) > 0


def qualify(spark: SparkSession, path: str) -> str:
    """The fully qualified form of ``path`` (scheme, absolute)."""
    fs, jpath = _jvm_fs(spark, path)
    return str(fs.makeQualified(jpath).toString())


def write_text(spark: SparkSession, path: str, text: str) -> None:
    fs, jpath = _jvm_fs(spark, path)
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
    fs, jpath = _jvm_fs(spark, path)
    if not fs.exists(jpath):
        raise InputDataError(f"{path}: no such file")
    stream = fs.open(jpath)
    try:
        jvm = spark.sparkContext._jvm
        data = jvm.org.apache.commons.io.IOUtils.toByteArray(stream)
    finally:
        stream.close()
    return bytes(data).decode("utf-8")


def delete_path(spark: SparkSession, path: str) -> None:
    fs, jpath = _jvm_fs(spark, path)
    if fs.exists(jpath):
        fs.delete(jpath, True)


def _short(file_uri: str) -> str:
    return re.sub(r"^file:(//)?", "", file_uri or "")


# --------------------------------------------------------------------------- reading

def guess_format(path: str) -> str:
    base = posixpath.basename(path.rstrip("/"))
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
    by_norm = {}
    for c in columns:
        by_norm.setdefault(_norm(c), c)
    for name in _GUESS[kind]:
        if name in by_norm:
            return by_norm[name]
    if required:
        raise InputDataError(f"{path}: cannot find the {kind} column (columns: "
                             f"{', '.join(columns)}); name it with --{kind}-col")
    return None


def _sniff_sep(spark: SparkSession, path: str) -> str:
    """The field separator of a csv-format file without --sep: the first of , tab ; |
    that occurs most on its first line (',' when none does)."""
    first = spark.read.text(path).limit(1).collect()
    line = first[0][0] if first and first[0][0] else ""
    counts = {c: line.count(c) for c in (",", "\t", ";", "|")}
    best = max(counts, key=lambda c: counts[c])
    if counts[best] == 0:
        return ","
    if best != ",":
        log.info("%s: fields separated by %r (pass --sep to choose another)", _short(path), best)
    return best


def _positional(spec: FormatSpec, n: int, path: str, sep: str) -> FormatSpec:
    """A header-less CSV: columns _c0.._c{n-1} (Spark's names), read as user, item,
    rating and, when there is a fourth, timestamp, unless named with the flags."""
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


def read_raw(spark: SparkSession, path: str, fmt: str, *, user_col=None, item_col=None,
             rating_col=None, timestamp_col=None, sep=None) -> tuple[DataFrame, FormatSpec]:
    """Read ratings without interpreting values: columns u, i, r, ts, _file, _bad
    (the raw line of a row with the wrong number of fields, else null)."""
    if not path_exists(spark, path):
        raise InputDataError(f"{path}: no such file or directory")
    if fmt == "auto":
        fmt = guess_format(path)
        if fmt == "movielens-csv":
            # ratings.csv is MovieLens' only with MovieLens' header
            header = spark.read.option("header", True).csv(path).columns
            if not {"userId", "movieId"} <= set(header):
                fmt = "csv"
    if fmt not in SPECS:
        raise InputDataError(f"unknown format {fmt!r} (choose from {', '.join(SPECS)})")
    spec = SPECS[fmt]
    reader = spark.read
    if fmt == "parquet":
        try:
            df = reader.parquet(path)
        except Exception as exc:  # a non-Parquet file
            raise InputDataError(f"{path}: not readable as Parquet "
                                 f"({str(exc).splitlines()[0][:200]})") from None
        bad = F.lit(None).cast("string")
        columns = df.columns
    else:
        delim = sep or (_sniff_sep(spark, path) if fmt == "csv" else spec.sep)
        if spec.header:
            head = (reader.option("header", True).option("sep", delim)
                    .option("inferSchema", False).csv(path))
            columns = head.columns
            if not columns:
                raise InputDataError(f"{path}: empty file (expected {spec.describe})")
            if fmt == "csv" and any(_NUMBER.fullmatch(c.strip()) for c in columns):
                # the first line holds a number: it is data, not a header
                spec = _positional(spec, len(columns), path, delim)
                columns = list(spec.columns)
                log.info("%s has no header row: reading its columns by position as %s",
                         _short(path), ", ".join(columns))
        else:
            columns = list(spec.columns)
        schema = T.StructType([T.StructField(c, T.StringType()) for c in columns]
                              + [T.StructField(CORRUPT, T.StringType())])
        df = (reader.schema(schema).option("sep", delim).option("header", spec.header)
              .option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT)
              .option("ignoreLeadingWhiteSpace", True).option("ignoreTrailingWhiteSpace", True)
              .csv(path))
        bad = F.col(CORRUPT)
    u = _pick("user", user_col, spec.user, columns, path)
    i = _pick("item", item_col, spec.item, columns, path)
    r = _pick("rating", rating_col, spec.rating, columns, path)
    t = _pick("timestamp", timestamp_col, spec.timestamp, columns, path, required=False)
    if len({u, i, r}) < 3:
        raise InputDataError(f"{path}: user, item and rating must be different columns "
                             f"(got {u!r}, {i!r}, {r!r})")
    out = df.select(
        F.col(f"`{u}`").alias("u"), F.col(f"`{i}`").alias("i"), F.col(f"`{r}`").alias("r"),
        (F.col(f"`{t}`") if t else F.lit(None).cast("string")).alias("ts"),
        F.col("_metadata.file_path").alias("_file"), bad.alias("_bad"))
    return out, dataclasses.replace(spec, user=u, item=i, rating=r, timestamp=t)


def _example(cond: Column, *values: Column) -> Column:
    """The smallest (file, values...) among rows where ``cond`` holds: a stable example."""
    return F.min(F.when(cond, F.struct(F.col("_file"), *values)))


def _fmt_num(x: float) -> str:
    return f"{x:g}"


def load_ratings(spark: SparkSession, path: str, fmt: str = "auto", *, user_col=None,
                 item_col=None, rating_col=None, timestamp_col=None, sep=None,
                 rating_min: float | None = None, rating_max: float | None = None,
                 role: str = "ratings") -> CleanRatings:
    """Read and validate ratings in one aggregation; raise InputDataError on bad input."""
    raw, spec = read_raw(spark, path, fmt, user_col=user_col, item_col=item_col,
                         rating_col=rating_col, timestamp_col=timestamp_col, sep=sep)
    return validate_raw(raw, spec, path, role=role, rating_min=rating_min,
                        rating_max=rating_max)


def frame_ratings(df: DataFrame, user_col: str, item_col: str, rating_col: str,
                  timestamp_col: str | None = None, *, rating_min: float | None = None,
                  rating_max: float | None = None, role: str = "ratings") -> CleanRatings:
    """Validate ratings given as a DataFrame (the Python API) like a file."""
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
                        rating_max=rating_max)


def validate_raw(raw: DataFrame, spec: FormatSpec, path: str, *, role: str = "ratings",
                 rating_min: float | None = None,
                 rating_max: float | None = None) -> CleanRatings:
    """The one-pass validation of raw columns (u, i, r, ts, _file, _bad)."""
    dtypes = dict(raw.dtypes)
    where = f"{role} {path}"

    lo = rating_min if rating_min is not None else (spec.scale[0] if spec.scale else None)
    hi = rating_max if rating_max is not None else (spec.scale[1] if spec.scale else None)

    def id_columns(c: str):
        typ = dtypes[c]
        col = F.col(c)
        if typ in ("bigint", "int", "smallint", "tinyint"):
            as_long = col.cast("long")
            return as_long, F.lit(False), F.lit(False), col.isNull()
        if typ in ("double", "float") or typ.startswith("decimal"):
            d = col.cast("double")
            integral = (d == F.floor(d)) & (F.abs(d) < 2.0 ** 53)
            return (F.when(integral, d.cast("long")), ~integral & ~F.isnan(d),
                    F.isnan(d), col.isNull())
        s = F.trim(col.cast("string"))
        d = s.try_cast("double")
        as_long = F.coalesce(s.try_cast("long"),
                             F.when((d == F.floor(d)) & (F.abs(d) < 2.0 ** 53), d.cast("long")))
        fractional = d.isNotNull() & (d != F.floor(d)) & ~F.isnan(d)
        nonint = s.isNotNull() & as_long.isNull()
        return as_long, fractional, nonint, s.isNull() | (s == "")

    u_long, u_frac, u_nonint, u_null = id_columns("u")
    i_long, i_frac, i_nonint, i_null = id_columns("i")
    if dtypes["r"] in ("string",):
        r_val = F.trim(F.col("r")).try_cast("double")
    elif dtypes["r"] in ("bigint", "int", "smallint", "tinyint", "double", "float") \
            or dtypes["r"].startswith("decimal"):
        r_val = F.col("r").cast("double")
    else:
        raise InputDataError(f"{where}: column {spec.rating!r} has type {dtypes['r']}, "
                             f"expected a number")
    r_null = F.col("r").isNull() | (F.trim(F.col("r").cast("string")) == "")
    r_nonnum = ~r_null & r_val.isNull()
    r_nonfinite = r_val.isNotNull() & (F.isnan(r_val) | (F.abs(r_val) == float("inf")))
    r_ok = r_val.isNotNull() & ~r_nonfinite
    ts_val = (F.col("ts").cast("long") if dtypes["ts"] != "string"
              else F.trim(F.col("ts")).try_cast("double").cast("long"))
    ts_bad = F.col("ts").isNotNull() & ts_val.isNull() if spec.timestamp else F.lit(False)
    good_row = F.col("_bad").isNull()

    def count(cond):
        return F.sum(F.when(cond, 1).otherwise(0))

    aggs = {
        "n": F.count(F.lit(1)),
        "bad": count(~good_row), "bad_ex": _example(~good_row, F.col("_bad")),
        "u_null": count(good_row & u_null), "u_null_ex": _example(good_row & u_null, F.col("i")),
        "i_null": count(good_row & i_null), "i_null_ex": _example(good_row & i_null, F.col("u")),
        "u_frac": count(good_row & u_frac), "u_frac_ex": _example(good_row & u_frac, F.col("u")),
        "i_frac": count(good_row & i_frac), "i_frac_ex": _example(good_row & i_frac, F.col("i")),
        "u_nonint": count(good_row & u_nonint),
        "u_nonint_ex": _example(good_row & u_nonint, F.col("u").cast("string")),
        "i_nonint": count(good_row & i_nonint),
        "i_nonint_ex": _example(good_row & i_nonint, F.col("i").cast("string")),
        "r_null": count(good_row & r_null),
        "r_null_ex": _example(good_row & r_null, F.col("u").cast("string"),
                              F.col("i").cast("string")),
        "r_nonnum": count(good_row & r_nonnum),
        "r_nonnum_ex": _example(good_row & r_nonnum, F.col("r").cast("string")),
        "r_nonfinite": count(good_row & r_nonfinite),
        "r_nonfinite_ex": _example(good_row & r_nonfinite, F.col("r").cast("string")),
        "ts_bad": count(good_row & ts_bad),
        "ts_bad_ex": _example(good_row & ts_bad, F.col("ts").cast("string")),
        "r_min": F.min(F.when(good_row & r_ok, r_val)),
        "r_max": F.max(F.when(good_row & r_ok, r_val)),
        "f32_inexact": count(good_row & r_ok & (r_val.cast("float").cast("double") != r_val)),
    }
    if lo is not None:
        out_of = good_row & r_ok & ((r_val < F.lit(lo)) | (r_val > F.lit(hi)))
        aggs["r_range"] = count(out_of)
        aggs["r_range_ex"] = _example(out_of, F.col("r").cast("string"), F.col("u").cast("string"),
                                      F.col("i").cast("string"))
    stats = raw.agg(*[v.alias(k) for k, v in aggs.items()]).first().asDict()

    def ex_file(ex) -> str:
        return _short(ex[0]) if ex and ex[0] else path

    if stats["n"] == 0:
        raise InputDataError(f"{where}: no ratings (empty input)")
    if stats["bad"]:
        ex = stats["bad_ex"]
        raise InputDataError(f"{role} {ex_file(ex)}: {stats['bad']} line(s) with the wrong number "
                             f"of fields (expected {spec.describe}), e.g. {ex[1]!r}")
    for side, name in (("u", spec.user), ("i", spec.item)):
        if stats[f"{side}_null"]:
            ex = stats[f"{side}_null_ex"]
            raise InputDataError(f"{role} {ex_file(ex)}, column {name!r}: {stats[side + '_null']} "
                                 f"row(s) with a missing id")
        if stats[f"{side}_frac"]:
            ex = stats[f"{side}_frac_ex"]
            raise InputDataError(f"{role} {ex_file(ex)}, column {name!r}: fractional id "
                                 f"{ex[1]!s} ({stats[side + '_frac']} row(s)); ids must be "
                                 f"integers or strings")
    if stats["r_null"]:
        ex = stats["r_null_ex"]
        raise InputDataError(f"{role} {ex_file(ex)}, column {spec.rating!r}: "
                             f"{stats['r_null']} row(s) with a missing rating, e.g. user {ex[1]} "
                             f"item {ex[2]}")
    if stats["r_nonnum"]:
        ex = stats["r_nonnum_ex"]
        raise InputDataError(f"{role} {ex_file(ex)}, column {spec.rating!r}: non-numeric rating "
                             f"{ex[1]!r} ({stats['r_nonnum']} row(s))")
    if stats["r_nonfinite"]:
        ex = stats["r_nonfinite_ex"]
        raise InputDataError(f"{role} {ex_file(ex)}, column {spec.rating!r}: non-finite rating "
                             f"{ex[1]!r} ({stats['r_nonfinite']} row(s))")
    if lo is not None and stats["r_range"]:
        ex = stats["r_range_ex"]
        raise InputDataError(f"{role} {ex_file(ex)}, column {spec.rating!r}: rating {ex[1]} "
                             f"(user {ex[2]}, item {ex[3]}) is outside the scale "
                             f"[{_fmt_num(lo)}, {_fmt_num(hi)}] ({stats['r_range']} row(s)); "
                             f"set --rating-min/--rating-max if the scale differs")
    if stats["ts_bad"]:
        ex = stats["ts_bad_ex"]
        raise InputDataError(f"{role} {ex_file(ex)}, column {spec.timestamp!r}: non-numeric "
                             f"timestamp {ex[1]!r} ({stats['ts_bad']} row(s))")

    integer_ids = stats["u_nonint"] == 0 and stats["i_nonint"] == 0
    if spec.integer_ids and not integer_ids:
        side, name = ("u", spec.user) if stats["u_nonint"] else ("i", spec.item)
        ex = stats[f"{side}_nonint_ex"]
        raise InputDataError(f"{role} {ex_file(ex)}, column {name!r}: non-integer id {ex[1]!r} "
                             f"({stats[side + '_nonint']} row(s)); {spec.name} ids are integers")
    if integer_ids:
        user, item, id_type = u_long, i_long, "long"
    else:
        user = F.trim(F.col("u").cast("string"))
        item = F.trim(F.col("i").cast("string"))
        id_type = "string"
    df = raw.select(user.alias("user"), item.alias("item"), r_val.alias("rating"),
                    ts_val.alias("ts"))
    return CleanRatings(df=df, path=path, n=int(stats["n"]), id_type=id_type,
                        rating_min=float(stats["r_min"]), rating_max=float(stats["r_max"]),
                        scale=(lo, hi) if lo is not None else None,
                        float32_exact=stats["f32_inexact"] == 0,
                        has_timestamp=spec.timestamp is not None)


# --------------------------------------------------------------------------- writing

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
        fs, jpath = _jvm_fs(spark, self.staging)
        fs.mkdirs(jpath)

    def path(self, name: str) -> str:
        return posixpath.join(self.staging, name)

    def write_text(self, name: str, text: str) -> None:
        write_text(self.spark, self.path(name), text)

    def write_json(self, name: str, obj) -> None:
        self.write_text(name, json.dumps(obj, indent=2, sort_keys=False, default=_json_default)
                        + "\n")

    def commit(self, marker: dict | None = None) -> str:
        """Write the completion marker ``_SUCCESS`` and swap the staging directory in."""
        self.write_json("_SUCCESS", marker or {})
        fs, final = _jvm_fs(self.spark, self.final)
        _, staging = _jvm_fs(self.spark, self.staging)
        _, backup = _jvm_fs(self.spark, self.backup)
        had_previous = fs.exists(final)
        if had_previous and not fs.rename(final, backup):
            raise OSError(f"cannot move the previous output {self.final} aside")
        if not fs.rename(staging, final):
            if had_previous:
                fs.rename(backup, final)
            raise OSError(f"cannot move {self.staging} to {self.final}")
        if had_previous:
            fs.delete(backup, True)
        return self.final

    def abort(self) -> None:
        try:
            delete_path(self.spark, self.staging)
        except Exception:  # best effort: never hide the original failure
            pass


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def local_path(path: str) -> str | None:
    """The local filesystem path of a ``file:`` or scheme-less path, else None."""
    if path.startswith("file:"):
        return re.sub(r"^file:(//)?", "", path) or "/"
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", path):
        return None
    return os.path.abspath(path)


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
            raise InputDataError(f"{role} {_short(bad[0])}: {bad[1]!r} is not an integer id")
        return ids.select("id")
    return lines.select(F.col("v").alias("id"))
