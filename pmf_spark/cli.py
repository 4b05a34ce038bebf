"""Small pieces the spark-submit entry points in ``jobs/`` share: one-line usage
errors and the log format. (The jobs parse their own arguments.)"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from contextlib import contextmanager


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


@contextmanager
def job_session(spark, app: str, verbose: bool = False):
    """The session a job runs in: ``spark`` if one is given (an embedding caller's,
    left running), else a new one named ``app``, quiet unless ``verbose``, stopped
    when the job ends however it ends."""
    if spark is not None:
        yield spark
        return
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.appName(app).getOrCreate()
    if not verbose:
        spark.sparkContext.setLogLevel("ERROR")
    try:
        yield spark
    finally:
        spark.stop()
