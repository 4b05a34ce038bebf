"""Every local command of the README, run as written in a fresh clone of the repository
with the shared data beside it (``../shared/data/ml-100k``), as a newcomer would.

``bash`` blocks are commands to run; ``text`` blocks are templates naming the reader's own
files and cluster examples, which need a cluster. Two commands are not run here, each for a
stated reason: the install line (``.ci/run`` runs that installation itself, from a fresh
venv; the clone gets a venv that sees this one's packages and the clone's own sources) and
the test suite (which is what is running).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL = 'python3.11 -m venv .venv && .venv/bin/pip install -e ".[test]"'
NOT_RUN = {
    INSTALL: ".ci/run creates a fresh venv and runs this installation before the tests",
    ".venv/bin/python -m pytest": "the test suite itself, .ci/run's last command",
}
#: what a fresh shell would not have: the test run's interpreter choices
SCRUBBED = ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "VIRTUAL_ENV", "PYTHONPATH",
            "SPARK_LOCAL_IP", "SPARK_HOME")


def bash_blocks(markdown: str) -> list[list[str]]:
    """The commands of every ```bash block, continuation lines joined."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        cmds = [c.strip() for c in re.sub(r"\\\n\s*", "", block).splitlines()]
        out.append([c for c in cmds if c and not c.startswith("#")])
    return out


def bash_commands(markdown: str) -> list[str]:
    return [c for block in bash_blocks(markdown) for c in block]


def to_run(cmd: str) -> str | None:
    """What of a README command this test runs: the quick start's install part is left
    to .ci/run (a fresh venv), the rest of its line runs; None for what is not run."""
    if cmd in NOT_RUN:
        return None
    if cmd.startswith(INSTALL + " && "):
        return cmd[len(INSTALL + " && "):]
    return cmd


def test_readme_blocks_are_commands_or_templates():
    """Local commands stay few (each is run below) and name only data that is there."""
    text = (ROOT / "README.md").read_text()
    commands = bash_commands(text)
    assert 4 <= len(commands) <= 10, commands
    for cmd in commands:
        for path in re.findall(r"\.\./shared/\S+", cmd):
            assert path.startswith("../shared/data/ml-100k/"), cmd
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[0].startswith(INSTALL + " && ./spark-submit.sh jobs/train_pmf.py")
    assert "-m venv .venv" in ci and 'pip install --quiet -e ".[test]"' in ci
    assert ".venv/bin/python -m pytest" in commands and ci.rstrip().endswith(
        ".venv/bin/python -m pytest")
    fences = re.findall(r"^```(\w*)$", text, flags=re.M)
    assert set(fences) <= {"bash", "text", "python", ""}, set(fences)


def _clone(tmp_path: Path, ml100k: Path) -> Path:
    clone = tmp_path / "pmf-spark"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True,
                   capture_output=True, text=True)
    data = tmp_path / "shared" / "data"
    data.mkdir(parents=True)
    (data / "ml-100k").symlink_to(ml100k.resolve(), target_is_directory=True)
    # a venv in the clone that sees this venv's packages but imports the clone's sources
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(clone / ".venv")],
                   check=True)
    inner = next((clone / ".venv" / "lib").glob("python3*/site-packages"))
    (inner / "_pmf_test.pth").write_text(f"{clone}\n{site.getsitepackages()[0]}\n")
    return clone


def _run(cmd: str, cwd: Path) -> tuple[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)
    text = proc.stdout
    assert proc.returncode == 0, f"{cmd}\n{text[-3000:]}"
    assert "Traceback" not in text, f"{cmd}\n{text[-3000:]}"
    return text, time.perf_counter() - t0


@pytest.mark.submit
@pytest.mark.movielens
def test_readme_commands_run_as_written_in_a_fresh_clone(tmp_path, ml100k, report):
    blocks = bash_blocks((ROOT / "README.md").read_text())
    clone = _clone(tmp_path, ml100k)
    where, _ = _run(".venv/bin/python -c 'import pmf_spark; print(pmf_spark.__file__)'", clone)
    assert where.strip() == str(clone / "pmf_spark" / "__init__.py")

    def run_blocks(chosen):
        done = {}
        for cmd in (to_run(c) for block in chosen for c in block):
            if cmd is not None:
                done[cmd] = _run(cmd, clone)
        return done

    # the quick start's block writes out/pmf and nothing later reads it: it runs beside
    # the other blocks (in order among themselves), which halves the wall time
    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        first, rest = pool.submit(run_blocks, blocks[:1]), pool.submit(run_blocks, blocks[1:])
        ran = {**first.result(), **rest.result()}
    report(f"README commands: {len(ran)} in {time.perf_counter() - t0:.0f}s wall")
    for cmd, (_, seconds) in ran.items():
        report(f"README command {seconds:5.1f}s  {cmd[:90]}")
    outputs = {cmd: text for cmd, (text, _) in ran.items()}
    quick = outputs["./spark-submit.sh jobs/train_pmf.py"]
    lines = quick.splitlines()
    # the first minute is not silent: the wrapper speaks before the JVM, the job before Spark
    assert lines[0].startswith("spark-submit.sh: starting Spark for jobs/train_pmf.py")
    assert any("starting the Spark session" in ln for ln in lines[:5]), lines[:5]
    assert len([ln for ln in lines if " epoch " in ln]) == 20, quick[-3000:]
    assert "Warning" not in quick.replace(
        "WARNING: Using incubator modules: jdk.incubator.vector", "")
    meta = json.loads((clone / "out" / "pmf" / "model.json").read_text())
    assert meta["final_metrics"]["test_rmse"] < 0.85
    assert "the lists are ranked by the missing-data model trained beside" in quick
    assert (clone / "out" / "ml100k" / "item_users" / "_SUCCESS").exists() or \
        any((clone / "out" / "ml100k" / "item_users").glob("*.parquet"))
    user = next(t for c, t in outputs.items() if "--user 18" in c)
    assert "Top 10 recommendations" in user and "Highly rated in the test split" in user
    similar = next(t for c, t in outputs.items() if "--similar-items 50" in c)
    assert "Star Wars (1977)" in similar and "Empire Strikes Back" in similar
    shutil.rmtree(clone / ".venv")
