"""What a newcomer meets in the first hour besides the README: inputs recognised by name
whether compressed or not, a directory of CSV files read as CSV, standard JSON."""

from __future__ import annotations

import bz2
import gzip
import json
import math

import numpy as np
import pytest

from pmf_spark.inputs.read import guess_format, load_ratings
from pmf_spark.storage.hadoop import dumps


@pytest.mark.parametrize("name, fmt", [
    ("u.data", "movielens-100k"), ("u.data.gz", "movielens-100k"),
    ("ratings.dat", "movielens-dat"), ("ratings.dat.gz", "movielens-dat"),
    ("ratings.dat.bz2", "movielens-dat"), ("ratings.csv.gz", "movielens-csv"),
    ("events.csv.bz2", "csv"), ("events.tsv.gz", "csv"), ("ratings.parquet", "parquet"),
    ("u1.base.bz2", "movielens-100k")])
def test_compressed_names_read_as_their_plain_form(name, fmt):
    assert guess_format(f"/data/{name}") == fmt


def test_a_directory_of_csv_files_is_csv():
    assert guess_format("/data/exports", ["part-1.csv", "part-2.csv.gz", "_SUCCESS",
                                          ".part-1.csv.crc"]) == "csv"
    assert guess_format("/data/exports", ["part-0.parquet", "_SUCCESS"]) == "parquet"
    assert guess_format("/data/exports") == "parquet"


@pytest.mark.spark
def test_compressed_files_and_csv_directories_are_read(spark, tmp_path):
    lines = [f"{u}::{i}::{(u * i) % 5 + 1}::97830{u}" for u in range(1, 9) for i in range(1, 6)]
    text = "\n".join(lines) + "\n"
    (tmp_path / "ratings.dat.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "ratings.dat.bz2").write_bytes(bz2.compress(text.encode()))
    for name in ("ratings.dat.gz", "ratings.dat.bz2"):
        clean = load_ratings(spark, str(tmp_path / name))
        assert clean.n == len(lines) and clean.id_type == "long"
        got = sorted(tuple(r) for r in clean.df.select("user", "item", "rating").collect())
        assert got == sorted((u, i, float((u * i) % 5 + 1)) for u in range(1, 9)
                             for i in range(1, 6))
    folder = tmp_path / "exports"
    folder.mkdir()
    for part, users in (("a", range(1, 5)), ("b", range(5, 9))):
        rows = [f"{u},{i},{(u + i) % 5 + 1}" for u in users for i in range(1, 4)]
        (folder / f"part-{part}.csv").write_text("user,item,rating\n" + "\n".join(rows) + "\n")
    clean = load_ratings(spark, str(folder))
    assert clean.n == 24


def test_json_is_standard_with_nulls_for_non_finite_numbers():
    text = dumps({"rmse": float("nan"), "inf": math.inf, "arr": np.array([1.0, np.nan]),
                  "n": np.int64(3)})
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"rmse": None, "inf": None, "arr": [1.0, None], "n": 3}


@pytest.mark.parametrize("scale", [(1.0, 5.0), (0.5, 5.0), (2.0, 10.0), (1.0, 10.0), (0, 1)])
def test_the_spark_free_relevance_threshold_is_the_job_s(scale):
    from pmf_spark.evaluate.metrics import relevance_threshold as job
    from pmf_spark.serve.local import relevance_threshold as local

    assert local(None, *scale) == job(None, *scale) and local(3.5, *scale) == 3.5


def test_compiling_the_kernels_is_left_out_of_the_eta(caplog):
    # epoch 1 took 45 s of which 40 s compiling numba's kernels (a cold cache): the ETA
    # reads the remaining 9 epochs at 5 s each, not 45 s each
    import logging

    from pmf_spark.evaluate.metrics import EpochMetrics
    from pmf_spark.train.job import epoch_logger

    compiled = [40.0]
    log_epoch = epoch_logger(10, one_off=lambda: compiled[0])

    def epoch(n, seconds):
        return EpochMetrics(n, 0.9, 0.7, 0.95, 0.75, 1.0, seconds)

    with caplog.at_level(logging.INFO, logger="pmf_spark"):
        log_epoch(epoch(1, 45.0))
        log_epoch(epoch(2, 5.0))      # no more compiling: 5 s is an epoch's time
    lines = [r.getMessage() for r in caplog.records if "epoch" in r.getMessage()]
    assert lines[0].endswith("eta 45s") and lines[1].endswith("eta 40s"), lines
    # without the one-off costs the first ETA would read 9 x 45 s
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pmf_spark"):
        epoch_logger(10)(epoch(1, 45.0))
    assert caplog.records[-1].getMessage().endswith("eta 6m45s")


