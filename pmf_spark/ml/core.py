"""What a :class:`~pmf_spark.ml.PMFModel` holds, however it came to be (fitted in this
session, saved by it, or written by the training job): both sides' ids, factors,
biases and training counts on the driver (dense-index order), the ranking model's
factors when one was trained beside the rating model (it orders the top-k lists, as in
the job), the ``model.json`` content, the per-epoch history and the training ratings
as a DataFrame (to leave items a user rated out of their recommendations).

Nothing here stays cached in Spark: a fitted model releases the trainer's layout and
prepared data when ``fit`` returns (a CrossValidator fits many), and DataFrames of the
factors are built from one broadcast per side when first asked for.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pmf_spark.config.params import JobConfig, PMFParams
from pmf_spark.kernels.rows import ReadOut
from pmf_spark.models import capabilities
from pmf_spark.outputs.modeldir import (
    METRICS_JSON,
    TEST_RATINGS,
    TRAIN_RATINGS,
    factor_schema,
    factors_table,
    model_meta,
    model_sections,
    ranking_rank,
    read_meta,
    split_schema,
    vocabulary_schema,
    vocabulary_table,
)
from pmf_spark.outputs.tables import arrays_frame
from pmf_spark.storage.hadoop import path_exists, read_text

from ..errors import InputDataError

SIDES = ("user", "item")
#: implicit ALS's read-out: scores are preferences, not ratings
_PREFERENCE = ReadOut(mu=0.0, sigma=1.0, lo=-np.inf, hi=np.inf, clip=False)


@dataclass
class Side:
    """One side of the model. ``ids`` (n,) the original ids (int64, or object for
    strings) by dense index; ``factors`` float64 (n, r); ``bias`` float64 (n,);
    ``counts`` int64 (n,) training ratings (0: no factors, predicted from the mean)."""

    ids: np.ndarray
    factors: np.ndarray
    bias: np.ndarray
    counts: np.ndarray

    @property
    def tiebreak(self) -> np.ndarray:
        """int64 (n,): each index's position in original-id order (equal scores)."""
        out = np.empty(self.ids.size, dtype=np.int64)
        out[np.argsort(self.ids, kind="stable")] = np.arange(self.ids.size)
        return out


