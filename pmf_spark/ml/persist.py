"""Saving and loading :class:`~pmf_spark.ml.PMFModel` (``MLWritable``/``MLReadable``).

A saved model *is* a training-job output directory -- ``model.json``, the factor and
vocabulary tables, the training (and test) ratings, ``metrics.json``, ``_SUCCESS``, and
``recommendations/`` with ``option("topK", k)`` (``model.save(path)`` writes the top 10,
Spark ML's ``write().save`` none: a PipelineModel or MLflow need not pay for it) -- plus Spark
ML's ``metadata/`` (class, uid, Params), so ``jobs/recommend.py`` reads it, a
``PipelineModel`` holding it saves and loads, and a directory the job wrote loads as
a ``PMFModel`` (with default Params, as it has no ``metadata/``). The directory is
written to a staging sibling and moved into place when complete
(:class:`~pmf_spark.outputs.commit.AtomicOutput`); an existing path is replaced only with
``overwrite()`` and only when it is a pmf-spark output.
"""

from __future__ import annotations

from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReader, MLWriter

from pmf_spark.config.params import JobConfig
from pmf_spark.outputs.commit import AtomicOutput
from pmf_spark.outputs.modeldir import (
    META,
    METRICS_JSON,
    RECS_TABLE,
    SPLIT_COLUMNS,
    TEST_RATINGS,
    TRAIN_RATINGS,
    factors_table,
    vocabulary_table,
)
from pmf_spark.outputs.tables import n_files, write_sorted
from pmf_spark.storage.hadoop import path_exists, short

from ..errors import ConfigError, InputDataError
from .core import SIDES, FactorCore
from .recs import top_k

MODEL_CLASS = "pmf_spark.ml.PMFModel"


class PMFModelWriter(MLWriter):
    """Writes a :class:`~pmf_spark.ml.PMFModel`; option ``topK`` (default 0: no
    recommendations table)."""

    def __init__(self, instance):
        super().__init__()
        self.instance = instance

    def save(self, path: str) -> None:
        # no delete-then-write: the staging directory replaces the old one atomically
        # (AtomicOutput refuses to replace anything that is not a pmf-spark output)
        if path_exists(self.sparkSession, path) and not self.shouldOverwrite:
            raise ConfigError(f"save {path}: already exists; use "
                              f"model.write().overwrite().save(path) to replace it")
        self.saveImpl(path)

    def saveImpl(self, path: str) -> None:
        spark = self.sparkSession
        k = int(self.optionMap.get("topk", 0))
        if k < 0:
            raise ConfigError(f"save {path}: option topK must be >= 0, got {k}")
        out = AtomicOutput(spark, path, job="pmf-spark PMFModel")
        try:
            tables = _write_tables(spark, self.instance.core, out, k)
            core = self.instance.core
            meta = dict(core.meta)
            meta["job"] = {**meta.get("job", {}), "output": short(out.final), "top_k": k}
            out.write_json(META, meta)
            out.write_json(METRICS_JSON, {"epochs": core.history,
                                          "final": meta.get("final_metrics")})
            DefaultParamsWriter.saveMetadata(self.instance, out.staging, spark)
            out.commit({"tables": tables, "files": [META, METRICS_JSON, "metadata"]})
        except BaseException:
            out.abort()
            raise


def _write_tables(spark, core: FactorCore, out: AtomicOutput, k: int) -> dict[str, int]:
    cfg = JobConfig(output=out.final, top_k=k, report=False)
    tables: dict[str, int] = {}
    for side in SIDES:
        s = core.side(side)
        files = n_files(cfg, s.ids.size, s.factors.shape[1])
        write_sorted(core.frame(spark, side), out.path(factors_table(side)), files,
                     f"{side}_id")
        write_sorted(core.vocabulary(spark, side), out.path(vocabulary_table(side)), files,
                     "idx")
        tables[factors_table(side)] = tables[vocabulary_table(side)] = int(s.ids.size)
    if core.ranking is not None:
        for side in SIDES:
            name = factors_table(side, ranking=True)
            s = core.ranking[side]
            write_sorted(core.ranking_frame(spark, side), out.path(name),
                         n_files(cfg, s.ids.size, s.factors.shape[1]), f"{side}_id")
            tables[name] = int(s.ids.size)
    test = core.test if core.test is not None else core.empty_split(spark)
    for name, df in ((TRAIN_RATINGS, core.seen), (TEST_RATINGS, test)):
        path = out.path(name)
        write_sorted(df.select(*SPLIT_COLUMNS), path,
                     n_files(cfg, core.user.ids.size, 1), "user_id", "item_id")
        tables[name] = int(spark.read.parquet(path).count())
    if k:
        path = out.path(RECS_TABLE)
        write_sorted(top_k(spark, core, "user", k), path,
                     n_files(cfg, core.user.ids.size, k), "user_id", "rank")
        tables[RECS_TABLE] = int(spark.read.parquet(path).count())
    return tables


class PMFModelReader(MLReader):
    """Reads a saved :class:`~pmf_spark.ml.PMFModel` or a training-job output."""

    def __init__(self, cls):
        super().__init__()
        self.cls = cls

    def load(self, path: str):
        spark = self.sparkSession
        model = self.cls(FactorCore.read(spark, path))
        if path_exists(spark, path.rstrip("/") + "/metadata"):
            metadata = DefaultParamsReader.loadMetadata(path, spark)
            if metadata["class"] != MODEL_CLASS:
                raise InputDataError(f"model {path}: metadata/ describes a "
                                     f"{metadata['class']}, not a {MODEL_CLASS}")
            model._resetUid(metadata["uid"])
            DefaultParamsReader.getAndSetParams(model, metadata)
        return model


def saved_class(spark, path: str) -> str | None:
    """The class named by ``path/metadata`` (Spark ML persistence), if any."""
    if not path_exists(spark, path.rstrip("/") + "/metadata"):
        return None
    return str(DefaultParamsReader.loadMetadata(path, spark)["class"])
