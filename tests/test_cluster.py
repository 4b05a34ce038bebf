"""A real Spark standalone cluster: master + two workers on 127.0.0.1, started from the
installed pyspark, with the training job submitted through spark-submit.sh.

The executors run a Python that has pyspark and its dependencies but not pmf_spark
(a venv whose site-packages points at this one's without processing its .pth
files), so the job works only because spark-submit.sh ships the package.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.cluster, pytest.mark.submit]
EPOCHS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spark_home() -> str:
    import pyspark

    return os.path.dirname(pyspark.__file__)


def wait_for(predicate, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Cluster:
    def __init__(self, base: Path):
        self.base = base
        self.port = free_port()
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_HOME": spark_home(),
                    "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
                    "SPARK_WORKER_OPTS": "-Dspark.worker.cleanup.enabled=false"}
        self.work_dirs = []

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def _start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.base / f"{name}.log", "w")
        p = subprocess.Popen([os.path.join(spark_home(), "bin", "spark-class"), *args],
                             stdout=log, stderr=subprocess.STDOUT, env=self.env,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def start(self) -> None:
        self._start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                    "--port", str(self.port), "--webui-port", str(free_port()))
        for w in (1, 2):
            work = self.base / f"worker{w}"
            work.mkdir()
            self.work_dirs.append(work)
            self._start(f"worker{w}", "org.apache.spark.deploy.worker.Worker", self.url,
                        "--host", "127.0.0.1", "--port", "0", "--webui-port", "0",
                        "--cores", "1", "--memory", "1536m", "--work-dir", str(work))
        master_log = self.base / "master.log"
        wait_for(lambda: master_log.read_text().count("Registering worker") >= 2, 90,
                 "two workers to register")

    def executor_pids(self) -> list[int]:
        """Executor JVMs of this cluster (their working directory is in a worker's)."""
        pids = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                cmd = (d / "cmdline").read_bytes()
                cwd = os.readlink(d / "cwd")
            except OSError:
                continue
            if b"CoarseGrainedExecutorBackend" in cmd and any(
                    cwd.startswith(str(w)) for w in self.work_dirs):
                pids.append(int(d.name))
        return pids

    def stop(self) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)     # the daemon and the executors it forked
            except ProcessLookupError:
                pass
        for p in self.procs:
            p.wait(timeout=30)
        for pid in self.executor_pids():
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("standalone"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def executor_python(tmp_path_factory) -> str:
    """A Python with this venv's libraries but without pmf_spark."""
    venv = tmp_path_factory.mktemp("xvenv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    import site

    site_dir = next(Path(p) for p in site.getsitepackages() if p.endswith("site-packages"))
    own = next((venv / "lib").glob("python*/site-packages"))
    (own / "base.pth").write_text(str(site_dir) + "\n")   # a path line: its .pth files are
    py = str(venv / "bin" / "python")                     # not processed
    probe = subprocess.run([py, "-c", "import numpy, pandas, pyarrow, pyspark; "
                            "import importlib.util as u; print(u.find_spec('pmf_spark'))"],
                           cwd="/", capture_output=True, text=True)
    assert probe.returncode == 0 and probe.stdout.strip() == "None", probe
    return py


def submit(cluster: Cluster, executor_python: str, out: Path, *job_args: str,
           env_extra: dict | None = None, background: bool = False, conf: dict | None = None):
    env = {**os.environ, "PYSPARK_PYTHON": executor_python,
           "PYSPARK_DRIVER_PYTHON": sys.executable, **(env_extra or {})}
    cmd = [str(ROOT / "spark-submit.sh"), "--master", cluster.url, "--executor-memory", "1g",
           "--conf", "spark.cores.max=2",
           *[x for k, v in (conf or {}).items() for x in ("--conf", f"{k}={v}")],
           str(ROOT / "jobs" / "train_pmf.py"),
           "--output", str(out), "--blocks", "2", *job_args]
    if background:
        return subprocess.Popen(cmd, cwd="/", env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return subprocess.run(cmd, cwd="/", env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def local_reference(spark, tmp_path_factory):
    """The same job on the test session (local[2]), for the expected numbers."""
    import train_pmf

    out = tmp_path_factory.mktemp("ref") / "out"
    assert train_pmf.main(["--output", str(out), "--blocks", "2", "--epochs", str(EPOCHS)],
                          spark=spark) == 0
    return json.loads((out / "model.json").read_text())


def test_job_fails_when_the_package_is_not_shipped(cluster, executor_python, tmp_path):
    proc = submit(cluster, executor_python, tmp_path / "out", "--epochs", "1",
                  env_extra={"PMF_SPARK_SHIP": "0"}, conf={"spark.task.maxFailures": "1"})
    assert proc.returncode != 0
    assert "No module named 'pmf_spark'" in proc.stdout + proc.stderr
    assert not (tmp_path / "out").exists()


def test_training_on_a_standalone_cluster_survives_a_killed_executor(
        cluster, executor_python, local_reference, tmp_path, report):
    """The job on the cluster gives the local run's numbers, even with one of its two
    executors SIGKILLed mid-training (the application gets a replacement and Spark
    recomputes the lost blocks)."""
    t0 = time.time()
    out = tmp_path / "out"
    proc = submit(cluster, executor_python, out, "--epochs", str(EPOCHS), background=True)
    lines, killed = [], None
    try:
        for line in proc.stdout:
            lines.append(line)
            if killed is None and f" epoch   2/{EPOCHS}" in line:
                pids = cluster.executor_pids()
                assert pids, "no executor found"
                killed = pids[0]
                os.kill(killed, signal.SIGKILL)
        code = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    seconds = time.time() - t0
    text = "".join(lines)
    assert killed is not None, text[-3000:]
    assert code == 0, text[-4000:]
    meta = json.loads((out / "model.json").read_text())
    assert meta["final_metrics"]["test_rmse"] == pytest.approx(
        local_reference["final_metrics"]["test_rmse"], abs=1e-6)
    assert meta["blocks"] == 2 and (out / "_SUCCESS").is_file()
    assert {p.name for p in out.iterdir()} >= {"user_factors", "item_factors", "recommendations"}
    assert [e["epoch"] for e in json.loads((out / "metrics.json").read_text())["epochs"]] == \
        list(range(1, EPOCHS + 1))
    # the executor really died mid-run and the application got a replacement
    logs = "".join(p.read_text(errors="replace") for p in cluster.base.glob("worker*.log"))
    assert "exited with" in logs or "EXITED" in logs or "KILLED" in logs
    report(f"standalone cluster (master + 2 workers x 1 core): {EPOCHS} epochs on the small "
           f"synthetic data in {seconds:.0f}s wall, executor {killed} killed during epoch 3; "
           f"test RMSE {meta['final_metrics']['test_rmse']:.6f} (local reference "
           f"{local_reference['final_metrics']['test_rmse']:.6f})")
