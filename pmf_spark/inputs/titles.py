"""Titles and genres of items from MovieLens catalogue files, for people reading
recommendations: u.item (ML-100K, '|', Latin-1), movies.dat (ML-1M/10M, '::') and
movies.csv (ml-latest, with a header). Two readers with the same rules: one through
Spark (any Hadoop filesystem) and one in plain Python for the Spark-free answers
(:mod:`pmf_spark.serve.local`); this module imports pyspark only inside the Spark one."""

from __future__ import annotations

import csv
import io
import posixpath

import pandas as pd

from pmf_spark.errors import InputDataError

ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def catalogue_kind(path: str) -> str:
    """'u.item', 'dat' or 'csv' from the file name; InputDataError otherwise."""
    base = posixpath.basename(path.rstrip("/"))
    if base == "u.item" or base.endswith(".item"):
        return "u.item"
    if base.endswith(".dat"):
        return "dat"
    if base.endswith(".csv"):
        return "csv"
    raise InputDataError(f"items {path}: expected u.item, movies.dat or movies.csv")


def _csv_columns(header: list[str]) -> tuple[int, int, int | None]:
    """Positions of the id, title and genres columns of a movies.csv header."""
    cols = {c.lower(): n for n, c in enumerate(header)}
    idc = next((cols[c] for c in ("movieid", "item_id", "itemid") if c in cols), 0)
    return idc, cols.get("title", 1), cols.get("genres")


def _local_rows(kind: str, text: str):
    """(id, title, genres) of every catalogue line, as the Spark reader reads them."""
    if kind == "csv":
        rows = csv.reader(io.StringIO(text))
        header = next(rows, [])
        idc, tc, gc = _csv_columns(header)
        for f in rows:
            if len(f) > max(idc, tc):
                yield f[idc], f[tc], (f[gc] if gc is not None and gc < len(f) else "")
        return
    sep = "|" if kind == "u.item" else "::"
    for line in text.splitlines():
        f = line.split(sep)
        if len(f) < 2:
            continue
        if kind == "u.item":
            flags = f[5:5 + len(ML100K_GENRES)]
            yield f[0], f[1], "|".join(g for c, g in zip(flags, ML100K_GENRES) if c == "1")
        else:
            yield f[0], f[1], (f[2] if len(f) > 2 else "")


def read_titles_local(path: str, ids, encoding: str | None = None) -> dict[str, tuple]:
    """``{str(item id): (title, genres)}`` for the given ids, read in plain Python."""
    kind = catalogue_kind(path)
    enc = encoding or ("UTF-8" if kind == "csv" else "ISO-8859-1")
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode(enc)
    except FileNotFoundError:
        raise InputDataError(f"items {path}: no such file") from None
    except IsADirectoryError:
        raise InputDataError(f"items {path}: is a directory, not a catalogue file") from None
    except (UnicodeDecodeError, LookupError) as exc:
        raise InputDataError(f"items {path}: cannot decode as {enc} ({exc}); pass "
                             f"--items-encoding") from None
    wanted = {str(x) for x in ids}
    out: dict[str, tuple] = {}
    for item, title, genres in _local_rows(kind, text):
        item = item.strip()
        if item in wanted and item not in out:
            out[item] = (title, genres or "")
    return out


def read_item_titles(spark, path: str, ids, encoding: str | None = None) -> pd.DataFrame:
    """Titles and genres of the given item ids from u.item (ML-100K, '|', Latin-1),
    movies.dat (ML-1M/10M, '::') or movies.csv (ml-latest, header), through Spark."""
    from pyspark.sql import functions as F

    from pmf_spark.storage.hadoop import path_exists

    if not path_exists(spark, path):
        raise InputDataError(f"items {path}: no such file")
    kind = catalogue_kind(path)
    reader = spark.read.option("mode", "PERMISSIVE")
    if kind == "u.item":
        df = reader.option("sep", "|").option("encoding", encoding or "ISO-8859-1").csv(path)
        flags = df.columns[5:5 + len(ML100K_GENRES)]
        genre = F.concat_ws("|", *[F.when(F.col(c) == "1", F.lit(g))
                                   for c, g in zip(flags, ML100K_GENRES)])
        df = df.select(F.col(df.columns[0]).alias("item_id"), F.col(df.columns[1]).alias("title"),
                       genre.alias("genres"))
    elif kind == "dat":
        df = reader.option("sep", "::").option("encoding", encoding or "ISO-8859-1").csv(path)
        df = df.select(F.col("_c0").alias("item_id"), F.col("_c1").alias("title"),
                       F.col("_c2").alias("genres"))
    else:
        df = (reader.option("header", True).option("encoding", encoding or "UTF-8")
              .option("quote", '"').option("escape", '"').csv(path))
        idc, tc, gc = _csv_columns(df.columns)
        df = df.select(F.col(df.columns[idc]).alias("item_id"),
                       F.col(df.columns[tc]).alias("title"),
                       (F.col(df.columns[gc]) if gc is not None else F.lit("")).alias("genres"))
    wanted = pd.DataFrame({"item_id": [str(x) for x in ids]})
    got: pd.DataFrame = df.join(F.broadcast(spark.createDataFrame(wanted)), "item_id").toPandas()
    return got.drop_duplicates("item_id")
