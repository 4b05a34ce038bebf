"""Answers from a trained model: one user's top-k, a new user's, similar items and users,
the users to target with an item -- in about a second, without Spark -- and lists for
many users or many new users on Spark.

    # plain Python, no JVM (also installed as the command pmf-recommend)
    .venv/bin/python jobs/recommend.py --model out/ml100k --user 18 --items u.item
    .venv/bin/python jobs/recommend.py --model out/ml100k --ratings-for-new-user mine.csv
    .venv/bin/python jobs/recommend.py --model out/ml100k --similar-items 50
    .venv/bin/python jobs/recommend.py --model out/ml100k --users-for-item 50
    .venv/bin/python jobs/recommend.py --model out/ml100k --similar-users 18

    # many users, to Parquet: Spark for large files, chosen by size (--engine forces one)
    ./spark-submit.sh jobs/recommend.py --model out/ml100k --users ids.txt --output out/recs
    ./spark-submit.sh jobs/recommend.py --model out/ml100k --new-users ratings.csv \\
        --output out/new

Only the model directory is read (model.json, factor tables, the rating splits);
nothing is retrained. Both engines give the same answers (the numpy is shared,
:mod:`pmf_spark.serve.local`). Exit codes: 0 success, 2 bad input, 4 an output could not be
written (one line on stderr).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from pmf_spark.cli import JobRun, OneLineErrorParser, check_inputs, check_job, run_job
from pmf_spark.errors import InputDataError, PMFUserError
from pmf_spark.serve.batch import answer_many, read_ratings

log = logging.getLogger("pmf_spark")

#: files of ids or ratings up to this many lines are answered without Spark
LOCAL_MAX_LINES = 10_000
QUESTIONS = ("user", "users", "ratings_for_new_user", "new_users", "similar_items",
             "users_for_item", "similar_users")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="recommend.py",
                           description="Answers from a trained pmf-spark model.")
    p.add_argument("--model", required=True, metavar="DIR", help="the training job's --output")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", metavar="ID", help="what this user liked, and their top-k")
    who.add_argument("--users", metavar="PATH",
                     help="file of user ids, one per line: top-k for each, to --output (Parquet)")
    who.add_argument("--ratings-for-new-user", metavar="PATH",
                     help="file of item_id,rating (header optional): fold the user in, top-k")
    who.add_argument("--new-users", metavar="PATH",
                     help="file of user_id,item_id,rating for users the model does not know: "
                          "fold each in, to --output (their factors and top-k)")
    who.add_argument("--similar-items", metavar="ITEM", help="the items most like this one")
    who.add_argument("--users-for-item", metavar="ITEM",
                     help="the users with the highest predicted rating for this item, never "
                          "one who rated it")
    who.add_argument("--similar-users", metavar="USER", help="the users most like this one")
    p.add_argument("--items", metavar="FILE",
                   help="titles and genres: u.item, movies.dat or movies.csv")
    p.add_argument("--items-encoding", metavar="ENC",
                   help="encoding of --items (default: Latin-1 for u.item/movies.dat, else UTF-8)")
    p.add_argument("--top-k", type=int, default=None, help="default: the model's top_k (or 10)")
    p.add_argument("--min-item-ratings", type=int, default=None,
                   help="recommend only items with this many training ratings "
                        "(default: the model's setting)")
    p.add_argument("--exclude-items", metavar="PATH", help="item ids never to recommend")
    p.add_argument("--candidates", metavar="PATH",
                   help="item ids to recommend from (an allow-list, on top of the exclusions)")
    p.add_argument("--relevance-threshold", type=float, default=None,
                   help="'highly rated' means at least this (default: the model's; 3/4 "
                        "up its rating scale, 4 on 1-5)")
    p.add_argument("--output", metavar="DIR", help="output directory for --users / --new-users")
    p.add_argument("--engine", choices=("auto", "local", "spark"), default="auto",
                   help="auto (default): without Spark, unless a file of ids or ratings has "
                        f"more than {LOCAL_MAX_LINES:,} lines or is not a local file; local: "
                        "always without Spark; spark: always on Spark")
    p.add_argument("--blocks", type=int, default=0, help="user blocks on Spark (0 = cores)")
    p.add_argument("--verbose", action="store_true", help="keep Spark's own log messages")
    return p


# ----------------------------------------------------------------------- choosing an engine

def _local_file(path: str) -> str | None:
    if path.startswith("file:"):
        path = path[len("file://"):] if path.startswith("file://") else path[len("file:"):]
    elif "://" in path:
        return None
    return path if os.path.isfile(path) else None


def _lines_at_most(path: str, limit: int) -> bool:
    with open(path, "rb") as fh:
        for n, _ in enumerate(fh, 1):
            if n > limit:
                return False
    return True


def choose_engine(args) -> str:
    """'local' or 'spark' for these arguments (see --engine)."""
    if args.engine != "auto":
        return args.engine
    if "://" in args.model and not args.model.startswith("file:"):
        return "spark"
    path = args.users or args.new_users
    for extra in (path, args.candidates, args.exclude_items):
        if extra is not None and _local_file(extra) is None:
            return "spark"
    if path is not None and not _lines_at_most(path, LOCAL_MAX_LINES):
        return "spark"
    return "local"


# ----------------------------------------------------------------------- printing

def _table(rows: list[list[str]], header: list[str], right: int = 2) -> str:
    """Aligned columns, the first ``right`` of them right-aligned (numbers)."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:>{w}}}" if i < right else f"{{:<{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*header)] + [fmt.format(*map(str, r)) for r in rows]
    return "\n".join("  " + ln.rstrip() for ln in lines)


