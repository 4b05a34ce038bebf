"""The model directory, owned here: its table and file names, the schemas of the
tables every reader needs, and ``model.json`` (its content, how it is read, how its
parameter sections flatten). Every writer (the training job, ``PMFModel.save``, the
catalog tables, the batch answers) and every reader (the Spark-free answers, the
Spark answers, ``PMFModel.load``, warm start, fold-in) takes its names from here, so a
directory written by one is read by all. ``docs/outputs.md`` is the contract.

No pyspark at import (the Spark-free answers read model directories with pyarrow);
the Spark schemas import it when asked for.

Layout (tables are Parquet directories, ``{side}`` is ``user`` or ``item``)::

    model.json                 what reading the model needs, how it was fitted
    metrics.json, metrics.csv  the per-epoch history and the final metrics
    {side}_factors/            {side}_id, features array<double>, bias, n_ratings
    {side}_vocabulary/         {side}_id, idx (the dense index), n_ratings
    ranking_{side}_factors/    the ranking model's factors, when one was trained beside
    train_ratings/, test_ratings/   user_id, item_id, rating: the split as trained
    recommendations/ ...       the lists and neighbour tables (see RECS_TABLE below)
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pmf_spark.errors import InputDataError
from pmf_spark.version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import types as T

MODEL_FORMAT_VERSION = 2
SIDES = ("user", "item")
META = "model.json"
METRICS_JSON = "metrics.json"
METRICS_CSV = "metrics.csv"
RANKING_PREFIX = "ranking_"
FACTOR_TABLES = {"user": "user_factors", "item": "item_factors"}
VOCAB_TABLES = {"user": "user_vocabulary", "item": "item_vocabulary"}
TRAIN_RATINGS = "train_ratings"
TEST_RATINGS = "test_ratings"
RECS_TABLE = "recommendations"
NEIGHBORS_TABLE = "item_neighbors"
ITEM_USERS_TABLE = "item_users"
USER_NEIGHBORS_TABLE = "user_neighbors"
RECS_COLUMNS = ["user_id", "rank", "item_id", "predicted_rating", "score", "cold_start"]
ITEM_USERS_COLUMNS = ["item_id", "rank", "user_id", "predicted_rating", "score"]
SPLIT_COLUMNS = ["user_id", "item_id", "rating"]
BUCKET_COLUMN = "user_bucket"
#: every table a run can write (a previous run's catalog tables this run does not
#: write are dropped)
ALL_TABLES = (*FACTOR_TABLES.values(), *VOCAB_TABLES.values(), TRAIN_RATINGS, TEST_RATINGS,
              RECS_TABLE, NEIGHBORS_TABLE, ITEM_USERS_TABLE, USER_NEIGHBORS_TABLE,
              *(RANKING_PREFIX + t for t in FACTOR_TABLES.values()))


def factors_table(side: str, ranking: bool = False) -> str:
    """``{side}_factors``, or the ranking model's ``ranking_{side}_factors``."""
    return (RANKING_PREFIX if ranking else "") + FACTOR_TABLES[side]


def vocabulary_table(side: str) -> str:
    return VOCAB_TABLES[side]


# ------------------------------------------------------------------- schemas
def _spark_id(id_type: str):
    from pyspark.sql import types as T

    return T.LongType() if id_type == "long" else T.StringType()


def factor_schema(side: str, id_type: str) -> T.StructType:
    """Schema of ``user_factors`` / ``item_factors``: the original id, the factor
    vector, the bias (z units) and the number of training ratings."""
    from pyspark.sql import types as T

    return T.StructType([
        T.StructField(f"{side}_id", _spark_id(id_type)),
        T.StructField("features", T.ArrayType(T.DoubleType())),
        T.StructField("bias", T.DoubleType()),
        T.StructField("n_ratings", T.IntegerType()),
    ])


def vocabulary_schema(side: str, id_type: str) -> T.StructType:
    """Schema of ``user_vocabulary`` / ``item_vocabulary``: original id <-> dense index."""
    from pyspark.sql import types as T

    return T.StructType([
        T.StructField(f"{side}_id", _spark_id(id_type)),
        T.StructField("idx", T.IntegerType()),
        T.StructField("n_ratings", T.IntegerType()),
    ])


def split_schema(id_type: str) -> str:
    """DDL of ``train_ratings`` / ``test_ratings``."""
    t = "bigint" if id_type == "long" else "string"
    return f"user_id {t}, item_id {t}, rating double"


# ---------------------------------------------------------------- model.json
def versions() -> dict:
    import numpy as np
    import pandas
    import pyarrow as pa
    import pyspark

    return {"pmf_spark": __version__, "pyspark": pyspark.__version__, "numpy": np.__version__,
            "pandas": pandas.__version__, "pyarrow": pa.__version__,
            "python": platform.python_version()}


def model_meta(cfg, params, data, *, rank: int, epochs_run: int, final: dict, samples: int,
               blocks: int, baseline_rmse, ranking, seconds,
               ranking_model: dict | None = None) -> dict:
    """The content of ``model.json``: what reading the model needs (``model``, ``mu``,
    ``sigma``, ``rating_range``, ``rank``), how it was fitted (``fit``, ``job``,
    ``ranker``: which model orders the lists, ``ranking_model``: that model's own
    parameters when it is trained beside the rating model), how the engine ran
    (``engine``), the data, the metrics, timings and versions. ``cfg``: the
    :class:`~pmf_spark.config.params.JobConfig`, ``params`` the PMFParams, ``data``
    the prepared data (its ``summary()`` and statistics)."""
    groups = params.to_dict()
    return {
        "format_version": MODEL_FORMAT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": groups["model"], "fit": groups["fit"], "engine": groups["engine"],
        "ranker": groups["ranker"], "ranking_model": ranking_model,
        "job": cfg.to_dict(),
        "data": data.summary(),
        "mu": data.mu, "sigma": data.sigma,
        "rating_range": [data.rating_lo, data.rating_hi],
        "rank": rank, "latent_rank": params.model.rank,
        "epochs_run": epochs_run, "best_epoch": final["epoch"],
        "samples_averaged": samples, "blocks": blocks,
        "final_metrics": final, "baseline_rmse": baseline_rmse,
        "ranking": ranking, "seconds": seconds, "versions": versions(),
    }


def read_meta(root: str, read_text: Callable[[str], str | None], *,
              error: type[Exception] = InputDataError, what: str = "model") -> dict:
    """``root``'s model.json through ``read_text(path)`` (None when there is no such
    file: each reader brings its filesystem); a missing or broken file is one line
    naming it, as ``error`` (``what`` starts the line: ``model``, ``warm-start``)."""
    text = read_text(f"{root}/{META}")
    if text is None:
        raise error(f"{what} {root}: no {META} (not a pmf-spark model directory?)")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what} {root}/{META}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise error(f"{what} {root}/{META}: not a JSON object")
    return meta


def model_sections(meta: dict) -> dict[str, Any]:
    """The flat parameters of a model.json (format 2: model/fit/engine/ranker sections;
    format 1 kept every parameter under ``model``)."""
    flat = dict(meta.get("model", {}))
    for section in ("fit", "engine", "ranker"):
        flat.update(meta.get(section, {}))
    return flat


def ranking_rank(meta: dict) -> int | None:
    """The ranking model's rank when one was trained beside the rating model."""
    spec = meta.get("ranking_model")
    return int(spec["model"]["rank"]) if spec else None
