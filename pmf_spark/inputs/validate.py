"""The one-pass validation of raw ratings: every value problem found by a single
aggregation, then reported as one line naming the file, the column and an example.

Input: the raw columns ``u``, ``i``, ``r``, ``ts``, ``_file`` (the source file of the
row), ``_bad`` (the raw line of a row with the wrong number of fields, else null) that
:func:`pmf_spark.inputs.read.read_raw` produces. Output: :class:`CleanRatings`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pmf_spark.errors import InputDataError
from pmf_spark.runtime.failures import read_failure
from pmf_spark.runtime.sparkutil import first
from pmf_spark.storage.hadoop import short

log = logging.getLogger("pmf_spark")
_INTEGER_TYPES = ("bigint", "int", "smallint", "tinyint")
_MAX_EXACT = 2.0 ** 53


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
    implicit: bool = False    # rating holds event counts or weights (>= 0)


@dataclass(frozen=True)
class _IdExprs:
    """How one id column is read: the kept value, its type, when it is missing, and
    the problems (name -> condition) that refuse the input."""

    value: Column
    id_type: str          # "long" or "string"
    null: Column
    problems: dict[str, Column]
    #: a text column whose type its values decide: (the value as a long, when the
    #: value is an integer written exactly as the long prints); None otherwise
    whole: tuple[Column, Column] | None = None


def _refuse_type(typ: str, where: str, name: str, kind: str, expected: str) -> InputDataError:
    return InputDataError(f"{where}: column {name!r} (the {kind}) has type {typ}; "
                          f"expected {expected}")


def _numeric_id(d: Column) -> dict[str, Column]:
    """Problems of ids held as floating-point numbers ``d`` (never an ANSI failure)."""
    finite = ~F.isnan(d) & (F.abs(d) != float("inf"))
    return {"nonfinite": d.isNotNull() & ~finite,
            "frac": d.isNotNull() & finite & (d != F.round(d, 0)),
            "huge": d.isNotNull() & finite & (d == F.round(d, 0)) & (F.abs(d) >= _MAX_EXACT)}


def _string_ids(col: Column, integer: bool, suspicious: bool, infer: bool = False,
                plain: bool = False) -> _IdExprs:
    s = col.cast("string")
    null = s.isNull() | (F.trim(s) == "")
    if integer:
        as_long = F.trim(s).try_cast("long")
        problems = {"nonint": ~null & as_long.isNull()}
        if plain:   # '007' is not the training ratings' 7
            problems["unplain"] = ~null & as_long.isNotNull() & (as_long.cast("string") != s)
        return _IdExprs(as_long, "long", null, problems)
    if not suspicious:
        return _IdExprs(s, "string", null, {})
    d = F.trim(s).try_cast("double")
    finite = d.isNotNull() & ~F.isnan(d) & (F.abs(d) != float("inf"))
    whole = None
    if infer:   # '7' is the integer 7; '007', '+7', '-0', ' 7', 20 digits are not
        as_long = s.try_cast("long")
        whole = (as_long, as_long.isNotNull() & (as_long.cast("string") == s))
    # kept exactly as written; a column of numbers with fractions is most likely not ids
    return _IdExprs(s, "string", null, {"numeric": ~null & finite,
                                         "strfrac": ~null & finite & (d != F.round(d, 0))},
                    whole)


def _decimal_ids(col: Column, typ: str, mode: str) -> _IdExprs:
    p, sc = (int(x) for x in typ[len("decimal("):-1].split(","))
    whole = F.round(col, 0).try_cast(f"decimal({min(38, p - sc + 1)},0)")
    problems = {"frac": col.isNotNull() & (col != F.round(col, 0))}
    if mode == "string" or (mode == "auto" and p - sc > 18):
        return _IdExprs(whole.cast("string"), "string", col.isNull(), problems)
    value = whole.try_cast("long")
    problems["nonint"] = col.isNotNull() & (col == F.round(col, 0)) & value.isNull()
    return _IdExprs(value, "long", col.isNull(), problems)


def _id_exprs(typ: str, c: str, mode: str, where: str, name: str, kind: str) -> _IdExprs:
    """The id column ``c`` of Spark type ``typ`` read in ``mode`` ('auto', 'infer',
    'string', 'integer', 'plain'): integer columns give integer ids, string columns
    strings exactly as written (unless ``mode`` is 'integer', or 'plain': integers
    written plainly; with 'infer', text such as CSV, integers when every value is one
    written plainly: :func:`_settle`), floating-point and decimal columns integer ids
    when every value is one. Every cast is safe under ANSI mode."""
    col = F.col(c)
    as_string = mode == "string"
    if typ in _INTEGER_TYPES:
        return _IdExprs(col.cast("string") if as_string else col.cast("long"),
                        "string" if as_string else "long", col.isNull(), {})
    if typ in ("double", "float"):
        d = col.cast("double")
        value = d.try_cast("long")
        return _IdExprs(value.cast("string") if as_string else value,
                        "string" if as_string else "long", col.isNull(), _numeric_id(d))
    if typ.startswith("decimal("):
        return _decimal_ids(col, typ, {"infer": "auto", "plain": "integer"}.get(mode, mode))
    if typ == "string":
        return _string_ids(col, integer=mode in ("integer", "plain"),
                           suspicious=mode in ("auto", "infer"), infer=mode == "infer",
                           plain=mode == "plain")
    raise _refuse_type(typ, where, name, kind, "integers or strings")


def _rating_value(typ: str, where: str, name: str) -> Column:
    if typ == "string":
        return F.trim(F.col("r")).try_cast("double")
    if typ in _INTEGER_TYPES + ("double", "float") or typ.startswith("decimal("):
        return F.col("r").cast("double")
    raise _refuse_type(typ, where, name, "rating", "a number")


def _ts_value(typ: str, where: str, name: str | None) -> Column:
    c = F.col("ts")
    if typ == "string":
        return F.trim(c).try_cast("double").try_cast("long")
    if typ in _INTEGER_TYPES:
        return c.cast("long")
    if typ in ("double", "float") or typ.startswith("decimal("):
        return c.try_cast("long")
    if typ.startswith("timestamp"):
        return F.unix_seconds(c.cast("timestamp"))
    if typ == "date":
        return F.unix_date(c).cast("long") * F.lit(86400)
    if typ == "void":
        return F.lit(None).cast("long")
    raise _refuse_type(typ, where, name or "ts", "timestamp", "a number or a timestamp")


def _example(cond: Column, *values: Column) -> Column:
    """The smallest (file, values...) among rows where ``cond`` holds: a stable example."""
    return F.min(F.when(cond, F.struct(F.col("_file"), *values)))


def _count(cond: Column) -> Column:
    return F.sum(F.when(cond, 1).otherwise(0))


def _aggregations(ids: dict[str, _IdExprs], r_val: Column, ts_bad: Column,
                  lo, hi, implicit: bool = False) -> dict[str, Column]:
    """Counts and examples of every problem, plus the ratings' range, in one dict."""
    good = F.col("_bad").isNull()
    r_null = F.col("r").isNull() | (F.trim(F.col("r").cast("string")) == "")
    r_nonfinite = r_val.isNotNull() & (F.isnan(r_val) | (F.abs(r_val) == float("inf")))
    r_ok = r_val.isNotNull() & ~r_nonfinite
    s = {c: F.col(c).cast("string") for c in ("u", "i", "r", "ts")}
    conds = {
        "bad": (~good, [F.col("_bad")]),
        "u_null": (good & ids["u"].null, [s["i"]]),
        "i_null": (good & ids["i"].null, [s["u"]]),
        "r_null": (good & r_null, [s["u"], s["i"]]),
        "r_nonnum": (good & ~r_null & r_val.isNull(), [s["r"]]),
        "r_nonfinite": (good & r_nonfinite, [s["r"]]),
        "ts_bad": (good & ts_bad, [s["ts"]]),
    }
    for side in ("u", "i"):
        for problem, cond in ids[side].problems.items():
            conds[f"{side}_{problem}"] = (good & cond, [s[side]])
        conds[f"{side}_present"] = (good & ~ids[side].null, [s[side]])
    aggs = {"n": F.count(F.lit(1))}
    for side in ("u", "i"):
        whole = ids[side].whole
        if whole is not None:
            aggs[f"{side}_whole"] = _count(good & ~ids[side].null & whole[1])
    if implicit:
        conds["r_negative"] = (good & r_ok & (r_val < 0), [s["r"], s["u"], s["i"]])
        conds["r_zero"] = (good & r_ok & (r_val == 0), [s["u"], s["i"]])
    if lo is not None:
        conds["r_range"] = (good & r_ok & ((r_val < F.lit(lo)) | (r_val > F.lit(hi))),
                            [s["r"], s["u"], s["i"]])
    for name, (cond, values) in conds.items():
        aggs[name] = _count(cond)
        aggs[name + "_ex"] = _example(cond, *values)
    aggs["r_min"] = F.min(F.when(good & r_ok, r_val))
    aggs["r_max"] = F.max(F.when(good & r_ok, r_val))
    aggs["f32_inexact"] = _count(good & r_ok & (r_val.cast("float").cast("double") != r_val))
    return aggs


