"""A new user's plain script, as in a notebook: no PYSPARK_PYTHON, Spark's default
settings (200 shuffle partitions), a local master. The estimator must make the Python
workers use the script's interpreter, log one line per epoch and call the callback,
keep its own shuffles off spark.sql.shuffle.partitions, and never ship a task of
"very large size" (factor matrices of ~2.3 MB here go out as broadcasts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.submit

SCRIPT = r'''
import json, logging, sys
from pyspark.sql import SparkSession, functions as F
from pmf_spark.ml import PMF

lines = []
class Keep(logging.Handler):
    def emit(self, record):
        lines.append(record.getMessage())
log = logging.getLogger("pmf_spark")
log.addHandler(Keep())
log.setLevel(logging.INFO)

spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
sc = spark.sparkContext
# 9000 users x 4 ratings of 300 items; rank 32: each side's factors are ~2.3 MB
ids = spark.range(0, 36000, 1, 2)
user, k = ids.id % 9000, (ids.id / 9000).cast("long")
df = ids.select(user.alias("user"), ((user * 13 + k * 71) % 300).alias("item"),
                ((user + k) % 5 + 1).cast("double").alias("rating"))
held = spark.range(0, 1000, 1, 2).select(F.col("id").alias("user"),
                                         ((F.col("id") * 13 + 284) % 300).alias("item"),
                                         ((F.col("id") + 4) % 5 + 1).cast("double").alias("rating"))
seen = []
sc.setJobGroup("pmf-fit", "the estimator's fit")
model = PMF(rank=32, maxIter=2, seed=1).fit(df, callback=seen.append, test=held)
sc.setJobGroup("after", "after the fit")
tracker = sc.statusTracker()
stages = [s for j in tracker.getJobIdsForGroup("pmf-fit") for s in tracker.getJobInfo(j).stageIds]
tasks = [tracker.getStageInfo(s).numTasks for s in stages if tracker.getStageInfo(s)]
n_scored = model.transform(df).where("prediction is not null").count()
n_recs = model.recommendForAllUsers(3).count()
worker = spark.range(1).select(F.udf(lambda _: sys.executable)("id")).first()[0]
print("RESULT " + json.dumps({
    "driver": sys.executable, "worker": worker, "pythonExec": sc.pythonExec,
    "epoch_lines": [x for x in lines if x.startswith("PMF epoch")],
    "callback_epochs": [m.epoch for m in seen], "max_tasks": max(tasks),
    "test_rmse": [m.test_rmse for m in seen],
    "n_stages": len(stages), "parallelism": sc.defaultParallelism,
    "shuffle_after": spark.conf.get("spark.sql.shuffle.partitions"),
    "scored": n_scored, "recs": n_recs}), flush=True)
'''


def test_a_plain_script_without_pyspark_python_just_works(tmp_path):
    script = tmp_path / "first_try.py"
    script.write_text(SCRIPT)
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and Path(p).resolve() != Path(venv_bin).resolve())
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True,
                          timeout=600)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    r = json.loads(lines[0][len("RESULT "):])
    assert r["worker"] == r["driver"] == r["pythonExec"] == sys.executable
    assert len(r["epoch_lines"]) == 2 and r["epoch_lines"][1].startswith("PMF epoch 2/2")
    assert r["callback_epochs"] == [1, 2]
    assert all(0 < x < 5 for x in r["test_rmse"]) and "test rmse" in r["epoch_lines"][0]
    # the fit's shuffles: 2 x the default parallelism (twice that where the training and
    # test ratings are unioned), not Spark's default 200
    assert r["n_stages"] > 5 and r["max_tasks"] <= 4 * r["parallelism"]
    assert r["shuffle_after"] == "200"                 # the user's setting is back
    assert r["scored"] == 36000 and r["recs"] == 9000
    assert "very large size" not in proc.stderr, [
        x for x in proc.stderr.splitlines() if "very large size" in x]
