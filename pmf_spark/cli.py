"""Small pieces the spark-submit entry points in ``jobs/`` share: one-line usage
errors and the log format. (The jobs parse their own arguments.)"""

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
