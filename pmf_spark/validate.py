"""The one-pass validation of raw ratings: every value problem found by a single
aggregation, then reported as one line naming the file, the column and an example.

Input: the raw columns ``u``, ``i``, ``r``, ``ts``, ``_file`` (the source file of the
row), ``_bad`` (the raw line of a row with the wrong number of fields, else null) that
:func:`pmf_spark.io.read_raw` produces. Output: :class:`CleanRatings`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from .errors import InputDataError
from .fs import short
from .sparkutil import first

_INTEGER_TYPES = ("bigint", "int", "smallint", "tinyint")


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


@dataclass(frozen=True)
class _IdExprs:
    as_long: Column       # the id as a long, null when it is not an integer
    fractional: Column    # a number with a fractional part
    nonint: Column        # present but not an integer
    null: Column          # missing or empty


def _id_exprs(typ: str, c: str) -> _IdExprs:
    col = F.col(c)
    if typ in _INTEGER_TYPES:
        return _IdExprs(col.cast("long"), F.lit(False), F.lit(False), col.isNull())
    if typ in ("double", "float") or typ.startswith("decimal"):
        d = col.cast("double")
        integral = (d == F.floor(d)) & (F.abs(d) < 2.0 ** 53)
        return _IdExprs(F.when(integral, d.cast("long")), ~integral & ~F.isnan(d),
                        F.isnan(d), col.isNull())
    s = F.trim(col.cast("string"))
    d = s.try_cast("double")
    as_long = F.coalesce(s.try_cast("long"),
                         F.when((d == F.floor(d)) & (F.abs(d) < 2.0 ** 53), d.cast("long")))
    return _IdExprs(as_long, d.isNotNull() & (d != F.floor(d)) & ~F.isnan(d),
                    s.isNotNull() & as_long.isNull(), s.isNull() | (s == ""))


def _rating_value(typ: str, where: str, name: str) -> Column:
    if typ == "string":
        return F.trim(F.col("r")).try_cast("double")
    if typ in _INTEGER_TYPES + ("double", "float") or typ.startswith("decimal"):
        return F.col("r").cast("double")
    raise InputDataError(f"{where}: column {name!r} has type {typ}, expected a number")


def _example(cond: Column, *values: Column) -> Column:
    """The smallest (file, values...) among rows where ``cond`` holds: a stable example."""
    return F.min(F.when(cond, F.struct(F.col("_file"), *values)))


def _count(cond: Column) -> Column:
    return F.sum(F.when(cond, 1).otherwise(0))


def _aggregations(ids: dict, r_val: Column, ts_bad: Column, lo, hi) -> dict[str, Column]:
    """Counts and examples of every problem, plus the ratings' range, in one dict."""
    good = F.col("_bad").isNull()
    r_null = F.col("r").isNull() | (F.trim(F.col("r").cast("string")) == "")
    r_nonfinite = r_val.isNotNull() & (F.isnan(r_val) | (F.abs(r_val) == float("inf")))
    r_ok = r_val.isNotNull() & ~r_nonfinite
    s = {c: F.col(c).cast("string") for c in ("u", "i", "r", "ts")}
    conds = {
        "bad": (~good, [F.col("_bad")]),
        "u_null": (good & ids["u"].null, [F.col("i")]),
        "i_null": (good & ids["i"].null, [F.col("u")]),
        "u_frac": (good & ids["u"].fractional, [F.col("u")]),
        "i_frac": (good & ids["i"].fractional, [F.col("i")]),
        "u_nonint": (good & ids["u"].nonint, [s["u"]]),
        "i_nonint": (good & ids["i"].nonint, [s["i"]]),
        "r_null": (good & r_null, [s["u"], s["i"]]),
        "r_nonnum": (good & ~r_null & r_val.isNull(), [s["r"]]),
        "r_nonfinite": (good & r_nonfinite, [s["r"]]),
        "ts_bad": (good & ts_bad, [s["ts"]]),
    }
    if lo is not None:
        conds["r_range"] = (good & r_ok & ((r_val < F.lit(lo)) | (r_val > F.lit(hi))),
                            [s["r"], s["u"], s["i"]])
    aggs = {"n": F.count(F.lit(1))}
    for name, (cond, values) in conds.items():
        aggs[name] = _count(cond)
        aggs[name + "_ex"] = _example(cond, *values)
    aggs["r_min"] = F.min(F.when(good & r_ok, r_val))
    aggs["r_max"] = F.max(F.when(good & r_ok, r_val))
    aggs["f32_inexact"] = _count(good & r_ok & (r_val.cast("float").cast("double") != r_val))
    return aggs