class Titles:
    """Titles and genres from --items, read with Spark or in plain Python."""

    def __init__(self, args, spark=None):
        self.args, self.spark = args, spark

    def __call__(self, ids) -> dict:
        ids = list(ids)
        if not self.args.items or not ids:
            return {}
        if self.spark is None:
            from pmf_spark.inputs.titles import read_titles_local

            return read_titles_local(self.args.items, ids, self.args.items_encoding)
        from pmf_spark.inputs.titles import read_item_titles

        t = read_item_titles(self.spark, self.args.items, ids, self.args.items_encoding)
        return {str(r.item_id): (r.title, r.genres or "") for r in t.itertuples(index=False)}


def _order_words(model) -> str:
    """What a list is ordered by, for its heading."""
    if model.ranker is not None:
        return f"ordered by the {model.ranking_params.fit.model} model's score"
    return "ordered by predicted rating" if model.rates else "ordered by preference score"


def _print_recs(recs, titles: dict, heading: str, named: bool, model=None) -> None:
    """A top-k list: rank, the score it is ordered by (with a ranking model, or a model
    that scores preferences), the predicted rating (models that predict ratings), the
    item (and titles)."""
    rates = model is None or model.rates
    scored = model is not None and (model.ranker is not None or not model.rates)
    cold = bool(len(recs)) and bool(recs["cold_start"].iloc[0]) if "cold_start" in recs else False
    if model is not None:
        heading = (f"{heading[:-1]}, {_order_words(model) if not cold else 'most popular'}:"
                   if heading.endswith(":") else heading)
    print(heading)
    rows = []
    for r in recs.itertuples(index=False):
        names = list(titles.get(str(r.item_id), ("", ""))) if named else []
        cells = [r.rank] + ([f"{r.score:.3f}"] if scored and not cold else []) \
            + ([f"{r.predicted_rating:.2f}"] if rates else [])
        rows.append([*cells, r.item_id, *names])
    header = ["rank"] + (["score"] if scored and not cold else []) \
        + (["predicted"] if rates else []) + ["item"] + (["title", "genres"] if named else [])
    print(_table(rows, header, len(header) - (3 if named else 1)) if rows else "  (none)")


