"""spark-submit entry point: answer for users from a trained model's Parquet.

    # what did user 18 like, and what do we recommend (titles from u.item)
    ./spark-submit.sh jobs/recommend.py --model out/ml100k --user 18 --items ml-100k/u.item

    # top-k for a list of users, to Parquet
    ./spark-submit.sh jobs/recommend.py --model out/ml100k --users ids.txt --output out/recs

    # a new user, folded in against the fixed item factors (no retraining)
    ./spark-submit.sh jobs/recommend.py --model out/ml100k --ratings-for-new-user mine.csv

Only the model directory is read (model.json, factor tables, the rating splits);
nothing is retrained. Exit codes: 0 success, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np
import pandas as pd

from pmf_spark import interrupt
from pmf_spark.cli import (
    OneLineErrorParser,
    announce_driver,
    report_error,
    run_guarded,
    setup_logging,
)
from pmf_spark.errors import InputDataError, PMFError, PMFUserError

log = logging.getLogger("pmf_spark")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="recommend.py",
                           description="Recommendations from a trained pmf-spark model.")
    p.add_argument("--model", required=True, metavar="DIR", help="the training job's --output")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", metavar="ID", help="print what this user liked and the top-k")
    who.add_argument("--users", metavar="PATH",
                     help="file of user ids, one per line: top-k for each, to --output (Parquet)")
    who.add_argument("--ratings-for-new-user", metavar="PATH",
                     help="CSV of item_id,rating (header optional): fold the user in, print top-k")
    p.add_argument("--items", metavar="FILE",
                   help="titles and genres: u.item, movies.dat or movies.csv")
    p.add_argument("--items-encoding", metavar="ENC",
                   help="encoding of --items (default: Latin-1 for u.item/movies.dat, else UTF-8)")
    p.add_argument("--top-k", type=int, default=None, help="default: the model's top_k (or 10)")
    p.add_argument("--min-item-ratings", type=int, default=None,
                   help="recommend only items with this many training ratings "
                        "(default: the model's setting)")
    p.add_argument("--exclude-items", metavar="PATH", help="item ids never to recommend")
    p.add_argument("--relevance-threshold", type=float, default=None,
                   help="'highly rated' means at least this (default: the model's; 3/4 "
                        "up its rating scale, 4 on 1-5)")
    p.add_argument("--output", metavar="DIR", help="output directory for --users")
    p.add_argument("--blocks", type=int, default=0, help="user blocks for --users (0 = cores)")
    p.add_argument("--verbose", action="store_true", help="keep Spark's own log messages")
    return p


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:>{w}}}" if i < 2 else f"{{:<{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*header)] + [fmt.format(*map(str, r)) for r in rows]
    return "\n".join("  " + ln.rstrip() for ln in lines)


def _titles(spark, args, ids) -> dict:
    if not args.items or len(ids) == 0:
        return {}
    from pmf_spark.titles import read_item_titles

    t = read_item_titles(spark, args.items, ids, args.items_encoding)
    return {str(r.item_id): (r.title, r.genres or "") for r in t.itertuples(index=False)}


def _print_recs(recs: pd.DataFrame, titles: dict, heading: str) -> None:
    print(heading)
    rows = []
    for r in recs.itertuples(index=False):
        title, genres = titles.get(str(r.item_id), ("", ""))
        rows.append([r.rank, f"{r.predicted_rating:.2f}", r.item_id, title, genres])
    print(_table(rows, ["rank", "predicted", "item", "title", "genres"]) if rows else "  (none)")


def _candidates(spark, model, args):
    from pmf_spark.io import read_id_list
    from pmf_spark.topk import candidate_items

    job = model.meta.get("job", {})
    min_r = args.min_item_ratings if args.min_item_ratings is not None \
        else int(job.get("min_item_ratings", 1))
    excluded = None
    if args.exclude_items:
        ids = read_id_list(spark, args.exclude_items, model.id_type, "exclude-items")
        idx = model.item_idx([r[0] for r in ids.collect()])
        excluded = idx[idx >= 0]
    return candidate_items(model.item_counts, min_r, excluded)


def answer_user(spark, model, args, k, candidates, threshold) -> None:
    uid = model.parse_id(args.user)
    row = model.users.where(model.users.user_id == uid).select("features", "bias",
                                                              "n_ratings").first()
    train = [r[0] for r in model.train.where(model.train.user_id == uid)
             .select("item_id").collect()]
    test = (model.test.where((model.test.user_id == uid) & (model.test.rating >= threshold))
            .orderBy(model.test.rating.desc(), "item_id").toPandas())
    if row is None or row["n_ratings"] == 0:
        why = "is not in the model" if row is None else "has no training ratings"
        print(f"User {uid} {why}: recommending the most popular items.")
        recs = model.recommend_one(None, 0.0, train, k, candidates)
    else:
        print(f"User {uid}: {row['n_ratings']} training ratings.")
        ranking = None
        if model.ranker is not None:
            r = model.ranking_users.where(model.ranking_users.user_id == uid) \
                .select("features", "bias").first()
            ranking = (r["features"], r["bias"]) if r is not None else None
        recs = model.recommend_one(row["features"], row["bias"], train, k, candidates,
                                   ranking=ranking)
    titles = _titles(spark, args, list(test["item_id"]) + list(recs["item_id"]))
    print(f"\nHighly rated in the test split (rating >= {threshold:g}):")
    rows = [[f"{r.rating:g}", r.item_id, *titles.get(str(r.item_id), ("", ""))]
            for r in test.itertuples(index=False)]
    print(_table(rows, ["rating", "item", "title", "genres"]) if rows else "  (none)")
    print()
    _print_recs(recs, titles, f"Top {k} recommendations (items rated in training excluded):")


def answer_new_user(spark, model, args, k, candidates) -> None:
    path = args.ratings_for_new_user
    from pmf_spark.fs import path_exists

    if not path_exists(spark, path):
        raise InputDataError(f"ratings-for-new-user {path}: no such file")
    lines = spark.read.text(path).collect()
    items, ratings = [], []
    for n, line in enumerate(r[0] for r in lines):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = [p.strip() for p in text.replace("\t", ",").split(",")]
        if len(parts) != 2:
            raise InputDataError(f"ratings-for-new-user {path}: line {n + 1} {text!r} is not "
                                 f"'item_id,rating'")
        try:
            value = float(parts[1])
        except ValueError:
            if n == 0:
                continue  # a header
            raise InputDataError(f"ratings-for-new-user {path}: line {n + 1}: non-numeric "
                                 f"rating {parts[1]!r}") from None
        if not np.isfinite(value) or not (model.lo <= value <= model.hi):
            raise InputDataError(f"ratings-for-new-user {path}: line {n + 1}: rating {parts[1]} "
                                 f"is outside [{model.lo:g}, {model.hi:g}]")
        items.append(model.parse_id(parts[0]) if model.id_type == "long" else parts[0])
        ratings.append(value)
    if not items:
        raise InputDataError(f"ratings-for-new-user {path}: no ratings")
    factors, bias, used = model.fold_in(items, ratings)
    if factors is None:
        print(f"None of the {len(items)} rated items is in the model: recommending the most "
              f"popular items.")
    else:
        print(f"Folded in a new user from {used} of {len(items)} ratings "
              f"(bias {bias:+.3f}).")
    recs = model.recommend_one(factors, bias, items, k, candidates,
                               ranking=model.fold_in_ranking(items, ratings))
    titles = _titles(spark, args, list(recs["item_id"]))
    _print_recs(recs, titles, f"\nTop {k} recommendations for the new user:")


def answer_users(spark, model, args, k, candidates) -> None:
    from pmf_spark.commit import AtomicOutput
    from pmf_spark.io import read_id_list

    with AtomicOutput(spark, args.output, job="pmf-spark recommend") as out:
        ids = read_id_list(spark, args.users, model.id_type, "users")
        blocks = args.blocks or spark.sparkContext.defaultParallelism
        recs = model.recommend_users(ids, k, candidates, blocks)
        (recs.repartitionByRange(max(1, blocks), "user_id")
         .sortWithinPartitions("user_id", "rank").write.parquet(out.path("recommendations")))
        written = spark.read.parquet(out.path("recommendations"))
        n = written.count()
        users = written.select("user_id").distinct().count()
        cold = written.where("cold_start").select("user_id").distinct().count()
        out.commit({"tables": {"recommendations": n}, "model": model.path})
    log.info("wrote top-%d for %d user(s) (%d cold start) to %s", k, users, cold, args.output)


def answer(spark, args) -> None:
    from pmf_spark.evaluate import relevance_threshold
    from pmf_spark.saved import SavedModel

    model = SavedModel(spark, args.model)
    job = model.meta.get("job", {})
    k = args.top_k or int(job.get("top_k") or 10)
    threshold = relevance_threshold(
        args.relevance_threshold if args.relevance_threshold is not None
        else job.get("relevance_threshold"), model.lo, model.hi)
    candidates = _candidates(spark, model, args)
    if args.user is not None:
        answer_user(spark, model, args, k, candidates, threshold)
    elif args.users is not None:
        answer_users(spark, model, args, k, candidates)
    else:
        answer_new_user(spark, model, args, k, candidates)


def _check(args) -> None:
    if args.top_k is not None and args.top_k < 1:
        raise PMFUserError(f"top_k: must be >= 1, got {args.top_k}")
    if args.users is not None and not args.output:
        raise InputDataError("--users needs --output DIR for the Parquet result")


def check_args(argv: list[str] | None) -> int | None:
    """The argument checks that need no Spark (spark-submit.sh runs them before the
    JVM starts): None to go on, else the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        _check(args)
    except PMFError as exc:
        return report_error(exc)
    return None


def main(argv: list[str] | None = None, spark=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    setup_logging(args.verbose)
    announce_driver()
    own = spark is None
    state: dict = {}

    def body() -> int:
        _check(args)
        state["spark"] = spark or session("pmf-spark recommend", args.verbose)
        restore = interrupt.watch(state["spark"])
        try:
            answer(state["spark"], args)
        finally:
            restore()
        return 0

    try:
        return run_guarded(body, lambda: args.output if args.users else None)
    finally:
        if own and state.get("spark") is not None:
            state["spark"].stop()


def session(app: str, verbose: bool):
    """The job's SparkSession (its settings come from spark-submit and conf/)."""
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.appName(app).getOrCreate()
    if not verbose:
        spark.sparkContext.setLogLevel("ERROR")
    return spark


if __name__ == "__main__":
    sys.exit(main())
