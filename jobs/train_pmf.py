"""spark-submit entry point: train PMF and write factors and metrics to Parquet.

    ./spark-submit.sh jobs/train_pmf.py                          # built-in synthetic data
    ./spark-submit.sh jobs/train_pmf.py --ratings u.data --output out/ml100k
    ./spark-submit.sh jobs/train_pmf.py --config conf/seed.toml --ratings ratings.dat

Exit codes: 0 success, 2 bad input or configuration, 3 training failed numerically,
4 an output could not be written (each one line on stderr), 130 interrupted,
1 an unexpected failure (with a traceback: please report it).
"""

from __future__ import annotations

import argparse
import sys

from pmf_spark.cli import (
    JobRun,
    OneLineErrorParser,
    check_inputs,
    check_job,
    metavar,
    run_job,
    said_default,
    type_of,
)
from pmf_spark.config.files import load_config_file, resolve, to_toml
from pmf_spark.config.params import (
    COLD_START,
    CONFIDENCES,
    DUPLICATE_POLICIES,
    FEEDBACK,
    FORMATS,
    GRAM_DTYPES,
    GROUPS,
    ID_TYPES,
    LINKS,
    PRIORS,
    REG_SCALINGS,
    SPLITS,
    SYNTHETIC_SHAPES,
    JobConfig,
    group_of,
)
from pmf_spark.models import REGISTRY

OPTION_GROUPS = {
    "input": ("job", ["ratings", "ratings_table", "format", "id_type", "feedback",
                      "value_col", "test", "user_col",
                      "item_col", "rating_col", "timestamp_col", "sep", "rating_min",
                      "rating_max", "on_duplicate", "synthetic", "split", "leave_last",
                      "test_fraction", "split_seed",
                      "validation_fraction"]),
    "model": ("params", ["model", "rank", "epochs", "lambda_u", "lambda_v", "biases",
                        "lambda_bias", "reg_scaling", "priors", "prior_update_every",
                        "early_stopping", "link", "clip", "init_std", "seed", "samples",
                        "burn_in", "thin"]),
    "ranking model (orders the top-k lists)": ("params", [
        "recommend_by", "ranking_rank", "ranking_lambda", "ranking_epochs", "missing_weight",
        "missing_rating", "alpha", "confidence", "epsilon"]),
    "output": ("job", ["output", "output_files", "output_partitions", "output_table_prefix",
                       "report"]),
    "recommendations and evaluation": ("job", ["top_k", "eval_k", "min_item_ratings",
                                               "exclude_items", "candidates",
                                               "relevance_threshold", "cold_start",
                                               "similar_items", "users_per_item",
                                               "users_per_item_items", "similar_users"]),
    "fault tolerance": ("job", ["checkpoint_dir", "checkpoint_every", "resume"]),
    "retraining": ("job", ["warm_start"]),
    "spark and performance": ("params", ["blocks", "gram_dtype", "kernel", "chunk_ratings",
                                        "resident_mb"]),
}
CHOICES = {"format": FORMATS, "id_type": ID_TYPES, "synthetic": SYNTHETIC_SHAPES,
           "on_duplicate": DUPLICATE_POLICIES, "feedback": FEEDBACK,
           "reg_scaling": REG_SCALINGS, "link": LINKS, "gram_dtype": GRAM_DTYPES,
           "cold_start": COLD_START, "priors": PRIORS, "model": tuple(REGISTRY),
           "confidence": CONFIDENCES, "split": SPLITS, "kernel": ("auto", "numba", "numpy"),
           "recommend_by": ("rating",) + tuple(n for n, c in REGISTRY.items() if c.ranks)}


def _field(section: str, name: str):
    cls = JobConfig if section == "job" else GROUPS[group_of(name) or "model"]
    return cls.__dataclass_fields__[name]


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="train_pmf.py",
        description="Train probabilistic matrix factorisation (PMF) by ALS on Spark and write "
                    "user/item factors and metrics to Parquet. With no --ratings it trains on "
                    "built-in synthetic MovieLens-shaped data.",
        epilog="Precedence: defaults < --config file < flags. Spark options (--master, --conf, "
               "memory) go to spark-submit.sh before the job file.")
    p.add_argument("--config", metavar="FILE",
                   help="job configuration (TOML, tables [job] and [model]), e.g. conf/seed.toml")
    p.add_argument("--print-config", action="store_true",
                   help="print the effective configuration as TOML and exit")
    p.add_argument("--verbose", action="store_true", help="keep Spark's own log messages")
    for title, (section, names) in OPTION_GROUPS.items():
        g = p.add_argument_group(title)
        for name in names:
            f = _field(section, name)
            flag = "--" + name.replace("_", "-")
            doc = f.metadata.get("doc", "")
            default = f.default
            typ = type_of(str(f.type))
            dest = f"{section}.{name}"
            if typ is bool:
                g.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS,
                               help=f"{doc} (default: {'on' if default else 'off'})")
            else:
                g.add_argument(flag, dest=dest, type=typ, choices=CHOICES.get(name),
                               default=argparse.SUPPRESS,
                               metavar=None if name in CHOICES else metavar(name, typ),
                               help=doc + said_default(name, doc, default))
            if name == "lambda_v":
                g.add_argument("--lambda", dest="lambda_both", type=float,
                               default=argparse.SUPPRESS, metavar="LAMBDA",
                               help="set --lambda-u and --lambda-v together")
    return p


def flags_to_sections(ns: argparse.Namespace) -> dict:
    out: dict[str, dict] = {"job": {}, "params": {}}
    values = vars(ns)
    if "lambda_both" in values:
        out["params"]["lambda_u"] = values["lambda_both"]
        out["params"]["lambda_v"] = values["lambda_both"]
    for key, value in values.items():
        if "." in key:
            section, name = key.split(".", 1)
            out[section][name] = value
    return out


def settings(args: argparse.Namespace):
    """(job, params) from the --config file and the flags, validated."""
    file_values = load_config_file(args.config) if args.config else None
    return resolve(file_values, flags_to_sections(args))


def _checks(args: argparse.Namespace) -> int | None:
    job, params = settings(args)
    if args.print_config:
        print(to_toml(job, params), end="")
        return 0
    check_inputs(job)
    return None


def check_args(argv: list[str] | None) -> int | None:
    """Everything about the arguments that needs no Spark: None to go on, else the
    exit code (0 after --help or --print-config). spark-submit.sh runs this before
    starting the JVM."""
    return check_job(build_parser, _checks, argv)


def _body(run: JobRun) -> int:
    job, params = settings(run.args)
    if run.args.print_config:
        print(to_toml(job, params), end="")
        return 0
    from pmf_spark.train.job import run_training

    run.output = job.output
    with run.spark() as spark:
        run_training(spark, job, params)
    return 0


def main(argv: list[str] | None = None, spark=None) -> int:
    """Run the job; returns the exit code. ``spark``: an existing session to use
    (and leave running), for embedding; by default one is created and stopped."""
    return run_job("pmf-spark train", build_parser, _body, argv, spark)


if __name__ == "__main__":
    sys.exit(main())
