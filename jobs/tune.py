"""spark-submit entry point: search PMF hyperparameters on validation data.

    ./spark-submit.sh jobs/tune.py --ratings ratings.csv --trials 30 --folds 3 \\
        --output out/tune
    ./spark-submit.sh jobs/train_pmf.py --config out/tune/best.toml --ratings ratings.csv \\
        --output out/tuned

The test split (the training job's seeded random split with the same --split-seed
and --test-fraction, or a --test file, which is never read) takes no part:
validation data is carved from the training ratings only. Writes results.parquet,
results.json and best.toml (the best model settings, [model]/[fit]/[engine], for the
training job's --config; data and output come from its command line) to --output,
atomically. Exit codes: 0 success, 2 bad input or configuration.
"""

from __future__ import annotations

import logging
import sys

from pmf_spark.cli import (
    JobRun,
    OneLineErrorParser,
    check_inputs,
    check_job,
    job_flag,
    run_job,
)
from pmf_spark.config.files import load_config_file, resolve, to_toml
from pmf_spark.config.params import FORMATS, ID_TYPES, SYNTHETIC_SHAPES
from pmf_spark.errors import ConfigError

log = logging.getLogger("pmf_spark")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"expected comma-separated numbers, got {text!r}") from None


def build_parser():
    from pmf_spark.train.tuning import SearchSpace

    p = OneLineErrorParser(prog="tune.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", metavar="FILE", help="base job configuration (TOML)")
    g = p.add_argument_group("input (as the training job)")
    for name in ("ratings", "format", "id_type", "test", "user_col", "item_col", "rating_col",
                 "timestamp_col", "sep", "synthetic", "test_fraction", "split_seed"):
        job_flag(g, name, {"format": FORMATS, "id_type": ID_TYPES,
                           "synthetic": SYNTHETIC_SHAPES}.get(name))
    s = p.add_argument_group("search")
    s.add_argument("--trials", type=int, metavar="N", default=20,
                   help="trials incl. the base (default: 20)")
    s.add_argument("--folds", type=int, metavar="K", default=1,
                   help="1 = one validation split, k > 1 = k-fold CV (default: 1)")
    s.add_argument("--validation-fraction", type=float, metavar="X", default=0.15,
                   help="share of the training ratings validated on when --folds 1 "
                        "(default: 0.15)")
    s.add_argument("--ranks", metavar="D,...", default="10,20,30,50,80",
                   help="ranks to draw from (default: 10,20,30,50,80)")
    space = SearchSpace()
    for name, what in (("lambda_range", "lambda_u/v"), ("lambda_bias_range", "lambda_bias"),
                       ("missing_weight_range", "missing_weight (missing-data)"),
                       ("alpha_range", "alpha (implicit)")):
        default = ",".join(f"{x:g}" for x in getattr(space, name))
        s.add_argument("--" + name.replace("_", "-"), metavar="LO,HI", default=default,
                       help=f"log-uniform range of {what} (default: {default})")
    s.add_argument("--priors", metavar="MODE,...", default="fixed",
                   help="prior modes to draw from, e.g. fixed,spherical,diagonal (default: fixed)")
    s.add_argument("--metric", metavar="METRIC", default="rmse",
                   help="what to optimise on validation: rmse (the rating model) or a ranking "
                        "metric of the top-k lists, e.g. ndcg@10, precision@10, recall@20, "
                        "map@10 (the ranking model that orders them) (default: rmse)")
    s.add_argument("--models", metavar="MODEL,...", default="missing-data,implicit",
                   help="ranking models to draw from (ranking metrics; default: "
                        "missing-data,implicit)")
    s.add_argument("--epochs", type=int, metavar="N",
                   help="epochs per trial (default: the base config's)")
    s.add_argument("--seed", type=int, metavar="SEED", default=0,
                   help="seed of the search (default: 0)")
    s.add_argument("--parallel", type=int, metavar="N", default=0,
                   help="trials trained at once; 0 = cores // blocks (default: 0)")
    s.add_argument("--blocks", type=int, metavar="N", default=0,
                   help="blocks per trial; 0 = cores (default: 0)")
    o = p.add_argument_group("output")
    o.add_argument("--output", metavar="DIR", default="out/tune",
                   help="where results.parquet, results.json and best.toml go, replaced "
                        "atomically (default: out/tune)")
    p.add_argument("--verbose", action="store_true", help="keep Spark's own log messages")
    return p


def settings(args):
    """(job, trials, space) from the flags and the --config file."""
    from pmf_spark.train.tuning import SearchSpace, parse_metric, sample_trials

    file_values = load_config_file(args.config) if args.config else None
    job_flags = {k: v for k, v in {
        "ratings": args.ratings, "format": args.format, "test": args.test,
        "id_type": args.id_type,
        "user_col": args.user_col, "item_col": args.item_col, "rating_col": args.rating_col,
        "timestamp_col": args.timestamp_col, "sep": args.sep, "synthetic": args.synthetic,
        "test_fraction": args.test_fraction, "split_seed": args.split_seed}.items()
        if v is not None}
    model_flags = {"epochs": args.epochs} if args.epochs is not None else {}
    job, base = resolve(file_values, {"job": job_flags, "params": model_flags})
    if args.trials < 1 or args.folds < 1:
        raise ConfigError("trials and folds must be >= 1")
    if not 0 < args.validation_fraction < 1:
        raise ConfigError(f"validation_fraction: must be in (0, 1), got "
                          f"{args.validation_fraction}")
    ranges = {}
    for flag in ("lambda_range", "lambda_bias_range", "missing_weight_range", "alpha_range"):
        ranges[flag] = _floats(getattr(args, flag))
        if len(ranges[flag]) != 2:
            raise ConfigError(f"--{flag.replace('_', '-')} takes low,high")
    parse_metric(args.metric)
    space = SearchSpace(ranks=tuple(int(x) for x in _floats(args.ranks)),
                        priors=tuple(x.strip() for x in args.priors.split(",")),
                        ranking_models=tuple(x.strip() for x in args.models.split(",")),
                        **ranges)
    return job, base, sample_trials(space, base, args.trials, args.seed, args.metric), space


