"""Small pieces the spark-submit entry points in ``jobs/`` share: one-line usage
errors, the log format, and one line per error kind with its exit code. (The jobs
parse their own arguments and build their own SparkSession.)"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def setup_logging(verbose: bool = False) -> None:
    """Progress lines on stderr as ``HH:MM:SS pmf-spark  message``; library
    warnings (version notices from pandas/pyarrow/pyspark) only with ``verbose``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s pmf-spark  %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("pmf_spark")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not verbose:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)


def report_error(exc: BaseException) -> int:
    """Print a known error as one line on stderr; its exit code (see
    :mod:`pmf_spark.errors`)."""
    print(f"error: {exc}", file=sys.stderr)
    return int(getattr(exc, "exit_code", 1))
