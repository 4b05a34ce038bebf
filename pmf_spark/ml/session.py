"""Defaults that make the estimator work from a plain script or a notebook.

- **The workers' Python.** PySpark starts Python workers with ``$PYSPARK_PYTHON``, else
  ``spark.pyspark.python``, else whatever ``python3`` is on the PATH -- in a notebook or a
  script run as ``.venv/bin/python script.py`` that is often the system Python, without
  pandas or pyarrow, and training fails minutes later. When neither is set and the master
  is local (the workers run on this machine), the workers get the driver's interpreter.
- **Shuffle partitions.** The preparation steps of ``fit`` (deduplication, vocabularies,
  indexing) shuffle; with Spark's default of 200 partitions a small data set spends most
  of its time scheduling empty tasks (MovieLens 100K: 65 s instead of 23 s on 2 cores).
  While any ``fit`` runs, the session uses ``2 x`` the cluster's default parallelism; the
  user's setting is restored when the last concurrent ``fit`` returns.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator

from pyspark.sql import SparkSession

log = logging.getLogger("pmf_spark")

_SHUFFLE = "spark.sql.shuffle.partitions"
_lock = threading.Lock()

class _Shared:
    count = 0
    saved: str | None = None


_active = _Shared()


def use_driver_python(spark: SparkSession) -> bool:
    """Point local Python workers at the driver's interpreter unless told otherwise;
    True when it did. Takes effect for UDFs created afterwards."""
    sc = spark.sparkContext
    if os.environ.get("PYSPARK_PYTHON") or sc.getConf().get("spark.pyspark.python"):
        return False
    if not str(sc.master).startswith("local") or sc.pythonExec == sys.executable:
        return False
    log.info("Python workers: using this interpreter (%s) instead of %r; set PYSPARK_PYTHON "
             "to choose another", sys.executable, sc.pythonExec)
    sc.pythonExec = sys.executable
    return True


def fit_partitions(spark: SparkSession) -> int:
    """Shuffle partitions for the preparation steps of a fit."""
    return max(2, 2 * spark.sparkContext.defaultParallelism)


@contextlib.contextmanager
def own_shuffle_partitions(spark: SparkSession) -> Iterator[int]:
    """Run the block with :func:`fit_partitions` shuffle partitions (reference-counted
    across threads, so concurrent fits of a CrossValidator share one setting)."""
    n = fit_partitions(spark)
    with _lock:
        if _active.count == 0:
            _active.saved = spark.conf.get(_SHUFFLE, None)
            spark.conf.set(_SHUFFLE, str(n))
        _active.count += 1
    try:
        yield n
    finally:
        with _lock:
            _active.count -= 1
            if _active.count == 0:
                saved = _active.saved
                if saved is None:
                    spark.conf.unset(_SHUFFLE)
                else:
                    spark.conf.set(_SHUFFLE, saved)