def best_toml(job, params, quality: str, epochs_given: bool = False) -> str:
    """The best trial's model settings ([model], [fit], [engine], [ranker]) as TOML: data
    and output stay on the command line, so training with it never overwrites another
    run's output or records the wrong input. The epochs are the trials' (said in a
    comment when the search's --epochs set them)."""
    source = job.ratings or f"the built-in synthetic data {job.synthetic!r}"
    epochs = (f"# epochs = {params.fit.epochs} is the search's --epochs per trial; "
              f"train longer with the training job's --epochs\n" if epochs_given else "")
    return ("# the best trial of jobs/tune.py on " + source + f" ({quality}); model settings "
            "only:\n# give the data and the output on the command line, e.g.\n"
            "#   ./spark-submit.sh jobs/train_pmf.py --config best.toml --ratings FILE "
            "--output DIR\n" + epochs + to_toml(None, params.replace(blocks=0)))


def write_results(spark, args, job, base, space, results, out) -> None:
    """results.parquet, results.json and best.toml, committed atomically into ``out``
    (opened before the search)."""
    import pandas as pd

    from pmf_spark.train.tuning import best_params, describe_trial, higher_is_better, spread

    sign = -1.0 if higher_is_better(args.metric) else 1.0
    rows = sorted((r.row() for r in results), key=lambda r: sign * r["val_score"])
    best = min(results, key=lambda r: sign * r.mean)
    spark.createDataFrame(pd.DataFrame(rows)).coalesce(1).write.parquet(
        out.path("results.parquet"))
    out.write_json("results.json", {"folds": args.folds, "metric": args.metric,
                                    "trials": rows, "search": space.__dict__,
                                    "best_trial": best.trial})
    out.write_text("best.toml", best_toml(
        job, best_params(base, best.params, args.metric),
        f"validation {args.metric} {spread(best.mean, best.sd, args.folds)}",
        args.epochs is not None))
    out.commit({"tables": {"results.parquet": len(rows)}})
    log.info("best: trial %d  %s  validation %s %s  ->  %s/best.toml", best.trial,
             describe_trial(best.params), args.metric, spread(best.mean, best.sd, args.folds),
             args.output)
    if args.epochs is not None:
        log.info("best.toml keeps the search's --epochs %d per trial: give the training job "
                 "--epochs to train longer", args.epochs)


def search(spark, args, job, base, trials, space) -> None:
    from pmf_spark.train.job import load_inputs
    from pmf_spark.train.preflight import open_output
    from pmf_spark.train.tuning import run_search, training_part

    with open_output(spark, job.replace(checkpoint_dir=None, resume=False), "pmf-spark tune",
                     output=args.output) as out:
        train, _ = load_inputs(spark, job.replace(test=None))
        if not job.test:
            # the training job's test split is removed before anything else reads the data
            train = training_part(train, split=job.split, split_seed=job.split_seed,
                                  test_fraction=job.test_fraction, leave_last=job.leave_last,
                                  on_duplicate=job.on_duplicate)
        cores = spark.sparkContext.defaultParallelism
        blocks = args.blocks or max(1, cores)
        parallel = args.parallel or max(1, cores // blocks)
        results = run_search(
            spark, train, trials, split_seed=job.split_seed, on_duplicate=job.on_duplicate,
            folds=args.folds, validation_fraction=args.validation_fraction, parallel=parallel,
            blocks=blocks, metric=args.metric, relevance_threshold=job.relevance_threshold,
            min_item_ratings=job.min_item_ratings)
        write_results(spark, args, job, base, space, results, out)


def _checks(args) -> int | None:
    job = settings(args)[0]
    # the ratings only: a --test file, exclusions, candidates or a warm start in the
    # base configuration are the training job's, never read here
    check_inputs(job.replace(test=None, exclude_items=None, candidates=None,
                             warm_start=None))
    return None


def check_args(argv: list[str] | None) -> int | None:
    """The argument checks that need no Spark (spark-submit.sh runs them before the
    JVM starts): None to go on, else the exit code."""
    return check_job(build_parser, _checks, argv)


def _body(run: JobRun) -> int:
    run.output = run.args.output
    job, base, trials, space = settings(run.args)
    with run.spark() as spark:
        search(spark, run.args, job, base, trials, space)
    return 0


def main(argv: list[str] | None = None, spark=None) -> int:
    return run_job("pmf-spark tune", build_parser, _body, argv, spark, log_start=False)


if __name__ == "__main__":
    sys.exit(main())
