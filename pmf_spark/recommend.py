"""Top-k recommendations, item neighbours and ranking metrics, blockwise on Spark.

Top-k for every user never cross-joins users with items: each user block (the
same cached CSR layout training uses, so every user's training items are at
hand) scores ``U_block @ V^T`` with numpy against broadcast item factors,
masks the items the user rated in training and every non-candidate item, and
keeps the k best with ``argpartition``. Rows are ordered by score (the model's
unclipped prediction in rating units), then by original item id.

Ranking metrics (precision, recall, NDCG, MAP, hit rate at k; catalogue
coverage) are computed in Spark over the users with at least one relevant test
rating (rating >= the relevance threshold), always next to a most-popular
baseline (items by training rating count, the user's training items excluded)
on the same split.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from .solvers import ridge_solve_csr, to_rating, top_k
from .udfs import VALIDATION, decode_chunk, limit_blas_threads

RECS_SCHEMA = "u int, rank int, i int, predicted_rating double, score double"
RECS_COLUMNS = ["u", "rank", "i", "predicted_rating", "score"]
NEIGHBORS_SCHEMA = "i int, rank int, j int, similarity double"
_BATCH_CELLS = 4_000_000   # scores held at once per task (32 MB of float64)


# --------------------------------------------------------------------------- numpy


def relevance_threshold(given: float | None, lo: float, hi: float) -> float:
    """The rating at or above which a test rating counts as relevant: ``given``, or
    three quarters of the way up the scale [lo, hi] (4 on MovieLens' 1-5, the seed's
    threshold; 8 on a 2-10 scale), snapped to the scale's half steps."""
    if given is not None:
        return float(given)
    return float(lo + math.ceil(2 * 0.75 * (hi - lo)) / 2)

def score_users(U: np.ndarray, user_bias: np.ndarray, V: np.ndarray, item_bias: np.ndarray,
                mu: float, sigma: float) -> np.ndarray:
    """Unclipped predictions in rating units: (n_users_given, n_items)."""
    return mu + sigma * (U @ V.T + user_bias[:, None] + item_bias[None, :])