def test_input_mistakes_are_caught_before_the_jvm_starts(tmp_path):
    # a missing file, a header without the needed columns, a gzipped one, a missing test
    # split: one line and exit 2 from spark-submit.sh's plain-Python check, before the
    # wrapper says it is starting Spark (which took 43-46 s to report them)
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "cols.csv").write_text("a,b,c\n1,2,3\n")
    (tmp_path / "cols.csv.gz").write_bytes(gzip.compress(b"who,what,stars\n1,2,3\n"))
    (tmp_path / "ok.csv").write_text("user,item,rating\n1,2,3\n")
    cases = {
        ("--ratings", "nope.csv"): "error: nope.csv: no such file or directory",
        ("--ratings", "cols.csv"): "error: cols.csv: cannot find the user column (columns: "
                                   "a, b, c); name it with --user-col",
        ("--ratings", "cols.csv", "--user-col", "a", "--item-col", "b", "--rating-col", "z"):
            "error: cols.csv: no column 'z' for the rating (columns: a, b, c)",
        ("--ratings", "cols.csv.gz"): "error: cols.csv.gz: cannot find the user column "
                                      "(columns: who, what, stars)",
        ("--ratings", "ok.csv", "--test", "gone.csv"): "error: gone.csv: no such file",
        ("--ratings", "ok.csv", "--exclude-items", "gone.txt"): "error: gone.txt: no such",
        ("--ratings", "cut.csv.gz"): "error: ratings cut.csv.gz: cannot be read (a truncated "
                                     "or corrupt archive",
    }
    (tmp_path / "cut.csv.gz").write_bytes(gzip.compress(b"user,item,rating\n" * 50)[:20])
    for argv, expected in cases.items():
        proc = subprocess.run([str(root / "spark-submit.sh"), str(root / "jobs/train_pmf.py"),
                               *argv, "--output", "out"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2, (argv, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), (argv, proc.stderr)
    proc = subprocess.run([str(root / "spark-submit.sh"), str(root / "jobs/recommend.py"),
                           "--model", "no-model", "--user", "1"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == \
        "error: no-model: no such file or directory", proc.stderr
    # with another default filesystem named, a scheme-less path is not this machine's: the
    # check lets it through to Spark (stopped here once the wrapper starts the JVM)
    import os
    import signal

    for conf in ("spark.hadoop.fs.defaultFS=hdfs://namenode:8020", "spark.master=yarn"):
        proc = subprocess.Popen([str(root / "spark-submit.sh"), "--conf", conf,
                                 str(root / "jobs/train_pmf.py"), "--ratings", "nope.csv",
                                 "--output", "out"], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            first = proc.stdout.readline()
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        assert first.startswith("spark-submit.sh: starting Spark for"), (conf, first)


def test_scheme_less_paths_are_checked_only_when_they_are_this_machine_s(monkeypatch, tmp_path):
    # on a cluster master a scheme-less path is the default filesystem's (HDFS): the
    # check leaves it to the job; a file: path is this machine's everywhere
    from pmf_spark.cli import check_inputs
    from pmf_spark.config.params import JobConfig
    from pmf_spark.errors import InputDataError

    missing = str(tmp_path / "ratings.csv")
    monkeypatch.delenv("HADOOP_CONF_DIR", raising=False)
    monkeypatch.delenv("YARN_CONF_DIR", raising=False)
    monkeypatch.setenv("PMF_SPARK_LOCAL_MASTER", "0")
    check_inputs(JobConfig(ratings=missing))
    with pytest.raises(InputDataError, match="no such file or directory"):
        check_inputs(JobConfig(ratings="file:" + missing))
    monkeypatch.setenv("PMF_SPARK_LOCAL_MASTER", "1")
    with pytest.raises(InputDataError, match="no such file or directory"):
        check_inputs(JobConfig(ratings=missing))
    monkeypatch.setenv("HADOOP_CONF_DIR", "/etc/hadoop/conf")
    check_inputs(JobConfig(ratings=missing))
    # a glob that matches is not a missing file
    monkeypatch.setenv("PMF_SPARK_LOCAL_MASTER", "1")
    monkeypatch.delenv("HADOOP_CONF_DIR")
    (tmp_path / "part-1.csv").write_text("user,item,rating\n1,2,3\n")
    check_inputs(JobConfig(ratings=str(tmp_path / "part-*.csv")))


def test_the_built_in_data_is_rated_by_taste_and_popularity():
    """Users rate what they expect to like (as in MovieLens, where the mean rating of the
    items people chose is high): the planted taste of the rated items is above the
    population's, and popular items are still rated most."""
    from dataclasses import replace

    from pmf_spark.inputs.synthetic import generate_users, get_shape, item_model

    shape = replace(get_shape("small"), n_users=300, n_ratings=30_000)
    by_taste = generate_users(shape, 0, 0, 300)
    by_popularity = generate_users(replace(shape, exposure_taste=0.0), 0, 0, 300)
    assert len(by_taste) == len(by_popularity)            # who rates how much is unchanged
    lift = by_taste.truth.mean() - by_popularity.truth.mean()
    assert lift > 0.25, lift
    log_pop = item_model(shape, 0)[0]
    counts = by_taste.item.value_counts().reindex(np.arange(1, shape.n_items + 1), fill_value=0)
    assert np.corrcoef(log_pop, np.log1p(counts.to_numpy()))[0, 1] > 0.5


def test_the_log_says_plainly_whether_the_lists_beat_popularity():
    from pmf_spark.train.results import verdict

    def ranking(p, n, pp, pn, users=50):
        return {"model": {"precision": p, "ndcg": n, "users": users},
                "popular": {"precision": pp, "ndcg": pn, "users": users}}

    won = verdict(ranking(0.21, 0.34, 0.15, 0.24), 10)
    assert won.startswith("the lists beat the most-popular list") and "1.42x" in won
    lost = verdict(ranking(0.116, 0.185, 0.136, 0.209), 10)
    assert "did NOT beat" in lost and "precision@10 0.1160 vs 0.1360" in lost
    assert "mixed" in verdict(ranking(0.2, 0.1, 0.1, 0.2), 10)
    assert "could not be compared" in verdict(ranking(0.0, 0.0, 0.0, 0.0, users=0), 10)
    assert "--recommend-by" not in verdict(ranking(0.1, 0.1, 0.2, 0.2), 10, rates=False)


@pytest.mark.parametrize("required", [False, True])
def test_without_movielens_its_tests_skip_with_one_line_and_ci_refuses_that(required, tmp_path):
    """On a fresh machine (no ../shared) the suite passes: a test that needs ML-100K is
    skipped with one line naming PMF_ML100K; CI, which has the data, sets
    PMF_REQUIRE_ML100K and a skip there fails."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PMF_ML100K": str(tmp_path / "nowhere")}
    env.pop("PMF_REQUIRE_ML100K", None)
    if required:
        env["PMF_REQUIRE_ML100K"] = "1"
    test = "tests/test_readme.py::test_readme_commands_run_as_written_in_a_fresh_clone"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           test], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    said = [ln for ln in proc.stdout.splitlines() if "PMF_ML100K" in ln]
    assert said and f"MovieLens 100K not found at {tmp_path / 'nowhere'}" in said[-1], \
        proc.stdout[-2000:]
    if required:
        assert proc.returncode == 1 and "1 error" in proc.stdout, proc.stdout[-2000:]
    else:
        assert proc.returncode == 0 and "1 skipped" in proc.stdout, proc.stdout[-2000:]


def test_a_cold_kernel_cache_is_seen_where_numba_looks(tmp_path):
    """'compiling the row kernels (first run on this machine only)' is said when numba's
    own cache for the kernels (the directory its locator picks) has no index for them."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "empty")}
    proc = subprocess.run([sys.executable, "-c", "from pmf_spark.kernels.backends import "
                           "kernels_cached; print(kernels_cached())"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr


def test_kernels_compiled_once_serve_every_copy_of_the_shipped_zip(tmp_path):
    """spark-submit copies --py-files into a new directory per application (the driver
    imports from that copy once its session is up, the executors always do): the kernel
    cache is keyed by the source, so a copy of the zip at another path, and the package
    installed from its directory, find what one process compiled."""
    import os
    import shutil
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    first = tmp_path / "app-1" / "pmf_spark.zip"
    first.parent.mkdir()
    with zipfile.ZipFile(first, "w") as z:
        for f in sorted((root / "pmf_spark").rglob("*.py")):
            z.write(f, f.relative_to(root).as_posix())
    second = tmp_path / "app-2" / "pmf_spark.zip"
    second.parent.mkdir()
    shutil.copy(first, second)
    probe = ("import pmf_spark, pmf_spark.kernels.compiled as c; "
             "from pmf_spark.kernels.backends import "
             "kernels_cached; print(pmf_spark.__file__, kernels_cached(), "
             "c.ridge_rows_fused._cache._cache_path); {warm}")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}

    def run(path, warm):
        proc = subprocess.run([sys.executable, "-c", probe.format(warm=warm)],
                              env={**env, "PYTHONPATH": str(path)}, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    where, cached, cache_dir = run(first, "c.warm_up()")
    assert where.startswith(str(first)) and cached == "False"
    assert cache_dir.startswith(str(tmp_path / "cache"))
    for path in (second, root):             # another application's copy; the source tree
        where, cached, other = run(path, "")
        assert where.startswith(str(path)) and cached == "True" and other == cache_dir
