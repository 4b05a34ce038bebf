r"""Warm starts: a retraining that begins from a previous model's factors.

When ratings are added to a data set, most users and items persist, and their
factors from the last model are a far better starting point than a random draw.
``--warm-start MODEL_DIR`` builds the trainer's initial state from MODEL_DIR's
factor tables: every id present in both keeps its factors and bias; an id the
previous model did not know (or knew without training ratings) starts at the prior
mean, zero factors and zero bias, as the trainer leaves ids without ratings. If no
trained id of a side persists, that side keeps the trainer's seeded initial draw
(zero on both sides would be a fixed point of ALS). A ranking model trained beside the
rating model starts from the previous run's (``ranking_*_factors``) the same way when
both runs train the same kind at the same rank.

The factors live in z units of each run's own standardisation. With a linear
read-out the previous model predicts :math:`r = \mu_0 + \sigma_0 z_0`; the new run
reads :math:`r = \mu_1 + \sigma_1 z_1`. Scaling both sides' factors by
:math:`\sqrt{\sigma_0/\sigma_1}`, the biases by :math:`\sigma_0/\sigma_1`, and adding
:math:`(\mu_0 - \mu_1)/\sigma_1` to the persisting items' biases makes the initial
state predict exactly what the previous model did for every persisting (user, item)
pair. (A sigmoid read-out does not depend on the mean and spread, so the factors are
taken as they are.)
"""

from __future__ import annotations

import logging
import math

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pmf_spark.errors import ConfigError
from pmf_spark.models import capabilities
from pmf_spark.models.base import TrainState
from pmf_spark.outputs.modeldir import factors_table, read_meta
from pmf_spark.storage.hadoop import path_exists, read_text

log = logging.getLogger("pmf_spark")


def previous_meta(spark: SparkSession, path: str, rank: int) -> dict:
    """model.json of the warm-start model, refused (ConfigError naming the reason)
    when it is not a model this run can start from."""
    meta = read_meta(path.rstrip("/"),
                     lambda p: read_text(spark, p) if path_exists(spark, p) else None,
                     error=ConfigError, what="warm-start")
    have = int(meta.get("rank", -1))
    if have != rank:
        what = f" (a {meta['fit']['model']} model)" if "fit" in meta else ""
        raise ConfigError(f"warm-start {path}: its factors have {have} dimensions{what}; this "
                          f"run trains rank {rank} (a warm start needs the same rank)")
    return meta


def _factors(spark: SparkSession, path: str, table: str, side: str, vocab, rank: int):
    """(dense indices, factors (n, rank), biases) of the previous model's trained ids
    (in ``table``, e.g. ``user_factors``) that are in ``vocab`` (the new run's id, idx)."""
    prev = (spark.read.parquet(f"{path.rstrip('/')}/{table}")
            .where(F.col("n_ratings") > 0)
            .select(F.col(f"{side}_id").alias("id"), "features", "bias"))
    theirs, ours = prev.schema["id"].dataType, vocab.schema["id"].dataType
    if theirs != ours:      # "007" must never meet 7: ids are compared as they are typed
        raise ConfigError(f"warm-start {path}: its {side} ids are {theirs.simpleString()}, "
                          f"this run's are {ours.simpleString()}; pass --id-type "
                          f"{'string' if theirs.simpleString() == 'string' else 'integer'} "
                          "to read the ratings the way the previous run did")
    tbl = prev.join(vocab.select("id", "idx"), "id").select("idx", "features", "bias") \
        .toArrow()
    idx = tbl.column("idx").to_numpy().astype(np.int64)
    feats = tbl.column("features").combine_chunks().flatten().to_numpy()
    return idx, feats.reshape(idx.size, rank), tbl.column("bias").to_numpy()


def _fill(spark, path: str, ranking: bool, state: TrainState, trainer, rank: int,
          biases: bool, ratio: float, shift: float) -> dict[str, tuple[int, int]]:
    """Overwrite ``state``'s rows of persisting trained ids with the previous model's
    (its ranking model's with ``ranking``), rescaled; the other trained rows to the prior
    mean, unless nothing of a side persists. Returns (persisting, trained) per side."""
    data, counts = trainer.data, trainer.counts
    found = {}
    for side, vocab in (("user", data.users), ("item", data.items)):
        idx, feats, bias = _factors(spark, path, factors_table(side, ranking), side, vocab,
                                    rank)
        ok = counts[side][idx] > 0
        idx, feats, bias = idx[ok], feats[ok], bias[ok]
        found[side] = (idx.size, int(np.count_nonzero(counts[side])))
        if idx.size == 0:
            log.info("warm start: no %s of %s persists; the %s factors start from the usual "
                     "seeded draw", side, path, side)
            continue
        m = state.side(side)
        m[counts[side] > 0] = 0.0
        m[idx, :rank] = feats * math.sqrt(ratio)
        if biases:
            m[idx, rank] = bias * ratio + (shift if side == "item" else 0.0)
    return found


def _scaling(data, meta: dict, linear: bool) -> tuple[float, float]:
    """(ratio, shift) taking the previous run's z units to this run's (see the module
    docstring); (1, 0) for a read-out that does not depend on them."""
    if not linear:
        return 1.0, 0.0
    return float(meta["sigma"]) / data.sigma, (float(meta["mu"]) - data.mu) / data.sigma


def warm_start_state(spark: SparkSession, path: str, trainer) -> TrainState:
    """The trainer's initial state with the persisting ids' factors from ``path`` (and
    the ranking model's, from its ``ranking_*`` tables, when both runs train the same
    ranking model beside the rating model)."""
    params, data = trainer.params, trainer.data
    rank = params.model.rank
    meta = previous_meta(spark, path, rank)
    state = trainer.initial_state()
    linear = params.model.link == "linear" and meta.get("model", {}).get("link") == "linear"
    ratio, shift = _scaling(data, meta, linear)
    found = _fill(spark, path, False, state, trainer, rank, params.model.biases, ratio, shift)
    (nu, tu), (ni, ti) = found["user"], found["item"]
    log.info("warm start from %s: %d of %d user(s) and %d of %d item(s) with training "
             "ratings start from its factors%s; the others from the prior mean", path, nu, tu,
             ni, ti, " (rescaled to this run's mean and spread)" if linear else "")
    comp, prev = params.companion(), meta.get("ranking_model") or {}
    if comp is not None and state.companions and prev.get("fit", {}).get("model") == \
            comp.fit.model and prev.get("model", {}).get("rank") == comp.model.rank and \
            path_exists(spark, f"{path.rstrip('/')}/{factors_table('user', ranking=True)}"):
        lin = capabilities(comp.fit.model).predicts_ratings and comp.model.link == "linear"
        _fill(spark, path, True, state.companions[0], trainer, comp.model.rank,
              comp.model.biases, *_scaling(data, meta, lin))
        log.info("warm start: the %s ranking model starts from its factors too",
                 comp.fit.model)
    return state
