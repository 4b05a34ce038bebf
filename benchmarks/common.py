"""Shared pieces of the benchmark scripts: the Spark session, machine facts, output."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def ml100k_dir() -> Path:
    return Path(os.environ.get("PMF_ML100K", ROOT.parent / "shared" / "data" / "ml-100k"))


def session(app: str, cores: int = 2, driver_memory: str = "6g", conf: dict | None = None):
    """A local[cores] session configured like conf/local.conf (UI off)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master(f"local[{cores}]").appName(app)
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.driver.memory", driver_memory)
             .config("spark.sql.shuffle.partitions", "16")
             .config("spark.executorEnv.OPENBLAS_NUM_THREADS", "1")
             .config("spark.executorEnv.OMP_NUM_THREADS", "1"))
    for key, value in (conf or {}).items():
        spark = spark.config(key, value)
    spark = spark.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def machine(spark=None) -> dict:
    """Hardware, versions and thread settings, for the record."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyspark

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":")[1].strip()
    except OSError:
        pass
    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
        java = java.splitlines()[0]
    except OSError:
        java = "unknown"
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu, "cores": os.cpu_count(), "memory": mem,
        "python": platform.python_version(), "java": java,
        "pyspark": pyspark.__version__, "numpy": np.__version__, "pandas": pd.__version__,
        "pyarrow": pa.__version__,
        "numpy_blas": _numpy_blas(),
        "threads": {v: os.environ.get(v) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                   "MKL_NUM_THREADS")},
    }
    if spark is not None:
        info["spark_master"] = spark.sparkContext.master
        info["jvm_blas"] = jvm_blas(spark)
    return info


def _numpy_blas() -> str:
    try:
        from threadpoolctl import threadpool_info

        libs = [f"{i.get('internal_api')} {i.get('version')}" for i in threadpool_info()
                if i.get("user_api") == "blas"]
        return ", ".join(libs) or "unknown"
    except Exception:  # pragma: no cover - informational only
        return "unknown"


def jvm_blas(spark) -> dict:
    """Which BLAS/LAPACK implementations netlib gives Spark MLlib in this JVM."""
    jvm = spark.sparkContext._jvm
    out = {}
    for name, cls in (("blas", "dev.ludovic.netlib.blas.BLAS"),
                      ("lapack", "dev.ludovic.netlib.lapack.LAPACK")):
        try:
            out[name] = str(jvm.__getattr__(cls.rsplit(".", 1)[0]).__getattr__(
                cls.rsplit(".", 1)[1]).getInstance().getClass().getName())
        except Exception as exc:  # pragma: no cover
            out[name] = f"unknown ({type(exc).__name__})"
    return out


def write_results(name: str, payload: dict, markdown: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
    return path


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
