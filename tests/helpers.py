"""Small builders shared by the Spark tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from pmf_spark.io import CleanRatings
from pmf_spark.prepare import prepare


def random_ratings(seed: int, n_users: int, n_items: int, density: float) -> pd.DataFrame:
    """A low-rank-ish random rating table with ids offset from 0 (ids are not indices)."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_items)) < density
    mask[:, 0] = True                       # every user rates something
    u, i = np.nonzero(mask)
    a, b = rng.normal(size=(n_users, 2)), rng.normal(size=(n_items, 2))
    raw = 3.0 + (a[u] * b[i]).sum(1) * 0.6 + rng.normal(0, 0.5, u.size)
    rating = np.clip(np.round(raw * 2) / 2, 0.5, 5.0)
    return pd.DataFrame({"user": (u * 7 + 100).astype(np.int64),
                         "item": (i * 3 + 1000).astype(np.int64), "rating": rating})


def clean_from_pandas(spark, pdf: pd.DataFrame, path: str = "memory") -> CleanRatings:
    df = spark.createDataFrame(pdf).select(
        "user", "item", F.col("rating").cast("double"), F.lit(None).cast("long").alias("ts"))
    return CleanRatings(df=df, path=path, n=len(pdf), id_type="long",
                        rating_min=float(pdf.rating.min()), rating_max=float(pdf.rating.max()),
                        scale=None, float32_exact=True, has_timestamp=False)


def prepared(spark, pdf: pd.DataFrame, test_fraction: float = 0.2, seed: int = 0):
    return prepare(clean_from_pandas(spark, pdf), None, test_fraction=test_fraction,
                   split_seed=seed, on_duplicate="error")


def dense_split(data):
    """(R_train, R_test) dense matrices over dense indices, NaN = missing."""
    pdf = data.ratings.toPandas()
    out = []
    for test in (False, True):
        R = np.full((data.n_users, data.n_items), np.nan)
        sel = pdf[pdf.is_test == test]
        R[sel.u.to_numpy(), sel.i.to_numpy()] = sel.rating.to_numpy()
        out.append(R)
    return out