def recommend_rows(U, user_bias, indptr, rated, V, item_bias, candidates, tiebreak, k, *,
                   mu, sigma, lo, hi, link, clip, popularity=None):
    """Top-k for a batch of users.

    Args:
        U, user_bias: float64 (n, rank) and (n,) the users' factors and biases.
        indptr, rated: CSR (n + 1,), (nnz,) of each user's training items (excluded).
        V, item_bias: float64 (n_items, rank), (n_items,).
        candidates: bool (n_items,) items that may be recommended.
        tiebreak: int (n_items,) order among equal scores (original id order).
        popularity: when given, rank by it (the most-popular baseline) instead of the model.

    Returns:
        pandas frame with RECS_COLUMNS but ``u`` = position in the batch.
    """
    n = U.shape[0]
    m = V.shape[0]
    out = []
    step = max(1, _BATCH_CELLS // max(1, m))
    for lo_row in range(0, n, step):
        hi_row = min(n, lo_row + step)
        sl = slice(lo_row, hi_row)
        if popularity is None:
            S = score_users(U[sl], user_bias[sl], V, item_bias, mu, sigma)
        else:
            S = np.broadcast_to(popularity.astype(np.float64), (hi_row - lo_row, m)).copy()
        S[:, ~candidates] = -np.inf
        a, b = indptr[lo_row], indptr[hi_row]
        rows = np.repeat(np.arange(hi_row - lo_row), np.diff(indptr[lo_row:hi_row + 1]))
        S[rows, rated[a:b]] = -np.inf
        r, rank, items, vals = top_k(S, k, tiebreak)
        users = r + lo_row
        z = (U[users] * V[items]).sum(1) + user_bias[users] + item_bias[items]
        pred = to_rating(z, mu=mu, sigma=sigma, lo=lo, hi=hi, link=link, clip=clip)
        out.append(pd.DataFrame({"u": users.astype(np.int32), "rank": rank.astype(np.int32),
                                 "i": items.astype(np.int32), "predicted_rating": pred,
                                 "score": vals}))
    if not out:
        return pd.DataFrame({c: [] for c in RECS_COLUMNS})
    return pd.concat(out, ignore_index=True)


def fold_in(V: np.ndarray, item_bias: np.ndarray, items: np.ndarray, ratings: np.ndarray, *,
            lam: float, lam_bias: float, biases: bool, count_scaling: bool, mu: float,
            sigma: float):
    """A new user's (factors, bias) from their ratings against fixed item factors:
    the same ridge solve a training half-epoch does for one row."""
    rank = V.shape[1]
    z = (np.asarray(ratings, dtype=np.float64) - mu) / sigma
    order = np.argsort(items, kind="stable")
    items, z = np.asarray(items)[order], z[order]
    if biases:
        design = np.hstack([V, np.ones((V.shape[0], 1))])
        target = z - item_bias[items]
        reg = np.r_[np.full(rank, lam), lam_bias]
    else:
        design, target, reg = V, z, np.full(rank, lam)
    indptr = np.array([0, items.size])
    x = ridge_solve_csr(indptr, items.astype(np.int32), target, design, reg,
                        row_scale=np.array([float(items.size)]) if count_scaling else None).x[0]
    return x[:rank], (float(x[rank]) if biases else 0.0)


# --------------------------------------------------------------------------- block functions

def _known_items(c: dict) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, items) of what each user of a decoded chunk has rated outside the
    test split: the training ratings plus any validation slice carved from them (for
    early stopping), which the user gave just the same and must not be recommended."""
    val = c["test_kind"] == VALIDATION
    if not val.any():
        return c["indptr"], c["cols"]
    n = c["row_ids"].size
    rows = np.concatenate([np.repeat(np.arange(n), np.diff(c["indptr"])), c["test_rows"][val]])
    items = np.concatenate([c["cols"], c["test_cols"][val]])
    order = np.argsort(rows, kind="stable")
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return indptr, items[order]


def recommend_block(key, pdf, *, shared, k, mu, sigma, lo, hi, link, clip, popular):
    """Top-k for every user of one packed user block (PACKED_SCHEMA rows)."""
    limit_blas_threads()
    U, ub, V, ib, candidates, tiebreak, popularity, val_dtype = (
        shared.value if hasattr(shared, "value") else shared)
    out = []
    for _, row in pdf.sort_values("chunk").iterrows():
        c = decode_chunk(row, val_dtype)
        users = c["row_ids"]
        indptr, rated = _known_items(c)
        recs = recommend_rows(U[users], ub[users], indptr, rated, V, ib, candidates,
                              tiebreak, k, mu=mu, sigma=sigma, lo=lo, hi=hi, link=link,
                              clip=clip, popularity=popularity if popular else None)
        recs["u"] = users[recs["u"].to_numpy()]
        out.append(recs)
    if not out:
        return pd.DataFrame({c: [] for c in RECS_COLUMNS})
    return pd.concat(out, ignore_index=True)[RECS_COLUMNS]


def neighbors_block(key, pdf, *, shared, k):
    """The k most cosine-similar items of every item of one block (column ``i``)."""
    limit_blas_threads()
    Vn, valid, tiebreak = shared.value if hasattr(shared, "value") else shared
    items = np.sort(pdf["i"].to_numpy(dtype=np.int64))
    items = items[valid[items]]
    out = []
    step = max(1, _BATCH_CELLS // max(1, Vn.shape[0]))
    for a in range(0, items.size, step):
        its = items[a:a + step]
        S = Vn[its] @ Vn.T
        S[:, ~valid] = -np.inf
        S[np.arange(its.size), its] = -np.inf
        r, rank, j, sim = top_k(S, k, tiebreak)
        out.append(pd.DataFrame({"i": its[r].astype(np.int32), "rank": rank.astype(np.int32),
                                 "j": j.astype(np.int32), "similarity": sim}))
    if not out:
        return pd.DataFrame({"i": [], "rank": [], "j": [], "similarity": []})
    return pd.concat(out, ignore_index=True)


# --------------------------------------------------------------------------- Spark

def item_tiebreak(items_vocab: DataFrame, n_items: int) -> np.ndarray:
    """For each dense item index, its position in original-id order."""
    tbl = items_vocab.select("id", "idx").toArrow()
    ids = tbl.column("id").to_numpy(zero_copy_only=False)
    idx = tbl.column("idx").to_numpy()
    order = np.argsort(ids, kind="stable")
    out = np.empty(n_items, dtype=np.int64)
    out[idx[order]] = np.arange(idx.size)
    return out


def candidate_items(item_counts: np.ndarray, min_item_ratings: int,
                    excluded: np.ndarray | None = None) -> np.ndarray:
    """Items that may be recommended: trained (>= 1 rating), >= min_item_ratings
    training ratings, and not excluded."""
    ok = item_counts >= max(1, int(min_item_ratings))
    if excluded is not None and excluded.size:
        ok[excluded] = False
    return ok


def recommend_all(spark: SparkSession, packed_users: DataFrame, model, *, k: int,
                  candidates: np.ndarray, tiebreak: np.ndarray, val_dtype: str,
                  popularity: np.ndarray, popular: bool = False) -> DataFrame:
    """Top-k (dense indices) for every user with training ratings; ``popular``
    gives the most-popular baseline instead of the model."""
    shared = spark.sparkContext.broadcast(
        (model.U, model.user_bias, model.V, model.item_bias, candidates, tiebreak,
         popularity, val_dtype))
    fn = functools.partial(recommend_block, shared=shared, k=k, mu=model.mu, sigma=model.sigma,
                           lo=model.lo, hi=model.hi, link=model.link, clip=model.clip,
                           popular=popular)
    return packed_users.groupBy("block").applyInPandas(fn, RECS_SCHEMA)


def cold_start_recs(spark: SparkSession, users_vocab: DataFrame, model, *, k: int,
                    candidates: np.ndarray, tiebreak: np.ndarray,
                    popularity: np.ndarray) -> DataFrame:
    """The most-popular list for every user without training ratings."""
    empty = np.zeros(0, dtype=np.int64)
    one = recommend_rows(np.zeros((1, model.U.shape[1])), np.zeros(1), np.array([0, 0]), empty,
                         model.V, model.item_bias, candidates, tiebreak, k, mu=model.mu,
                         sigma=model.sigma, lo=model.lo, hi=model.hi, link=model.link,
                         clip=model.clip, popularity=popularity)
    top = spark.createDataFrame(one.drop(columns=["u"]))
    cold = users_vocab.where(F.col("n_ratings") == 0).select(F.col("idx").alias("u"))
    return cold.crossJoin(F.broadcast(top)).select(*RECS_COLUMNS)


def item_neighbors(spark: SparkSession, model, n_items: int, item_counts: np.ndarray, *, k: int,
                   tiebreak: np.ndarray, blocks: int) -> DataFrame:
    """k nearest items by cosine similarity of item factors (trained items only)."""
    norms = np.linalg.norm(model.V, axis=1)
    valid = (item_counts > 0) & (norms > 0)
    Vn = np.where(valid[:, None], model.V / np.where(norms > 0, norms, 1.0)[:, None], 0.0)
    shared = spark.sparkContext.broadcast((Vn, valid, tiebreak))
    fn = functools.partial(neighbors_block, shared=shared, k=k)
    ids = spark.range(0, n_items, 1, max(1, blocks)).select(
        F.col("id").cast("int").alias("i"), (F.col("id") % max(1, blocks)).alias("block"))
    return ids.groupBy("block").applyInPandas(fn, NEIGHBORS_SCHEMA)


def ranking_metrics(recs: DataFrame, test: DataFrame, *, k: int, threshold: float,
                    n_catalogue: int) -> dict:
    """Mean ranking metrics at k over users with >= 1 relevant test rating.

    Args:
        recs: (u, rank, i) recommendations, ranks 1..k.
        test: (u, i, rating) held-out ratings.
        n_catalogue: items that could be recommended (coverage's denominator).

    Definitions, for a user with R relevant test items and hits at ranks r_1 < r_2 < ...:
    precision = hits / k; recall = hits / R; hit rate = [hits > 0];
    NDCG = sum 1/log2(r + 1) / sum_{j=1..min(R,k)} 1/log2(j + 1);
    MAP = sum_n (n / r_n) / min(R, k); coverage = distinct recommended items / catalogue.
    """
    rel = (test.where(F.col("rating") >= F.lit(float(threshold)))
           .select("u", "i").distinct())
    n_rel = rel.groupBy("u").agg(F.count(F.lit(1)).alias("n_rel"))
    top = recs.where(F.col("rank") <= k).select("u", "i", "rank")
    hits = top.join(rel, ["u", "i"])
    w = Window.partitionBy("u").orderBy("rank")
    hits = hits.withColumn("nth", F.row_number().over(w))
    per_hit = hits.groupBy("u").agg(
        F.count(F.lit(1)).alias("hits"),
        F.sum(1.0 / F.log2(F.col("rank") + 1.0)).alias("dcg"),
        F.sum(F.col("nth") / F.col("rank")).alias("ap_sum"))
    idcg_table = [0.0]
    for j in range(1, k + 1):
        idcg_table.append(idcg_table[-1] + 1.0 / math.log2(j + 1.0))
    idcg = F.element_at(F.array(*[F.lit(x) for x in idcg_table]),
                        (F.least(F.col("n_rel"), F.lit(k)) + 1).cast("int"))
    per_user = (n_rel.join(per_hit, "u", "left").fillna(0, ["hits", "dcg", "ap_sum"])
                .select(
                    (F.col("hits") / F.lit(float(k))).alias("precision"),
                    (F.col("hits") / F.col("n_rel")).alias("recall"),
                    (F.col("dcg") / idcg).alias("ndcg"),
                    (F.col("ap_sum") / F.least(F.col("n_rel"), F.lit(k))).alias("map"),
                    (F.col("hits") > 0).cast("double").alias("hit_rate")))
    agg = per_user.agg(F.count(F.lit(1)).alias("users"),
                       *[F.avg(c).alias(c) for c in
                         ("precision", "recall", "ndcg", "map", "hit_rate")]).first()
    distinct = top.select("i").distinct().count()
    out = {"k": k, "relevance_threshold": threshold, "users": int(agg["users"])}
    for c in ("precision", "recall", "ndcg", "map", "hit_rate"):
        out[c] = float(agg[c]) if agg[c] is not None else 0.0
    out["coverage"] = distinct / max(1, n_catalogue)
    return out


# --------------------------------------------------------------------------- a saved model

RECS_BY_ID_COLUMNS = ["user_id", "rank", "item_id", "predicted_rating", "score", "cold_start"]


class SavedModel:
    """A trained model read back from its output directory (Parquet + model.json).

    Item factors are held on the driver (they are broadcast to answer users);
    user factors and the rating splits stay Spark DataFrames.
    """

    def __init__(self, spark: SparkSession, path: str):
        from .io import path_exists, read_text
        from .errors import InputDataError
        import json

        self.spark, self.path = spark, path.rstrip("/")
        if not path_exists(spark, self.path + "/model.json"):
            raise InputDataError(f"model {path}: no model.json (not a pmf-spark output?)")
        self.meta = json.loads(read_text(spark, self.path + "/model.json"))
        m = self.meta
        self.rank = int(m["rank"])
        self.mu, self.sigma = float(m["mu"]), float(m["sigma"])
        self.lo, self.hi = map(float, m["rating_range"])
        self.link, self.clip = m["model"]["link"], bool(m["model"]["clip"])
        self.id_type = m["data"]["id_type"]
        self.users = spark.read.parquet(self.path + "/user_factors")
        self.train = spark.read.parquet(self.path + "/train_ratings")
        self.test = spark.read.parquet(self.path + "/test_ratings")
        items = (spark.read.parquet(self.path + "/item_factors")
                 .join(spark.read.parquet(self.path + "/item_vocabulary").select("item_id", "idx"),
                       "item_id").orderBy("idx").toArrow())
        n = items.num_rows
        self.item_ids = items.column("item_id").to_numpy(zero_copy_only=False)
        feats = items.column("features").combine_chunks()
        self.V = feats.flatten().to_numpy().reshape(n, self.rank)
        self.item_bias = items.column("bias").to_numpy()
        self.item_counts = items.column("n_ratings").to_numpy().astype(np.int64)
        self.item_index = pd.Index(self.item_ids)
        order = np.argsort(self.item_ids, kind="stable")
        self.tiebreak = np.empty(n, dtype=np.int64)
        self.tiebreak[order] = np.arange(n)

    def parse_id(self, raw: str):
        from .errors import InputDataError

        if self.id_type == "long":
            try:
                return int(raw)
            except ValueError:
                raise InputDataError(f"user id {raw!r}: this model's ids are integers") from None
        return raw

    def item_idx(self, ids) -> np.ndarray:
        """Dense indices of item ids (-1 for ids the model does not know)."""
        return self.item_index.get_indexer(pd.Index(ids))

    def conv(self) -> dict:
        return dict(mu=self.mu, sigma=self.sigma, lo=self.lo, hi=self.hi, link=self.link,
                    clip=self.clip)

    def recommend_one(self, factors, bias, rated_items, k, candidates):
        """Top-k for one user given as (factors, bias, rated item ids); a user
        without factors (None) gets the most popular items."""
        rated = self.item_idx(rated_items)
        rated = np.sort(rated[rated >= 0]).astype(np.int64)
        cold = factors is None
        U = np.zeros((1, self.rank)) if cold else np.asarray(factors, dtype=np.float64)[None, :]
        recs = recommend_rows(U, np.array([0.0 if cold else float(bias)]),
                              np.array([0, rated.size]), rated, self.V, self.item_bias,
                              candidates, self.tiebreak, k, popularity=self.item_counts
                              if cold else None, **self.conv())
        recs["item_id"] = self.item_ids[recs["i"].to_numpy()]
        recs["cold_start"] = cold
        return recs

    def fold_in(self, items, ratings):
        """Factors and bias of a new user from (item id, rating) pairs; unknown items
        are ignored. Returns (factors, bias, n_used)."""
        p = self.meta["model"]
        idx = self.item_idx(items)
        keep = idx >= 0
        if not keep.any():
            return None, 0.0, 0
        f, b = fold_in(self.V, self.item_bias, idx[keep], np.asarray(ratings)[keep],
                       lam=float(p["lambda_u"]), lam_bias=float(p["lambda_bias"]),
                       biases=bool(p["biases"]), count_scaling=p["reg_scaling"] == "count",
                       mu=self.mu, sigma=self.sigma)
        return f, b, int(keep.sum())

    def recommend_users(self, ids: DataFrame, k: int, candidates: np.ndarray,
                        blocks: int) -> DataFrame:
        """Top-k for the users in ``ids`` (column ``id``), blockwise; unknown users and
        users without training ratings get the most popular items (cold_start)."""
        spark = self.spark
        wanted = ids.select(F.col("id").alias("user_id")).distinct()
        rated = (self.train.join(wanted, "user_id")
                 .join(F.broadcast(spark.read.parquet(self.path + "/item_vocabulary")
                                   .select("item_id", "idx")), "item_id")
                 .groupBy("user_id").agg(F.sort_array(F.collect_list("idx")).alias("rated")))
        rows = (wanted.join(self.users.select("user_id", "features", "bias", "n_ratings"),
                            "user_id", "left").join(rated, "user_id", "left")
                .withColumn("block", F.pmod(F.hash("user_id"), F.lit(max(1, blocks)))))
        shared = spark.sparkContext.broadcast(
            (self.V, self.item_bias, candidates, self.tiebreak, self.item_counts))
        id_type = "bigint" if self.id_type == "long" else "string"
        schema = (f"user_id {id_type}, rank int, i int, predicted_rating double, score double, "
                  f"cold_start boolean")
        fn = functools.partial(users_block, shared=shared, k=k, rank=self.rank, **self.conv())
        recs = rows.groupBy("block").applyInPandas(fn, schema)
        names = spark.createDataFrame(pd.DataFrame({
            "i": np.arange(self.item_ids.size, dtype=np.int32), "item_id": self.item_ids}))
        return (recs.join(F.broadcast(names), "i").select(*RECS_BY_ID_COLUMNS))


def users_block(key, pdf, *, shared, k, rank, mu, sigma, lo, hi, link, clip):
    """Top-k for rows (user_id, features, bias, n_ratings, rated) of one block."""
    limit_blas_threads()
    V, ib, candidates, tiebreak, popularity = shared.value if hasattr(shared, "value") else shared
    conv = dict(mu=mu, sigma=sigma, lo=lo, hi=hi, link=link, clip=clip)
    pdf = pdf.reset_index(drop=True)
    n_ratings = pdf["n_ratings"].fillna(0).to_numpy()
    warm = (pdf["features"].notna() & (n_ratings > 0)).to_numpy()
    out = []
    for is_warm in (True, False):
        part = pdf[warm == is_warm].reset_index(drop=True)
        if part.empty:
            continue
        n = len(part)
        if is_warm:
            U = np.stack([np.asarray(f, dtype=np.float64) for f in part["features"]])
            ub = part["bias"].to_numpy(dtype=np.float64)
        else:
            U, ub = np.zeros((n, rank)), np.zeros(n)
        lists = [np.asarray(r if r is not None else [], dtype=np.int64) for r in part["rated"]]
        indptr = np.concatenate([[0], np.cumsum([x.size for x in lists])])
        rated = np.concatenate(lists) if lists else np.zeros(0, np.int64)
        recs = recommend_rows(U, ub, indptr, rated, V, ib, candidates, tiebreak, k,
                              popularity=None if is_warm else popularity, **conv)
        recs.insert(0, "user_id", part["user_id"].to_numpy()[recs["u"].to_numpy()])
        recs["cold_start"] = not is_warm
        out.append(recs.drop(columns=["u"]))
    cols = ["user_id", "rank", "i", "predicted_rating", "score", "cold_start"]
    if not out:
        return pd.DataFrame({c: [] for c in cols})
    return pd.concat(out, ignore_index=True)[cols]


# --------------------------------------------------------------------------- item metadata

ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def read_item_titles(spark: SparkSession, path: str, ids, encoding: str | None = None
                     ) -> pd.DataFrame:
    """Titles and genres of the given item ids from u.item (ML-100K, '|', Latin-1),
    movies.dat (ML-1M/10M, '::') or movies.csv (ml-latest, header)."""
    import posixpath

    from .errors import InputDataError
    from .io import path_exists

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
    got = df.join(F.broadcast(spark.createDataFrame(wanted)), "item_id").toPandas()
    return got.drop_duplicates("item_id")
