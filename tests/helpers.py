"""Small builders shared by the Spark tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import functions as F

from pmf_spark.inputs.read import CleanRatings
from pmf_spark.prepare.ratings import prepare


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


def _write(root: Path, name: str, table: pa.Table, row_group_size: int | None = None) -> None:
    (root / name).mkdir(parents=True)
    pq.write_table(table, root / name / "part-00000.parquet", row_group_size=row_group_size)


def _factor_table(side, ids, counts, rng):
    off = pa.array(np.arange(0, ids.size * RANK + 1, RANK, dtype=np.int32))
    feats = rng.normal(0, 0.25, (ids.size, RANK))
    return pa.table({f"{side}_id": ids, "features": pa.ListArray.from_arrays(
        off, pa.array(feats.ravel())), "bias": rng.normal(0, 0.2, ids.size),
        "n_ratings": counts.astype(np.int32)})


RANK = 30
#: MovieLens 10M's shape: users, items, ratings
ML10M_SHAPE = (69_878, 10_677, 10_000_054)


def shaped_model(root: Path, n_users: int, n_items: int, n: int,
                 row_group_size: int = 5_000_000) -> dict:
    """A model directory in the training job's layout (docs/outputs.md) with ~n ratings
    of n_users x n_items at rank 30 (ML10M_SHAPE: MovieLens 10M's), written directly with
    pyarrow: tables sorted by id as the job writes them, the ratings in row groups of
    ``row_group_size`` (Spark writes ~128 MB row groups)."""
    rng = np.random.default_rng(10)
    uids = np.arange(1, n_users + 1, dtype=np.int64) * 3
    iids = np.arange(1, n_items + 1, dtype=np.int64) * 7
    per_user = rng.zipf(1.6, n_users).clip(max=3000).astype(np.float64) + 19
    per_user = np.maximum(1, (per_user / per_user.sum() * n * 1.25).astype(np.int64))
    u = np.repeat(np.arange(n_users, dtype=np.int64), per_user)
    i = (n_items * rng.random(u.size) ** 1.5).astype(np.int64)     # popular items first
    pairs = np.unique(u * n_items + i)
    pairs = pairs[rng.random(pairs.size) < n / pairs.size]        # about n of them
    u, i = pairs // n_items, pairs % n_items
    rating = rng.integers(1, 11, u.size) / 2.0
    test = rng.random(u.size) < 0.15
    for name, sel in (("train_ratings", ~test), ("test_ratings", test)):
        _write(root, name, pa.table({"user_id": uids[u[sel]], "item_id": iids[i[sel]],
                                     "rating": rating[sel]}), row_group_size=row_group_size)
    for side, ids, counts in (("user", uids, np.bincount(u[~test], minlength=n_users)),
                              ("item", iids, np.bincount(i[~test], minlength=n_items))):
        _write(root, f"{side}_factors", _factor_table(side, ids, counts, rng))
        order = np.lexsort((ids, -counts))
        _write(root, f"{side}_vocabulary", pa.table({
            f"{side}_id": ids[order], "idx": np.arange(ids.size, dtype=np.int32),
            "n_ratings": counts[order].astype(np.int32)}))
    meta = {"format_version": 2, "rank": RANK, "latent_rank": RANK,
            "model": {"rank": RANK, "biases": True, "link": "linear", "clip": True},
            "fit": {"model": "pmf", "lambda_u": 12.0, "lambda_v": 12.0, "lambda_bias": 3.0,
                    "reg_scaling": "none"},
            "engine": {}, "job": {"top_k": 10, "min_item_ratings": 1},
            "data": {"id_type": "long", "n_users": n_users, "n_items": n_items},
            "mu": 3.51, "sigma": 1.06, "rating_range": [0.5, 5.0]}
    (root / "model.json").write_text(json.dumps(meta))
    (root / "_SUCCESS").write_text(json.dumps({"tables": {}}))
    lines = [f"{x}::Film {x} ({1950 + x % 60})::Drama|Comedy" for x in iids]
    (root.parent / "movies.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    return {"users": uids, "items": iids, "n_ratings": int(u.size)}


def brute_force_top_k(root: Path, user: int, k: int) -> list[int]:
    """The user's top-k from the written tables by plain pandas and numpy."""
    meta = json.loads((root / "model.json").read_text())
    users = pd.read_parquet(root / "user_factors").set_index("user_id")
    items = pd.read_parquet(root / "item_factors")
    train = pd.read_parquet(root / "train_ratings", filters=[("user_id", "==", user)])
    V = np.stack(items.features.to_numpy())
    s = meta["mu"] + meta["sigma"] * (V @ np.asarray(users.features[user])
                                      + users.bias[user] + items.bias.to_numpy())
    ok = (items.n_ratings.to_numpy() > 0) & ~items.item_id.isin(train.item_id).to_numpy()
    order = np.lexsort((items.item_id.to_numpy()[ok], -s[ok]))[:k]
    return items.item_id.to_numpy()[ok][order].tolist()
