"""Checkpoint and resume, a killed driver, memory refusal, untrusted ids."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pmf_spark.config.params import PMFParams
from pmf_spark.errors import ConfigError
from pmf_spark.train import preflight

import train_pmf
from helpers import random_ratings

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.spark

COMMON = ["--epochs", "8", "--blocks", "2", "--top-k", "0"]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> list[str]:
    """--ratings of a small CSV (300 users x 120 items, ~7,000 ratings) for the module:
    checkpoints, kills and resumes behave the same on it as on the built-in data, in a
    fraction of the time."""
    path = tmp_path_factory.mktemp("faults-data") / "ratings.csv"
    random_ratings(17, 300, 120, 0.2).to_csv(path, index=False)
    return ["--ratings", str(path)]


def wait_for_group_exit(pgid: int, timeout: float = 60.0) -> None:
    """Until no live process (zombies aside) of process group ``pgid`` is left: a
    SIGKILLed JVM and Python driver take a moment to exit after the shell is reaped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = False
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
                live = True
                break
        if not live:
            return
        time.sleep(0.1)
    raise AssertionError(f"process group {pgid} still running {timeout:.0f} s after SIGKILL")


def files_of(path: Path) -> dict:
    return {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def uninterrupted(spark, small, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "out"
    assert train_pmf.main([*small, *COMMON, "--output", str(out)], spark=spark) == 0
    return json.loads((out / "model.json").read_text())


@pytest.mark.submit
def test_driver_killed_mid_training_resumes_to_the_same_result(spark, small, uninterrupted,
                                                               tmp_path, report, capsys):
    out, ck = tmp_path / "out", tmp_path / "ck"
    # a previous good output where the killed run writes
    assert train_pmf.main([*small, "--epochs", "1", "--top-k", "0", "--output", str(out)],
                          spark=spark) == 0
    before = files_of(out)
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    proc = subprocess.Popen([str(ROOT / "spark-submit.sh"), "jobs/train_pmf.py", *small, *COMMON,
                             "--output", str(out), "--checkpoint-dir", str(ck),
                             "--checkpoint-every", "2"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    seen, lines = 0, []
    try:
        for line in proc.stdout:
            lines.append(line)
            if " epoch " in line and "/8" in line:
                seen = int(line.split(" epoch ")[1].split("/")[0])
            if "checkpoint written: epoch 4" in line:
                os.killpg(proc.pid, signal.SIGKILL)      # driver JVM and Python together
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, "".join(lines)[-3000:]
    wait_for_group_exit(proc.pid)
    assert files_of(out) == before                       # the killed run changed nothing
    assert (ck / "LATEST").read_text().strip() == "epoch-000004"
    # resume: only the epochs after the checkpoint are run again
    capsys.readouterr()
    code = train_pmf.main([*small, *COMMON, "--output", str(out), "--checkpoint-dir", str(ck),
                           "--checkpoint-every", "2", "--resume"], spark=spark)
    assert code == 0
    log_text = capsys.readouterr().err
    assert "resuming from the checkpoint of epoch 4" in log_text
    rerun = [int(x.split(" epoch ")[1].split("/")[0]) for x in log_text.splitlines()
             if " epoch " in x and "/8" in x]
    assert rerun == [5, 6, 7, 8]
    meta = json.loads((out / "model.json").read_text())
    assert meta["final_metrics"]["test_rmse"] == pytest.approx(
        uninterrupted["final_metrics"]["test_rmse"], abs=1e-6)
    assert [e["epoch"] for e in json.loads((out / "metrics.json").read_text())["epochs"]] == \
        list(range(1, 9))
    lost = seen - 4
    assert 0 <= lost <= 2
    report(f"checkpoint every 2 epochs: driver SIGKILLed after the epoch-4 checkpoint (last "
           f"epoch logged: {seen}); resume re-ran epochs 5-8, lost {lost} epoch(s) of work, "
           f"final test RMSE {meta['final_metrics']['test_rmse']:.6f} = uninterrupted "
           f"{uninterrupted['final_metrics']['test_rmse']:.6f}")


def test_resume_refuses_other_parameters_or_input(spark, small, tmp_path, capsys):
    ck = tmp_path / "ck"
    args = [*small, "--epochs", "2", "--top-k", "0", "--checkpoint-dir", str(ck),
            "--checkpoint-every", "1"]
    assert train_pmf.main([*args, "--output", str(tmp_path / "a")], spark=spark) == 0
    capsys.readouterr()
    code = train_pmf.main([*args, "--output", str(tmp_path / "b"), "--resume", "--lambda",
                           "3"], spark=spark)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "was written for other parameters or input" in err[-1]
    assert "model.lambda_u: 12.0 in the checkpoint, 3.0 now" in err[-1]
    code = train_pmf.main([*args, "--output", str(tmp_path / "c"), "--resume",
                           "--test-fraction", "0.2"], spark=spark)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "input.test_fraction: 0.15 in the checkpoint, 0.2 now" in err[-1]
    # more epochs with the same settings is allowed: it continues
    assert train_pmf.main([*small, "--epochs", "3", "--top-k", "0", "--checkpoint-dir",
                           str(ck), "--resume", "--output", str(tmp_path / "d")],
                          spark=spark) == 0
    meta = json.loads((tmp_path / "d" / "model.json").read_text())
    assert meta["epochs_run"] == 3


def test_checkpoint_dir_inside_output_is_refused(spark, tmp_path, capsys):
    code = train_pmf.main(["--output", str(tmp_path / "o"), "--checkpoint-dir",
                           str(tmp_path / "o" / "ck")], spark=spark)
    assert code == 2 and "must not be inside --output" in capsys.readouterr().err


def test_driver_memory_check(spark):
    from types import SimpleNamespace

    data = SimpleNamespace(n_users=2_000_000, n_items=500_000)
    p = PMFParams.of(rank=100)
    jvm, py = preflight.driver_memory_needed(data.n_users, data.n_items, p)
    assert py >= 6 * 2_500_000 * 101 * 8 and jvm >= 3 * 2_000_000 * 101 * 8
    with pytest.raises(ConfigError, match=r"driver memory: 2000000 users \+ 500000 items at "
                                          r"rank 100 need about .* GiB of driver JVM heap, but "
                                          r"it has 1.0 GiB; raise --driver-memory"):
        preflight.check_driver_memory(spark, data, p, jvm_max=1 << 30, available=64 << 30)
    with pytest.raises(ConfigError, match="in the Python driver"):
        preflight.check_driver_memory(spark, data, p, jvm_max=64 << 30, available=1 << 30)
    preflight.check_driver_memory(spark, data, p, jvm_max=64 << 30, available=64 << 30)
    bpmf = PMFParams.of(rank=10, model="bpmf", samples=80)
    assert preflight.driver_memory_needed(1000, 1000, bpmf)[1] > \
        preflight.driver_memory_needed(1000, 1000, PMFParams.of(rank=10))[1]


def test_ids_and_titles_are_data_not_paths(spark, tmp_path):
    """Ids that look like paths or code come out verbatim and touch nothing."""
    evil = ["../../etc/passwd", "'; DROP TABLE users; --", "${HOME}", "$(rm -rf /)",
            "a/b\\c", "__import__('os')"]
    rows = [(evil[u % len(evil)] + f"#{u}", f"item {i}/..", 1.0 + (u * i) % 5)
            for u in range(24) for i in range(10)]
    path = tmp_path / "ratings.csv"
    pd.DataFrame(rows, columns=["user", "item", "rating"]).to_csv(path, index=False)
    out = tmp_path / "out"
    assert train_pmf.main(["--ratings", str(path), "--output", str(out), "--epochs", "2",
                           "--top-k", "3"], spark=spark) == 0
    users = pd.read_parquet(out / "user_factors").user_id
    assert sorted(users) == sorted({r[0] for r in rows})
    recs = pd.read_parquet(out / "recommendations")
    assert set(recs.user_id) <= set(users) and recs.item_id.str.endswith("/..").all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "ratings.csv"]


def test_a_numerical_failure_has_its_own_exit_code(spark, small, tmp_path, capsys):
    """Factors that overflow end the job with exit 3 and one line naming the cause,
    not the exit 2 of a user's typo."""
    code = train_pmf.main([*small, "--epochs", "2", "--init-std", "1e200", "--top-k", "0",
                           "--output", str(tmp_path / "o")], spark=spark)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3, err
    assert err[-1].startswith("error: training diverged at epoch 1")
    assert "lambda" in err[-1] and not (tmp_path / "o").exists()
