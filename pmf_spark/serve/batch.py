"""Batch answers written as Parquet: top-k lists for a file of user ids (``--users``)
or for new users folded in from a file of their ratings (``--new-users``), by either
engine -- without Spark for a few thousand lines (:class:`~pmf_spark.serve.local.LocalModel`,
pyarrow), on Spark for more (:class:`~pmf_spark.serve.saved.SavedModel`). The output
holds ``recommendations/`` (and, for new users, their ``user_factors/``) under the
model directory's names (:mod:`pmf_spark.outputs.modeldir`), and is never a directory
this command did not write. No pyspark at import: the Spark side imports it when run.
"""

from __future__ import annotations

import functools
import logging
import os

from pmf_spark.errors import InputDataError, PMFUserError
from pmf_spark.outputs.modeldir import RECS_TABLE, factors_table

log = logging.getLogger("pmf_spark")

NEW_USER_LAYOUT = ("user_id", "item_id", "rating")


def read_ratings(model, path: str, layout: tuple[str, ...], role: str):
    """A small ratings file as a pandas frame, parsed the same way by both engines
    (through Spark's filesystems when the model was read with Spark)."""
    from pmf_spark.serve.files import check_ratings, parse_rating_lines, read_rating_file

    spark = model.spark_session
    if spark is None:
        return read_rating_file(path, layout, model.id_type, model.lo, model.hi, role)
    from pmf_spark.storage.hadoop import path_exists

    if not path_exists(spark, path):
        raise InputDataError(f"{role} {path}: no such file")
    lines = [r[0] for r in spark.read.text(path).collect()]
    frame, problem = parse_rating_lines(lines, layout, model.id_type, model.lo, model.hi)
    if problem:
        raise InputDataError(f"{role} {path}: {problem}")
    check_ratings(frame, layout, path, role)
    return frame


def spark_ratings(spark, model, path: str):
    """New users' rating lines as a DataFrame, parsed per partition by the
    plain-Python parser; a bad line, a repeated (user, item) or no ratings is one line."""
    from pyspark.sql import functions as F

    from pmf_spark.serve.files import parse_partition
    from pmf_spark.storage.hadoop import path_exists

    if not path_exists(spark, path):
        raise InputDataError(f"new-users {path}: no such file or directory")
    id_type = "bigint" if model.id_type == "long" else "string"
    fn = functools.partial(parse_partition, id_type=model.id_type, lo=model.lo, hi=model.hi)
    parsed = spark.read.text(path).mapInPandas(
        fn, f"user_id {id_type}, item_id {id_type}, rating double, problem string").cache()
    bad = parsed.where(F.col("problem").isNotNull()).select("problem").first()
    if bad is not None:
        raise InputDataError(f"new-users {path}: {bad[0]}")
    ratings = parsed.where(F.col("problem").isNull()).drop("problem")
    dup = ratings.groupBy("user_id", "item_id").count().where("count > 1").first()
    if dup is not None:
        raise InputDataError(f"new-users {path}: user_id {dup[0]} item_id {dup[1]} is rated "
                             f"more than once")
    if ratings.first() is None:
        raise InputDataError(f"new-users {path}: no ratings")
    return ratings


def _needs_output(output: str | None, users: str | None) -> str:
    if not output:
        what = "--users" if users else "--new-users"
        raise PMFUserError(f"{what} needs --output DIR for the Parquet result")
    return output


def _written(k: int, users: int, cold: int, output: str) -> None:
    log.info("wrote top-%d for %d user(s) (%d without known ratings: most popular items) to %s",
             k, users, cold, output)


def answer_many(model, k: int, cand, output: str | None, *, users: str | None = None,
                new_users: str | None = None, blocks: int | None = None) -> None:
    """Top-``k`` lists (from the candidate mask ``cand``) for the ids in the file
    ``users``, or for the new users in the ratings file ``new_users``, written to
    ``output`` by the engine ``model`` was read with."""
    if model.spark_session is None:
        answer_many_local(model, k, cand, output, users=users, new_users=new_users)
    else:
        answer_many_spark(model.spark_session, model, k, cand, output, users=users,
                          new_users=new_users, blocks=blocks)


def answer_many_local(model, k: int, cand, output: str | None, *, users: str | None = None,
                      new_users: str | None = None) -> None:
    """:func:`answer_many` without Spark (pyarrow writes, an atomic swap)."""
    from pmf_spark.serve.files import (
        factors_table as factors_arrow,
    )
    from pmf_spark.serve.files import (
        is_answer_output,
        read_id_file,
        recs_table,
        write_local_output,
    )

    output = _needs_output(output, users)
    if os.path.exists(output) and not is_answer_output(output):
        raise PMFUserError(f"output {output}: exists and is not an answer written by "
                           f"recommend.py; refusing to replace it (choose another --output)")
    tables = {}
    if users:
        recs = model.recommend_users(read_id_file(users, model.id_type, "users"), k, cand)
    else:
        assert new_users is not None
        ratings = read_ratings(model, new_users, NEW_USER_LAYOUT, "new-users")
        folded = model.fold_in_users(ratings)
        recs = model.recommend_folded(folded, k, cand)
        tables[factors_table("user")] = factors_arrow(folded, model.id_type, model.rank)
    tables[RECS_TABLE] = recs_table(recs, model.id_type)
    write_local_output(output, tables, {"model": model.path})
    _written(k, recs["user_id"].nunique(),
             int(recs.loc[recs.cold_start, "user_id"].nunique()), output)


def answer_many_spark(spark, model, k: int, cand, output: str | None, *,
                      users: str | None = None, new_users: str | None = None,
                      blocks: int | None = None) -> None:
    """:func:`answer_many` on Spark, committed like the training job's output (checked,
    locked and staged before any work; swapped in when complete)."""
    from pmf_spark.inputs.read import read_id_list
    from pmf_spark.outputs.commit import AtomicOutput

    output = _needs_output(output, users)
    with AtomicOutput(spark, output, job="pmf-spark recommend") as out:
        blocks = blocks or spark.sparkContext.defaultParallelism
        frames = {}
        if users:
            ids = read_id_list(spark, users, model.id_type, "users")
            frames[RECS_TABLE] = model.recommend_users(ids, k, cand, blocks)
        else:
            assert new_users is not None
            folded = model.fold_in_users_frame(spark_ratings(spark, model, new_users),
                                               blocks).cache()
            frames[factors_table("user")] = folded.select("user_id", "features", "bias",
                                                          "n_ratings")
            frames[RECS_TABLE] = model.recommend_folded_frame(folded, k, cand, blocks)
        counts = {}
        for name, df in frames.items():
            keys = ("user_id", "rank") if name == RECS_TABLE else ("user_id",)
            (df.repartitionByRange(max(1, blocks), "user_id").sortWithinPartitions(*keys)
             .write.parquet(out.path(name)))
            counts[name] = spark.read.parquet(out.path(name)).count()
        written = spark.read.parquet(out.path(RECS_TABLE))
        n_users = written.select("user_id").distinct().count()
        cold = written.where("cold_start").select("user_id").distinct().count()
        out.commit({"tables": counts, "model": model.path})
    _written(k, n_users, cold, output)