def _id_message(problem: str, ex, n: int, why: str, typ: str) -> str:
    value = ex[1]
    if problem == "nonint":
        if re.fullmatch(r"\s*[+-]?[0-9]+\s*", str(value)):
            return f"id {value.strip()!r} does not fit a 64-bit integer ({n} row(s)); {why}"
        return f"non-integer id {value!r} ({n} row(s)); {why}"
    if problem == "unplain":
        return (f"id {value!r} is not written as an integer id is ({n} row(s)); {why} "
                f"(pass --id-type string to read every id as a string)")
    if problem in ("frac", "strfrac"):
        hint = " (pass --id-type string if these are ids)" if problem == "strfrac" else ""
        return f"fractional id {value!s} ({n} row(s)); ids must be integers or strings{hint}"
    if problem == "nonfinite":
        return f"non-finite id {value!r} ({n} row(s)); ids must be integers or strings"
    return (f"id {value} is too large to be exact in a {typ} column ({n} row(s)); store ids "
            f"as integers or strings")


class _Report:
    """Turns the aggregated problems into the first one-line error."""

    def __init__(self, stats: dict, spec, role: str, path: str):
        self.stats, self.spec, self.role, self.path = stats, spec, role, path

    def where(self, ex) -> str:
        return f"{self.role} {short(ex[0]) if ex and ex[0] else self.path}"

    def fail(self, name: str, message) -> None:
        if self.stats.get(name):
            ex = self.stats[name + "_ex"]
            raise InputDataError(f"{self.where(ex)}{message(ex, self.stats[name])}")

    def rows_and_ids(self, ids: dict[str, _IdExprs], why: str, dtypes: dict) -> None:
        spec, st = self.spec, self.stats
        if st["n"] == 0:
            raise InputDataError(f"{self.role} {self.path}: no ratings (empty input)")
        self.fail("bad", lambda ex, n: f": {n} line(s) with the wrong number of fields "
                                       f"(expected {spec.describe}), e.g. {ex[1]!r}")
        for side, name in (("u", spec.user), ("i", spec.item)):
            self.fail(f"{side}_null", lambda ex, n, name=name: f", column {name!r}: {n} "
                                                               f"row(s) with a missing id")
            problems = dict(ids[side].problems)
            if "strfrac" in problems:   # only a column of numbers, some fractional
                problems.pop("numeric")
                if st[f"{side}_numeric"] < st[f"{side}_present"]:
                    problems.pop("strfrac")
            for problem in problems:
                self.fail(f"{side}_{problem}",
                          lambda ex, n, name=name, problem=problem, side=side:
                          f", column {name!r}: "
                          + _id_message(problem, ex, n, why, dtypes[side]))

    def ratings(self, lo, hi, implicit: bool = False) -> None:
        name = self.spec.rating
        what = "value" if implicit else "rating"
        self.fail("r_null", lambda ex, n: f", column {name!r}: {n} row(s) with a missing "
                                          f"{what}, e.g. user {ex[1]} item {ex[2]}")
        self.fail("r_nonnum", lambda ex, n: f", column {name!r}: non-numeric {what} "
                                            f"{ex[1]!r} ({n} row(s))")
        self.fail("r_nonfinite", lambda ex, n: f", column {name!r}: non-finite {what} "
                                               f"{ex[1]!r} ({n} row(s))")
        if implicit:
            self.fail("r_negative", lambda ex, n: (
                f", column {name!r}: negative value {ex[1]} (user {ex[2]}, item {ex[3]}; "
                f"{n} row(s)); implicit feedback values are counts or weights >= 0"))
        if lo is not None:
            self.fail("r_range", lambda ex, n: (
                f", column {name!r}: rating {ex[1]} (user {ex[2]}, item {ex[3]}) is outside "
                f"the scale [{lo:g}, {hi:g}] ({n} row(s)); set --rating-min/--rating-max if "
                f"the scale differs"))
        self.fail("ts_bad", lambda ex, n: f", column {self.spec.timestamp!r}: timestamp "
                                          f"{ex[1]!r} is not a number of seconds ({n} "
                                          f"row(s))")


