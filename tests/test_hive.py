"""The training job with catalog tables on a real Hive metastore (embedded Derby and a
warehouse in a temporary directory; pyspark ships the Hive and Derby jars), through
spark-submit.sh: a run that reads a metastore table and publishes its outputs as
managed tables (the job's main, after creating the input table in the same process),
then, in a new process, a run that fails while staging its tables and leaves them as
they were."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import random_ratings

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.spark, pytest.mark.submit]


def submit(tmp: Path, *args: str) -> tuple[int, str]:
    hive = ["--master", "local[2]", "--conf", "spark.sql.catalogImplementation=hive",
            "--conf", f"spark.sql.warehouse.dir={tmp / 'warehouse'}",
            "--conf", "spark.hadoop.javax.jdo.option.ConnectionURL="
                      f"jdbc:derby:;databaseName={tmp / 'metastore_db'};create=true",
            "--conf", "spark.ui.enabled=false"]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    proc = subprocess.run([str(ROOT / "spark-submit.sh"), *hive, *args], cwd=tmp, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    return proc.returncode, proc.stdout


def files_of(path: Path) -> dict:
    return {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def reported(text: str) -> dict:
    lines = [x for x in text.splitlines() if x.startswith("HIVE ")]
    assert lines, text[-3000:]
    return json.loads(lines[-1][5:])


def test_job_reads_and_publishes_metastore_tables_and_a_failed_run_keeps_them(spark,
                                                                               tmp_path):
    src = tmp_path / "events.parquet"
    pdf = random_ratings(4, 40, 25, 0.3).rename(columns={"user": "customer", "item": "sku"})
    spark.createDataFrame(pdf).write.parquet(str(src))
    job = ["--ratings-table", "shop.events", "--user-col", "customer", "--item-col", "sku",
           "--rank", "3", "--epochs", "1", "--recommend-by", "rating", "--top-k", "3",
           "--no-report",
           "--output-partitions", "2", "--output-table-prefix", "shop.pmf_",
           "--output", str(tmp_path / "out")]
    code, text = submit(tmp_path, str(ROOT / "tests" / "hive_driver.py"), "train", str(src),
                        *job)
    assert code == 0, text[-3000:]
    manifest = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    assert f"published {len(manifest['tables'])} table(s) as shop.pmf_*" in text
    files_before = files_of(tmp_path / "out")

    code, text = submit(tmp_path, str(ROOT / "tests" / "hive_driver.py"), "fail-midway", *job)
    assert code == 0, text[-3000:]
    r = reported(text)
    published = {k: v for k, v in r["before"].items() if k.startswith("pmf_")}
    assert set(published) == {f"pmf_{t}" for t in manifest["tables"]}
    for table, rows in manifest["tables"].items():
        t = published[f"pmf_{table}"]
        assert t["rows"] == rows and t["type"] == "MANAGED" and t["run"], table
        on_disk = spark.read.parquet(str(tmp_path / "out" / table))
        assert t["schema"] == on_disk.schema.simpleString(), table
    # the failing run staged two tables, failed on the third and changed nothing
    assert r["code"] == 4 and len(r["staged"]) == 3
    assert r["after"] == r["before"]
    assert files_of(tmp_path / "out") == files_before      # and the directory output too