class _Report:
    """Turns the aggregated problems into the first one-line error."""

    def __init__(self, stats: dict, spec, role: str, path: str):
        self.stats, self.spec, self.role, self.path = stats, spec, role, path

    def where(self, ex) -> str:
        return f"{self.role} {short(ex[0]) if ex and ex[0] else self.path}"

    def fail(self, name: str, message) -> None:
        if self.stats[name]:
            ex = self.stats[name + "_ex"]
            raise InputDataError(f"{self.where(ex)}{message(ex, self.stats[name])}")

    def rows_and_ids(self) -> None:
        spec = self.spec
        if self.stats["n"] == 0:
            raise InputDataError(f"{self.role} {self.path}: no ratings (empty input)")
        self.fail("bad", lambda ex, n: f": {n} line(s) with the wrong number of fields "
                                       f"(expected {spec.describe}), e.g. {ex[1]!r}")
        for side, name in (("u", spec.user), ("i", spec.item)):
            self.fail(f"{side}_null", lambda ex, n, name=name: f", column {name!r}: {n} "
                                                               f"row(s) with a missing id")
            self.fail(f"{side}_frac", lambda ex, n, name=name: f", column {name!r}: "
                                                               f"fractional id "
                                                    f"{ex[1]!s} ({n} row(s)); ids must be "
                                                    f"integers or strings")

    def ratings(self, lo, hi) -> None:
        name = self.spec.rating
        self.fail("r_null", lambda ex, n: f", column {name!r}: {n} row(s) with a missing "
                                          f"rating, e.g. user {ex[1]} item {ex[2]}")
        self.fail("r_nonnum", lambda ex, n: f", column {name!r}: non-numeric rating "
                                            f"{ex[1]!r} ({n} row(s))")
        self.fail("r_nonfinite", lambda ex, n: f", column {name!r}: non-finite rating "
                                               f"{ex[1]!r} ({n} row(s))")
        if lo is not None:
            self.fail("r_range", lambda ex, n: (
                f", column {name!r}: rating {ex[1]} (user {ex[2]}, item {ex[3]}) is outside "
                f"the scale [{lo:g}, {hi:g}] ({n} row(s)); set --rating-min/--rating-max if "
                f"the scale differs"))
        self.fail("ts_bad", lambda ex, n: f", column {self.spec.timestamp!r}: non-numeric "
                                          f"timestamp {ex[1]!r} ({n} row(s))")

    def integer_ids(self) -> bool:
        """Whether every id is an integer; refuses non-integers in integer-id formats."""
        st, spec = self.stats, self.spec
        integer = st["u_nonint"] == 0 and st["i_nonint"] == 0
        if spec.integer_ids and not integer:
            side, name = ("u", spec.user) if st["u_nonint"] else ("i", spec.item)
            self.fail(f"{side}_nonint", lambda ex, n: f", column {name!r}: non-integer id "
                                                      f"{ex[1]!r} ({n} row(s)); {spec.name} "
                                                      f"ids are integers")
        return integer


def validate_raw(raw: DataFrame, spec, path: str, *, role: str = "ratings",
                 rating_min: float | None = None,
                 rating_max: float | None = None) -> CleanRatings:
    """The one-pass validation of raw columns (u, i, r, ts, _file, _bad)."""
    dtypes = dict(raw.dtypes)
    lo = rating_min if rating_min is not None else (spec.scale[0] if spec.scale else None)
    hi = rating_max if rating_max is not None else (spec.scale[1] if spec.scale else None)
    ids = {c: _id_exprs(dtypes[c], c) for c in ("u", "i")}
    r_val = _rating_value(dtypes["r"], f"{role} {path}", spec.rating)
    ts_val = (F.col("ts").cast("long") if dtypes["ts"] != "string"
              else F.trim(F.col("ts")).try_cast("double").cast("long"))
    ts_bad = F.col("ts").isNotNull() & ts_val.isNull() if spec.timestamp else F.lit(False)
    aggs = _aggregations(ids, r_val, ts_bad, lo, hi)
    stats = first(raw.agg(*[v.alias(k) for k, v in aggs.items()])).asDict()
    report = _Report(stats, spec, role, path)
    report.rows_and_ids()
    report.ratings(lo, hi)
    if report.integer_ids():
        user, item, id_type = ids["u"].as_long, ids["i"].as_long, "long"
    else:
        user, item = F.trim(F.col("u").cast("string")), F.trim(F.col("i").cast("string"))
        id_type = "string"
    df = raw.select(user.alias("user"), item.alias("item"), r_val.alias("rating"),
                    ts_val.alias("ts"))
    return CleanRatings(df=df, path=path, n=int(stats["n"]), id_type=id_type,
                        rating_min=float(stats["r_min"]), rating_max=float(stats["r_max"]),
                        scale=(lo, hi) if lo is not None and hi is not None else None,
                        float32_exact=stats["f32_inexact"] == 0,
                        has_timestamp=spec.timestamp is not None)