def _print_items(df, key: str, values: list[str], titles: dict, heading: str) -> None:
    """A ranked list of items or users: rank, the values, the id (and titles)."""
    print(heading)
    rows = []
    for n in range(len(df)):
        ident = df[key].iloc[n]
        rows.append([int(df["rank"].iloc[n]), *(f"{float(df[v].iloc[n]):.3f}" for v in values),
                     ident, *(titles.get(str(ident), ("", "")) if titles else ())])
    header = ["rank", *[v.replace("predicted_rating", "predicted") for v in values],
              key.replace("neighbor_id", "id").replace("_id", "")]
    table = _table(rows, header + (["title", "genres"] if titles else []), 1 + len(values))
    print(table if rows else "  (none)")


# ----------------------------------------------------------------------- questions

def _rules(model, args):
    """(k, candidate mask) from the flags and the model's settings."""
    from pmf_spark.serve.files import read_id_file

    def listed(path, role):
        if path is None:
            return None
        if model.spark_session is not None:
            from pmf_spark.inputs.read import read_id_list

            return [r[0] for r in read_id_list(model.spark_session, path, model.id_type,
                                               role).collect()]
        return read_id_file(path, model.id_type, role)

    k = args.top_k or model.default_k
    cand = model.candidates(args.min_item_ratings, listed(args.exclude_items, "exclude-items"),
                            listed(args.candidates, "candidates"))
    return k, cand


def answer_user(model, args, k, cand, titles) -> None:
    uid = model.parse_id(args.user)
    threshold = (args.relevance_threshold if args.relevance_threshold is not None
                 else model.default_threshold)
    row = model.user_row(uid)
    if row is None or row[2] == 0:
        why = "is not in the model" if row is None else "has no training ratings"
        print(f"User {uid} {why}: recommending the most popular items.")
        factors, bias = None, 0.0
    else:
        print(f"User {uid}: {row[2]} training ratings.")
        factors, bias = row[0], row[1]
    ranking = model.ranking_row(uid) if model.ranker is not None and factors is not None \
        else None
    recs = model.recommend_one(factors, bias, model.rated_items(uid), k, cand, ranking)
    test = model.test_ratings(uid, threshold)
    names = titles(list(test["item_id"]) + list(recs["item_id"]))
    if model.rates:
        print(f"\nHighly rated in the test split (rating >= {threshold:g}):")
    else:
        print("\nHeld out in the test split (implicit feedback: every held-out item counts):")
    named = bool(args.items)
    rows = [[f"{r.rating:g}", r.item_id,
             *(names.get(str(r.item_id), ("", "")) if named else ())]
            for r in test.itertuples(index=False)]
    header = ["rating" if model.rates else "value", "item"] \
        + (["title", "genres"] if named else [])
    print(_table(rows, header) if rows else "  (none)")
    print()
    _print_recs(recs, names, f"Top {k} recommendations (items rated in training excluded):",
                named, model)


def answer_new_user(model, args, k, cand, titles) -> None:
    frame = read_ratings(model, args.ratings_for_new_user, ("item_id", "rating"),
                         "ratings-for-new-user")
    items, ratings = frame["item_id"].to_numpy(), frame["rating"].to_numpy()
    factors, bias, used = model.fold_in(items, ratings)
    if factors is None:
        print(f"None of the {len(items)} rated items is in the model: recommending the most "
              f"popular items.")
    else:
        print(f"Folded in a new user from {used} of {len(items)} ratings (bias {bias:+.3f}).")
    recs = model.recommend_one(factors, bias, items, k, cand,
                               ranking=model.fold_in_ranking(items, ratings))
    typical = model.typical_user_ratings()
    if factors is not None and used < typical / 4:
        print(f"With {used} ratings (trained users have {typical:g} at the median) the list "
              f"leans on what is popular; more ratings make it more personal.")
    _print_recs(recs, titles(recs["item_id"]), f"\nTop {k} recommendations for the new user:",
                bool(args.items), model)


