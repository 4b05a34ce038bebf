"""Titles and genres of items from MovieLens catalogue files, for people reading
recommendations: u.item (ML-100K, '|', Latin-1), movies.dat (ML-1M/10M, '::') and
movies.csv (ml-latest, with a header)."""

from __future__ import annotations

import posixpath

import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from .errors import InputDataError
from .fs import path_exists

ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def read_item_titles(spark: SparkSession, path: str, ids, encoding: str | None = None
                     ) -> pd.DataFrame:
    """Titles and genres of the given item ids from u.item (ML-100K, '|', Latin-1),
    movies.dat (ML-1M/10M, '::') or movies.csv (ml-latest, header)."""
    if not path_exists(spark, path):
        raise InputDataError(f"items {path}: no such file")
    base = posixpath.basename(path)
    reader = spark.read.option("mode", "PERMISSIVE")
    if base == "u.item" or base.endswith(".item"):
        df = reader.option("sep", "|").option("encoding", encoding or "ISO-8859-1").csv(path)
        flags = df.columns[5:5 + len(ML100K_GENRES)]
        genre = F.concat_ws("|", *[F.when(F.col(c) == "1", F.lit(g))
                                   for c, g in zip(flags, ML100K_GENRES)])
        df = df.select(F.col(df.columns[0]).alias("item_id"), F.col(df.columns[1]).alias("title"),
                       genre.alias("genres"))
    elif base.endswith(".dat"):
        df = reader.option("sep", "::").option("encoding", encoding or "ISO-8859-1").csv(path)
        df = df.select(F.col("_c0").alias("item_id"), F.col("_c1").alias("title"),
                       F.col("_c2").alias("genres"))
    elif base.endswith(".csv"):
        df = (reader.option("header", True).option("encoding", encoding or "UTF-8")
              .option("quote", '"').option("escape", '"').csv(path))
        cols = {c.lower(): c for c in df.columns}
        idc = cols.get("movieid") or cols.get("item_id") or cols.get("itemid") or df.columns[0]
        df = df.select(F.col(idc).alias("item_id"),
                       F.col(cols.get("title", df.columns[1])).alias("title"),
                       (F.col(cols["genres"]) if "genres" in cols else F.lit("")).alias("genres"))
    else:
        raise InputDataError(f"items {path}: expected u.item, movies.dat or movies.csv")
    wanted = pd.DataFrame({"item_id": [str(x) for x in ids]})
    got: pd.DataFrame = df.join(F.broadcast(spark.createDataFrame(wanted)), "item_id").toPandas()
    return got.drop_duplicates("item_id")