def _mode(spec, id_type: str, role: str) -> tuple[str, str]:
    """(how ids are read: 'auto' | 'infer' | 'string' | 'integer' | 'plain' (integers
    written plainly), why integers are required)."""
    if id_type == "long":     # the training ratings' type, for a test split
        mode = "plain" if getattr(spec, "infer_ids", False) else "integer"
        return mode, "the training ratings' ids are integers"
    if id_type == "integer":
        return "integer", "--id-type integer reads ids as integers"
    if id_type == "string":
        return "string", ""
    if spec.integer_ids:
        return "integer", f"{spec.name} ids are integers"
    if getattr(spec, "infer_ids", False):
        return "infer", ""
    return "auto", ""


def _settle(ids: dict[str, _IdExprs], stats: dict) -> dict[str, _IdExprs]:
    """A text id column (CSV, with or without a header) whose every value is an
    integer written as a 64-bit integer prints ('7', '-3'; not '007', '+7', ' 7' or
    20 digits, which would not read back as written) holds integer ids; otherwise
    its ids stay strings exactly as written."""
    out = dict(ids)
    for side, e in ids.items():
        if e.whole is not None and 0 < stats[f"{side}_present"] == stats[f"{side}_whole"]:
            out[side] = dataclasses.replace(e, value=e.whole[0], id_type="long")
    return out