def answer_neighbours(model, args, k, titles) -> None:
    if args.similar_items is not None:
        nb = model.similar_items(args.similar_items, k, args.min_item_ratings)
        iid = nb["item_id"].iloc[0] if len(nb) else model.parse_id(args.similar_items, "item")
        names = titles([iid, *nb["neighbor_id"]])
        title = names.get(str(iid), ("",))[0]
        support = model.neighbour_support(args.min_item_ratings)
        _print_items(nb, "neighbor_id", ["similarity"], names if args.items else {},
                     f"Items most like item {iid}{f' ({title})' if title else ''} "
                     f"(cosine of the item factors; items with at least {support} training "
                     f"ratings, --min-item-ratings to change):")
    elif args.similar_users is not None:
        nb = model.similar_users(args.similar_users, k)
        _print_items(nb, "neighbor_id", ["similarity"], {},
                     f"Users most like user {model.parse_id(args.similar_users)} (cosine of "
                     f"the user factors):")
    else:
        top = model.users_for_item(args.users_for_item, k)
        iid = model.parse_id(args.users_for_item, "item")
        title = titles([iid]).get(str(iid), ("",))[0]
        by = model.ranking_params.fit.model if model.ranker is not None else "rating"
        _print_items(top, "user_id", ["predicted_rating", "score"], {},
                     f"Users to show item {iid}{f' ({title})' if title else ''} to, first by "
                     f"the {by} model's score, never one who rated it:")


# ----------------------------------------------------------------------- main

def answer(model, args, titles) -> None:
    k, cand = _rules(model, args)
    if args.user is not None:
        answer_user(model, args, k, cand, titles)
    elif args.ratings_for_new_user is not None:
        answer_new_user(model, args, k, cand, titles)
    elif args.users is not None or args.new_users is not None:
        answer_many(model, k, cand, args.output, users=args.users, new_users=args.new_users,
                    blocks=args.blocks)
    else:
        answer_neighbours(model, args, k, titles)


def run_local(args) -> None:
    from pmf_spark.serve.local import LocalModel

    t0 = time.perf_counter()
    model = LocalModel(args.model)
    log.debug("read %s in %.2fs without Spark", args.model, time.perf_counter() - t0)
    answer(model, args, Titles(args))


def run_spark(spark, args) -> None:
    from pmf_spark.serve.saved import SavedModel

    model = SavedModel(spark, args.model)
    answer(model, args, Titles(args, spark))


def _check(args) -> None:
    if args.top_k is not None and args.top_k < 1:
        raise PMFUserError(f"top_k: must be >= 1, got {args.top_k}")
    if (args.users is not None or args.new_users is not None) and not args.output:
        what = "--users" if args.users is not None else "--new-users"
        raise InputDataError(f"{what} needs --output DIR for the Parquet result")


def _checks(args) -> int | None:
    _check(args)
    check_inputs(None, {"model": args.model, "users": args.users,
                        "ratings-for-new-user": args.ratings_for_new_user,
                        "new-users": args.new_users, "items": args.items,
                        "exclude-items": args.exclude_items, "candidates": args.candidates})
    return None


def check_args(argv: list[str] | None) -> int | None:
    """The argument checks that need no Spark (spark-submit.sh runs them before the
    JVM starts): None to go on, else the exit code."""
    return check_job(build_parser, _checks, argv)


def _body(run: JobRun) -> int:
    args = run.args
    _check(args)
    if args.users or args.new_users:
        run.output = args.output
    engine = choose_engine(args) if not run.has_session or args.engine != "auto" else "spark"
    if engine == "local":
        if "PYSPARK_GATEWAY_PORT" in os.environ:        # started by spark-submit
            log.info("this question needs no Spark: `.venv/bin/python jobs/recommend.py "
                     "...` (or pmf-recommend) answers it without starting a JVM")
        run_local(args)
        return 0
    if not run.has_session:
        log.info("answering on Spark (a file of many ids or ratings, or --engine spark); "
                 "starting the Spark session ...")
    with run.spark() as spark:
        run_spark(spark, args)
    return 0


def main(argv: list[str] | None = None, spark=None) -> int:
    """Answer; returns the exit code. ``spark``: a session to use for the Spark engine
    (and leave running); by default one is created only when the Spark engine is chosen."""
    return run_job("pmf-spark recommend", build_parser, _body, argv, spark, log_start=False,
                   workers_python=True)


if __name__ == "__main__":
    sys.exit(main())