@dataclass
class FactorCore:
    meta: dict
    user: Side
    item: Side
    seen: DataFrame
    test: DataFrame | None = None
    history: list = field(default_factory=list)
    #: the ranking model's (user, item) factors and biases, or None
    ranking: dict[str, Side] | None = None
    _frames: dict = field(default_factory=dict, repr=False)

    def side(self, name: str) -> Side:
        return self.user if name == "user" else self.item

    @property
    def id_type(self) -> str:
        return str(self.meta["data"]["id_type"])

    @property
    def spark_id_type(self) -> T.DataType:
        return T.LongType() if self.id_type == "long" else T.StringType()

    @property
    def params(self) -> dict:
        return model_sections(self.meta)

    @property
    def rates(self) -> bool:
        """The model predicts ratings (implicit ALS scores preferences)."""
        return capabilities(self.params.get("model")).predicts_ratings

    @property
    def readout(self) -> ReadOut:
        """The rating model's read-out (the identity for implicit ALS's preferences)."""
        m, p = self.meta, self.params
        if not self.rates:
            return _PREFERENCE
        lo, hi = map(float, m["rating_range"])
        return ReadOut(mu=float(m["mu"]), sigma=float(m["sigma"]), lo=lo, hi=hi,
                       link=p["link"], clip=bool(p["clip"]))

    @property
    def ranking_readout(self) -> ReadOut:
        spec = self.meta.get("ranking_model") or {}
        if not capabilities(spec.get("fit", {}).get("model")).predicts_ratings:
            return _PREFERENCE
        m = self.meta
        lo, hi = map(float, m["rating_range"])
        return ReadOut(mu=float(m["mu"]), sigma=float(m["sigma"]), lo=lo, hi=hi)

    def pmf_params(self) -> PMFParams:
        return PMFParams.from_dict({g: self.meta.get(g, {}) for g in ("model", "fit", "engine")})

    # ---------------------------------------------------------------- frames
    def frame(self, spark: SparkSession, side: str) -> DataFrame:
        """``{side}_id, features array<double>, bias, n_ratings``: the factor table."""
        key = ("factors", side)
        if key not in self._frames:
            s = self.side(side)
            self._frames[key] = arrays_frame(
                spark, {f"{side}_id": s.ids, "features": s.factors, "bias": s.bias,
                        "n_ratings": s.counts.astype(np.int32)},
                factor_schema(side, self.id_type))
        return self._frames[key]

    def ranking_frame(self, spark: SparkSession, side: str) -> DataFrame:
        """The ranking model's factor table (``ranking_{side}_factors``)."""
        assert self.ranking is not None
        key = ("ranking", side)
        if key not in self._frames:
            s = self.ranking[side]
            self._frames[key] = arrays_frame(
                spark, {f"{side}_id": s.ids, "features": s.factors, "bias": s.bias,
                        "n_ratings": s.counts.astype(np.int32)},
                factor_schema(side, self.id_type))
        return self._frames[key]

    def vocabulary(self, spark: SparkSession, side: str) -> DataFrame:
        """``{side}_id, idx, n_ratings``: ids and their dense indices."""
        key = ("vocabulary", side)
        if key not in self._frames:
            s = self.side(side)
            self._frames[key] = arrays_frame(
                spark, {f"{side}_id": s.ids, "idx": np.arange(s.ids.size, dtype=np.int32),
                        "n_ratings": s.counts.astype(np.int32)},
                vocabulary_schema(side, self.id_type))
        return self._frames[key]

    def mllib_factors(self, spark: SparkSession, side: str) -> DataFrame:
        """``id, features array<float>`` augmented so that the dot product of a user's and
        an item's features is the model's unclipped prediction in rating units (its
        logit with the sigmoid link): ``[sqrt(s) u, s a + mu, 1] . [sqrt(s) v, 1, s b]``."""
        key = ("mllib", side)
        if key not in self._frames:
            s, ro = self.side(side), self.readout
            scale, mu = (ro.sigma, ro.mu) if ro.link == "linear" else (1.0, 0.0)
            ones = np.ones(s.ids.size)
            extra = ([scale * s.bias + mu, ones] if side == "user" else [ones, scale * s.bias])
            feats = np.column_stack([math.sqrt(scale) * s.factors, *extra])
            schema = T.StructType([T.StructField("id", self.spark_id_type),
                                   T.StructField("features", T.ArrayType(T.FloatType()))])
            self._frames[key] = arrays_frame(spark, {"id": s.ids, "features": feats}, schema)
        return self._frames[key]

    def empty_split(self, spark: SparkSession) -> DataFrame:
        return spark.createDataFrame([], split_schema(self.id_type))

    # ---------------------------------------------------------------- building
    @classmethod
    def from_training(cls, trainer, state, seen: DataFrame, test: DataFrame | None,
                      seconds: dict) -> FactorCore:
        """The trained model of ``trainer`` (before its data is released)."""
        data, model = trainer.data, trainer.model(state)
        ids, sides = {}, {}
        for name, vocab, n in (("user", data.users, data.n_users),
                               ("item", data.items, data.n_items)):
            tbl = vocab.select("id", "idx").toArrow()
            ids[name] = np.empty(n, dtype=np.int64 if data.id_type == "long" else object)
            ids[name][tbl.column("idx").to_numpy()] = tbl.column("id").to_numpy(
                zero_copy_only=False)

        def sides_of(m) -> dict[str, Side]:
            return {side: Side(ids[side], F_, b, trainer.counts[side].astype(np.int64))
                    for side, F_, b in (("user", m.U, m.user_bias), ("item", m.V, m.item_bias))}

        sides = sides_of(model)
        ranker = trainer.ranking_model(state)
        comp = trainer.params.companion()
        final = trainer.final_metrics(state)
        cfg = JobConfig(output="(not saved)", report=False)
        meta = model_meta(cfg, trainer.params, data, rank=int(model.U.shape[1]),
                          epochs_run=state.epoch, final=final.to_dict(),
                          samples=trainer.strategy.kept_samples(state),
                          blocks=trainer.engine.blocks, baseline_rmse=None, ranking=None,
                          seconds=seconds,
                          ranking_model=comp.to_dict() if comp and ranker else None)
        meta["job"]["ratings"] = "DataFrame (pmf_spark.ml.PMF.fit)"
        return cls(meta, sides["user"], sides["item"], seen, test,
                   [m.to_dict() for m in state.history],
                   sides_of(ranker) if ranker is not None else None)

    @classmethod
    def read(cls, spark: SparkSession, path: str) -> FactorCore:
        """A model directory: the training job's output or a saved PMFModel."""
        path = path.rstrip("/")
        meta = read_meta(path, lambda p: read_text(spark, p) if path_exists(spark, p) else None)
        rank = int(meta["rank"])
        sides = {s: _read_side(spark, path, s, rank) for s in SIDES}
        history = []
        if path_exists(spark, f"{path}/{METRICS_JSON}"):
            history = json.loads(read_text(spark, f"{path}/{METRICS_JSON}")).get("epochs", [])
        ranking = None
        rank_r = ranking_rank(meta)
        if rank_r and path_exists(spark, f"{path}/{factors_table('item', ranking=True)}"):
            ranking = {s: _read_side(spark, path, s, rank_r, ranking=True) for s in SIDES}
        return cls(meta, sides["user"], sides["item"],
                   spark.read.parquet(f"{path}/{TRAIN_RATINGS}"),
                   spark.read.parquet(f"{path}/{TEST_RATINGS}"), history, ranking)


def _read_side(spark: SparkSession, path: str, side: str, rank: int,
               ranking: bool = False) -> Side:
    key = f"{side}_id"
    tbl = (spark.read.parquet(f"{path}/{factors_table(side, ranking)}")
           .join(spark.read.parquet(f"{path}/{vocabulary_table(side)}").select(key, "idx"), key)
           .orderBy("idx").toArrow())
    n = tbl.num_rows
    idx = tbl.column("idx").to_numpy()
    if not np.array_equal(idx, np.arange(n)):
        raise InputDataError(f"model {path}: {side}_vocabulary does not cover "
                             f"{side}_factors (indices are not 0..{n - 1})")
    feats = tbl.column("features").combine_chunks().flatten().to_numpy()
    ids = tbl.column(key).to_numpy(zero_copy_only=False)
    return Side(ids, feats.reshape(n, rank), tbl.column("bias").to_numpy(),
                tbl.column("n_ratings").to_numpy().astype(np.int64))


def seen_ratings(clean) -> DataFrame:
    """The training ratings of validated input (:class:`~pmf_spark.inputs.validate.CleanRatings`)
    by original id, one per (user, item): the latest by timestamp, ties by the higher
    rating -- the rule :func:`pmf_spark.prepare.ratings.dedupe` applies. Not cached: a lineage
    on the input, evaluated only when recommendations or a save need it."""
    order = F.struct(F.col("ts"), F.col("rating"))
    return (clean.df.groupBy(F.col("user").alias("user_id"), F.col("item").alias("item_id"))
            .agg(F.max_by("rating", order).alias("rating")))