def validate_raw(raw: DataFrame, spec, path: str, *, role: str = "ratings",
                 rating_min: float | None = None, rating_max: float | None = None,
                 id_type: str = "auto", implicit: bool = False) -> CleanRatings:
    """The one-pass validation of raw columns (u, i, r, ts, _file, _bad). ``id_type``:
    'auto' (from the format and the column types), 'string', 'integer' (parse), or
    'long' (a test split read with its training ratings' integer ids). ``implicit``:
    r holds event counts or weights (finite, >= 0; no rating scale)."""
    dtypes = dict(raw.dtypes)
    where = f"{role} {path}"
    lo = rating_min if rating_min is not None else (spec.scale[0] if spec.scale else None)
    hi = rating_max if rating_max is not None else (spec.scale[1] if spec.scale else None)
    if implicit:
        lo = hi = None
    mode, why = _mode(spec, id_type, role)
    ids = {c: _id_exprs(dtypes[c], c, mode, where, name, kind) for c, name, kind in
           (("u", spec.user, "user id"), ("i", spec.item, "item id"))}
    r_val = _rating_value(dtypes["r"], where, spec.rating)
    ts_val = _ts_value(dtypes["ts"], where, spec.timestamp)
    ts_bad = F.col("ts").isNotNull() & ts_val.isNull() if spec.timestamp else F.lit(False)
    aggs = _aggregations(ids, r_val, ts_bad, lo, hi, implicit)
    try:
        stats = first(raw.agg(*[v.alias(k) for k, v in aggs.items()])).asDict()
    except Exception as exc:  # a corrupt or truncated file, mixed Parquet schemas
        failure = read_failure(exc, role, path)
        if failure is None:
            raise
        raise failure from None
    report = _Report(stats, spec, role, path)
    report.rows_and_ids(ids, why, dtypes)
    report.ratings(lo, hi, implicit)
    if implicit and stats["r_zero"]:
        log.info("%s %s: %d row(s) with value 0 carry no event and are left out, e.g. user "
                 "%s item %s", role, path, stats["r_zero"], *stats["r_zero_ex"][1:])
    ids = _settle(ids, stats)
    if ids["u"].id_type != ids["i"].id_type:     # e.g. an integer and a string column
        ids = {c: _id_exprs(dtypes[c], c, "string", where, "", "") for c in ("u", "i")}
    df = raw.select(ids["u"].value.alias("user"), ids["i"].value.alias("item"),
                    r_val.alias("rating"), ts_val.alias("ts"))
    return CleanRatings(df=df, path=path, n=int(stats["n"]), id_type=ids["u"].id_type,
                        rating_min=float(stats["r_min"]), rating_max=float(stats["r_max"]),
                        scale=(lo, hi) if lo is not None and hi is not None else None,
                        float32_exact=stats["f32_inexact"] == 0,
                        has_timestamp=spec.timestamp is not None, implicit=implicit)


def check_disjoint(train: CleanRatings, test: CleanRatings) -> int:
    """Report (one warning line with the count and an example) a given test split that
    shares (user, item) pairs with the training ratings: those test ratings measure
    how well the model recalls its training data. Returns the number of shared pairs."""
    pairs = train.df.select("user", "item").distinct()
    shared = test.df.select("user", "item").distinct().join(pairs, ["user", "item"])
    st = first(shared.agg(F.count(F.lit(1)).alias("n"),
                          F.min(F.struct("user", "item")).alias("ex")))
    n = int(st["n"] or 0)
    if n:
        u, i = st["ex"]
        log.warning("test %s: %d (user, item) pair(s) are also in the training ratings %s, "
                    "e.g. user %s item %s; their test metrics measure recall of the training "
                    "data", test.path, n, train.path, u, i)
    return n
