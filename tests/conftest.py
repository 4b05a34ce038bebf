"""Shared fixtures: one local[2] SparkSession for the whole run, data paths."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "jobs"))

# Python workers must run this interpreter; the hostname here resolves to loopback.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TZ", "UTC")


def ml100k_dir() -> Path:
    """MovieLens 100K: $PMF_ML100K, else ../shared/data/ml-100k beside the checkout."""
    return Path(os.environ.get("PMF_ML100K", ROOT.parent / "shared" / "data" / "ml-100k"))


@pytest.fixture(scope="session")
def ml100k() -> Path:
    path = ml100k_dir()
    if not (path / "u.data").is_file():
        message = f"MovieLens 100K not found at {path}: set PMF_ML100K to its directory"
        if os.environ.get("PMF_REQUIRE_ML100K"):   # CI has the data: a skip there is a failure
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from pyspark.sql import SparkSession

    local_dir = tmp_path_factory.mktemp("spark-local")
    session = (SparkSession.builder.master("local[2]").appName("pmf-spark tests")
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.shuffle.partitions", "4")
               .config("spark.sql.session.timeZone", "UTC")
               .config("spark.local.dir", str(local_dir))
               .config("spark.sql.warehouse.dir", str(local_dir / "warehouse"))
               .config("spark.driver.memory", "2g")
               .config("spark.executorEnv.OPENBLAS_NUM_THREADS", "1")
               .config("spark.executorEnv.OMP_NUM_THREADS", "1")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


_REPORTED: list[str] = []


@pytest.fixture(scope="session")
def report():
    """Record a measured number; printed in the terminal summary of the run."""
    return _REPORTED.append


def pytest_terminal_summary(terminalreporter):
    if _REPORTED:
        terminalreporter.section("pmf-spark measurements")
        for line in _REPORTED:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def ml100k_model(spark, ml100k, tmp_path_factory) -> str:
    """The training job with default settings on MovieLens 100K (seeded 85/15), once."""
    import train_pmf

    out = tmp_path_factory.mktemp("ml100k") / "default"
    code = train_pmf.main(["--ratings", str(ml100k / "u.data"), "--output", str(out)],
                          spark=spark)
    assert code == 0
    return str(out)
