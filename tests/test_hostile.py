"""The hostile-input suite: inputs and situations a careless or unlucky user creates,
each with its expected outcome stated in the table -- the exact error substring and
exit code, or the correct result. Classes:

1. the output directory is sacred (foreign, files, mount points, read-only, full,
   symlinks, locks, leftovers of killed runs);
2. ids are data (exact strings, any size, any type, nested types refused);
3. files are read the way their format says (RFC 4180, directories, literal names,
   compression, corrupt files, test overlapping training);
4. checkpoints and configuration are verified;
5. every failure a person can cause ends in one line.

Most cases fail before any training, so the suite is fast; the few that train use
tiny inputs and ``--epochs 1 --rank 2 --top-k 0 --no-report``.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pmf_spark.errors import ConfigError, InputDataError
from pmf_spark.inputs.read import load_ratings
from pmf_spark.outputs import lock as outlock

import train_pmf

pytestmark = pytest.mark.spark
QUICK = ["--epochs", "1", "--rank", "2", "--top-k", "0", "--no-report"]
U_DATA = "".join(f"{u}\t{i}\t{(u * i) % 5 + 1}\t{880000000 + u * 100 + i}\n"
                 for u in range(1, 21) for i in range(1, 16))
ROWS = [(f"{u}", f"{i}", (u + i) % 5 + 1) for u in range(1, 13) for i in range(1, 10)]
COUNTS: dict[str, int] = {}


def csv_of(rows, header="user,item,rating") -> str:
    return (header + "\n" if header else "") + "".join(",".join(map(str, r)) + "\n"
                                                       for r in rows)


def run_job(spark, capsys, argv: list[str]) -> tuple[int, list[str], str]:
    capsys.readouterr()
    code = train_pmf.main(argv, spark=spark)
    err = capsys.readouterr().err
    return code, [ln for ln in err.splitlines() if ln.startswith("error:")], err


def expect_outcome(code, errors, err, want_code: int, want: str) -> None:
    assert "Traceback" not in err, err[-2000:]
    assert code == want_code, err[-2000:]
    if want_code == 0:
        assert errors == [], errors
    else:
        assert len(errors) == 1 and want in errors[0], (errors, want)


def files_of(path: Path) -> dict:
    return {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def write_parquet(path: Path, **columns) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


# =========================================================================== class 1
# The output directory is sacred. Each case builds a situation in ``tmp`` and returns
# (job arguments, the expected exit code, the error substring, a check afterwards).

def _prior_output(spark, tmp: Path) -> Path:
    """A real previous pmf-spark output (trained once per module, copied)."""
    src = PRIOR["path"]
    dst = tmp / "out"
    shutil.copytree(src, dst)
    return dst


PRIOR: dict = {}


@pytest.fixture(scope="module")
def prior(spark, tmp_path_factory):
    base = tmp_path_factory.mktemp("prior")
    (base / "u.data").write_text(U_DATA)
    out = base / "out"
    assert train_pmf.main(["--ratings", str(base / "u.data"), "--output", str(out), *QUICK],
                          spark=spark) == 0
    PRIOR["path"] = out
    PRIOR["data"] = base / "u.data"
    return out


def _foreign_model_json(spark, tmp):
    d = tmp / "out"
    d.mkdir()
    (d / "model.json").write_text("{}")
    (d / "thesis.tex").write_text("precious")
    return d


def _spark_dataset(spark, tmp):
    d = tmp / "out"
    d.mkdir()
    (d / "_SUCCESS").write_text("")
    (d / "part-0000.parquet").write_text("data")
    return d


def _prior_plus_notes(spark, tmp):
    d = _prior_output(spark, tmp)
    (d / "notes.txt").write_text("mine")
    return d


def _prior_plus_nested(spark, tmp):
    d = _prior_output(spark, tmp)
    (d / "user_factors" / "extra.csv").write_text("mine")
    return d


def _a_file(spark, tmp):
    (tmp / "out").write_text("a file")
    return tmp / "out"


def _legacy_plus_extra(spark, tmp):
    d = _prior_output(spark, tmp)
    marker = json.loads((d / "_SUCCESS").read_text())
    (d / "_SUCCESS").write_text(json.dumps({"tables": marker["tables"],
                                            "files": marker["files"]}))
    (d / "keep.me").write_text("mine")
    return d


OUTPUT_REFUSED = [
    # (name, build the output, exit code, error substring)
    ("foreign dir holding a model.json", _foreign_model_json, 2,
     "exists and is not a pmf-spark output"),
    ("a Spark dataset (empty _SUCCESS)", _spark_dataset, 2, "exists and is not a pmf-spark output"),
    ("previous output plus a user's file", _prior_plus_notes, 2,
     "holds 'notes.txt', which the pmf-spark run that wrote it did not write"),
    ("previous output plus a file inside a table", _prior_plus_nested, 2,
     "holds 'user_factors/extra.csv'"),
    ("--output is a file", _a_file, 2, "exists and is a file, not a directory"),
    ("an older version's output plus a user's file", _legacy_plus_extra, 2, "holds 'keep.me'"),
]


@pytest.mark.parametrize("name,build,code,want", OUTPUT_REFUSED, ids=[c[0] for c in OUTPUT_REFUSED])
def test_output_refused_and_untouched(spark, capsys, tmp_path, prior, name, build, code, want):
    out = build(spark, tmp_path)
    before = files_of(out) if out.is_dir() else out.read_bytes()
    res = run_job(spark, capsys, ["--ratings", str(PRIOR["data"]), "--output", str(out), *QUICK])
    expect_outcome(*res, code, want)
    assert (files_of(out) if out.is_dir() else out.read_bytes()) == before
    assert " epoch " not in res[2]                     # refused before training
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]   # no staging, no lock


def _paths_case(kind: str, tmp: Path) -> tuple[list[str], Path]:
    data = tmp / "data"
    data.mkdir()
    (data / "u.data").write_text(U_DATA)
    ratings = str(data / "u.data")
    if kind == "inside input":
        return ["--ratings", str(data), "--format", "movielens-100k", "--output",
                str(data / "out")], data
    if kind == "is the input":
        return ["--ratings", ratings, "--output", ratings], data
    if kind == "contains the input":
        return ["--ratings", ratings, "--output", str(tmp)], data
    if kind == "under a file":
        (tmp / "notes").write_text("a file")
        return ["--ratings", ratings, "--output", str(tmp / "notes" / "out")], data
    if kind == "checkpoint is a file":
        (tmp / "ck").write_text("x")
        return ["--ratings", ratings, "--output", str(tmp / "o"), "--checkpoint-dir",
                str(tmp / "ck")], data
    if kind == "checkpoint inside output":
        return ["--ratings", ratings, "--output", str(tmp / "o"), "--checkpoint-dir",
                str(tmp / "o" / "ck")], data
    if kind == "checkpoint inside input":
        return ["--ratings", str(data), "--format", "movielens-100k", "--output",
                str(tmp / "o"), "--checkpoint-dir", str(data / "ck")], data
    if kind == "output inside checkpoint":
        return ["--ratings", ratings, "--output", str(tmp / "ck" / "o"), "--checkpoint-dir",
                str(tmp / "ck")], data
    if kind == "dangling symlink":
        (tmp / "link").symlink_to(tmp / "nowhere")
        return ["--ratings", ratings, "--output", str(tmp / "link")], data
    if kind == "object store":
        return ["--ratings", ratings, "--output", "s3a://bucket/out"], data
    raise AssertionError(kind)


PATHS_REFUSED = [
    ("inside input", 2, "is inside the input --ratings"),
    ("is the input", 2, "is the input"),
    ("contains the input", 2, "or contains it"),
    ("under a file", 4, "is a file, not a directory"),
    ("checkpoint is a file", 2, "checkpoint-dir"),
    ("checkpoint inside output", 2, "must not be inside --output"),
    ("checkpoint inside input", 2, "overlaps the input --ratings"),
    ("output inside checkpoint", 2, "must not be inside --checkpoint-dir"),
    ("dangling symlink", 2, "which does not exist"),
    ("object store", 2, "cannot rename a directory atomically"),
]


@pytest.mark.parametrize("kind,code,want", PATHS_REFUSED, ids=[c[0] for c in PATHS_REFUSED])
def test_paths_refused_before_reading(spark, capsys, tmp_path, kind, code, want):
    argv, data = _paths_case(kind, tmp_path)
    before = files_of(data)
    res = run_job(spark, capsys, [*argv, *QUICK])
    expect_outcome(*res, code, want)
    assert files_of(data) == before
    assert "ratings from" not in res[2]               # the input was never read


@contextlib.contextmanager
def tmpfs(path: Path, size: str, ro: bool = False):
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if ro else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


MOUNTS = [
    ("read-only filesystem", "ro", 4, "Read-only file system"),
    ("full filesystem", "full", 4, "MB free; free some space"),
    ("a mount point as --output", "mountpoint", 2, "is a mount point"),
    ("a read-only checkpoint dir", "ro-ck", 4, "checkpoint-dir"),
]


@pytest.mark.parametrize("name,kind,code,want", MOUNTS, ids=[c[0] for c in MOUNTS])
def test_filesystems_checked_before_training(spark, capsys, tmp_path, name, kind, code, want):
    (tmp_path / "u.data").write_text(U_DATA)
    argv = ["--ratings", str(tmp_path / "u.data"), *QUICK]
    mnt = tmp_path / "mnt"
    with tmpfs(mnt, "64k" if kind == "full" else "4m", ro=kind in ("ro", "ro-ck")):
        if kind == "mountpoint":
            argv += ["--output", str(mnt)]
        elif kind == "ro-ck":
            argv += ["--output", str(tmp_path / "o"), "--checkpoint-dir", str(mnt / "ck")]
        else:
            argv += ["--output", str(mnt / "out")]
        res = run_job(spark, capsys, argv)
        expect_outcome(*res, code, want)
        assert " epoch " not in res[2]
        if kind != "ro":
            assert not [p for p in mnt.iterdir() if p.name != "ck"] or kind == "mountpoint"


# ------------------------------------------------------------------ locks and leftovers

def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _lock(tmp: Path, **info) -> Path:
    path = tmp / ".out.pmf-lock"
    base = {"pid": os.getpid(), "host": socket.gethostname(), "namespace": outlock._namespace(),
            "started_utc": "2026-01-01T00:00:00Z", "token": "0123456789ab", "job": "x"}
    path.write_text(json.dumps({**base, **info}))
    return path


@pytest.fixture
def sleeper():
    p = subprocess.Popen(["sleep", "60"])
    yield p
    p.kill()
    p.wait()


def test_a_second_writer_is_refused_while_the_first_runs(spark, capsys, tmp_path, sleeper):
    """Expected: exit 2, 'another pmf-spark run (pid N ...) is writing it'."""
    (tmp_path / "u.data").write_text(U_DATA)
    _lock(tmp_path, pid=sleeper.pid, proc_start=outlock._proc_start(sleeper.pid))
    res = run_job(spark, capsys, ["--ratings", str(tmp_path / "u.data"), "--output",
                                  str(tmp_path / "out"), *QUICK])
    expect_outcome(*res, 2, f"another pmf-spark run (pid {sleeper.pid} on")
    assert not (tmp_path / "out").exists()


def test_a_live_lock_elsewhere_is_respected_a_silent_one_taken_over(spark, tmp_path):
    """Expected: a fresh lock of another host refuses; one whose heartbeat stopped
    ten minutes ago is taken over (and the output written)."""
    from pmf_spark.outputs.commit import AtomicOutput

    lock = _lock(tmp_path, host="elsewhere", namespace="other")
    with pytest.raises(ConfigError, match="another pmf-spark run .* on elsewhere"):
        AtomicOutput(spark, str(tmp_path / "out"))
    old = time.time() - outlock.STALE_SECONDS - 5
    os.utime(lock, (old, old))
    with AtomicOutput(spark, str(tmp_path / "out")) as out:
        out.write_text("a.txt", "new")
        out.commit()
    assert (tmp_path / "out" / "a.txt").read_text() == "new" and not lock.exists()


def test_a_dead_runs_lock_and_staging_are_cleaned_up(spark, capsys, tmp_path, prior):
    """Expected: exit 0; the log says the lock was taken over and the staging removed."""
    out = _prior_output(spark, tmp_path)
    token = "abcdefabcdef"
    staging = tmp_path / f".out.pmf-staging-{token}"
    staging.mkdir()
    (staging / "half.parquet").write_text("half")
    _lock(tmp_path, pid=_dead_pid(), token=token)
    res = run_job(spark, capsys, ["--ratings", str(PRIOR["data"]), "--output", str(out),
                                  *QUICK])
    expect_outcome(*res, 0, "")
    assert "took over the lock of a run that is gone" in res[2]
    assert f"removed {staging}, the staging directory of a run that did not finish" in res[2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_older_versions_hidden_previous_output_is_put_back(spark, tmp_path, prior):
    """The bug this replaces: a kill between two renames left the only copy of the old
    output hidden. Expected: restored, and said so."""
    from pmf_spark.outputs.commit import AtomicOutput

    hidden = tmp_path / ".out.previous-0123456789ab"
    shutil.copytree(PRIOR["path"], hidden)
    with AtomicOutput(spark, str(tmp_path / "out")) as out:
        out.abort()
    assert files_of(tmp_path / "out") == files_of(PRIOR["path"]) and not hidden.exists()


def test_symlinked_output_is_resolved_and_said(spark, capsys, tmp_path, prior):
    """Expected: exit 0, the link's target replaced, the link kept, one log line."""
    target = _prior_output(spark, tmp_path)
    link = tmp_path / "link"
    link.symlink_to(target)
    res = run_job(spark, capsys, ["--ratings", str(PRIOR["data"]), "--output", str(link),
                                  *QUICK])
    expect_outcome(*res, 0, "")
    assert f"output {link} is a symbolic link to {target}: writing {target}" in res[2]
    assert link.is_symlink() and (target / "_SUCCESS").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "out"]


def test_empty_dir_and_previous_output_are_replaced_with_a_manifest(spark, capsys, tmp_path,
                                                                   prior):
    """Expected: exit 0; _SUCCESS names the job, its version and every file written."""
    out = tmp_path / "out"
    out.mkdir()
    for _ in range(2):                                 # an empty dir, then our own output
        res = run_job(spark, capsys, ["--ratings", str(PRIOR["data"]), "--output", str(out),
                                      *QUICK])
        expect_outcome(*res, 0, "")
    manifest = json.loads((out / "_SUCCESS").read_text())
    assert manifest["job"] == "pmf-spark train" and manifest["version"]
    on_disk = sorted(str(p.relative_to(out)) for p in out.rglob("*")
                     if p.is_file() and p != out / "_SUCCESS")
    assert manifest["contents"] == on_disk


COUNTS["1. output directory"] = len(OUTPUT_REFUSED) + len(PATHS_REFUSED) + len(MOUNTS) + 7


# =========================================================================== class 2+3
# Reading: each case writes files and reads them with load_ratings (the job's reader
# and validation) -- expected: an InputDataError with the substring, or a check of the
# validated ratings.

@dataclass
class Read:
    name: str
    files: dict                     # relative path -> str | bytes | callable(path)
    path: str                       # what is given as the input, relative to tmp
    expect: str | None = None       # error substring, or None: it reads
    check: Callable | None = None   # check(clean, rows) with rows = sorted collected
    kwargs: dict | None = None
    cls: str = "3"


def pq_file(**cols):
    return lambda path: write_parquet(path, **cols)


def ids_are(users=None, items=None, id_type=None, n=None):
    def check(clean, rows):
        if users is not None:
            assert sorted({r[0] for r in rows}) == sorted(users)
        if items is not None:
            assert sorted({r[1] for r in rows}) == sorted(items)
        if id_type is not None:
            assert clean.id_type == id_type
        if n is not None:
            assert clean.n == n == len(rows)
    return check


def gz(text: str) -> bytes:
    return gzip.compress(text.encode())


BIG = csv_of([(u, i, (u * i) % 5 + 1) for u in range(300) for i in range(40)])
BIG_GZ = gzip.compress(BIG.encode())
BIG_BZ2 = bz2.compress(BIG.encode())
TWENTY = "12345678901234567890"

READS = [
    # class 2: ids are data
    Read("'007' and '7' are two users", {"r.csv": csv_of([("007", "a", 3), ("7", "a", 4)])},
         "r.csv", check=ids_are(["007", "7"], id_type="string"), cls="2"),
    Read("'113E5' and '1e3' are not numbers", {"r.csv": csv_of([("113E5", "1e3", 3),
                                                                ("1e3", "113E5", 4)])},
         "r.csv", check=ids_are(["113E5", "1e3"], ["113E5", "1e3"], "string"), cls="2"),
    Read("CSV ids that are all integers are integers", {"r.csv": csv_of([(1, 2, 3),
                                                                        (10, 20, 4)])},
         "r.csv", check=ids_are([1, 10], [2, 20], "long"), cls="2"),
    Read("... with no header row too", {"r.csv": csv_of([(1, 2, 3), (10, 20, 4)], None)},
         "r.csv", check=ids_are([1, 10], [2, 20], "long"), cls="2"),
    Read("'+7', '-0' and 20 digits keep a column of numbers strings", {"r.csv": csv_of(
        [("+7", "-0", 3), (TWENTY, "5", 4), ("8", "-4", 5)], None)}, "r.csv",
        check=ids_are(["+7", TWENTY, "8"], ["-0", "5", "-4"], "string"), cls="2"),
    Read("the largest 64-bit integer is an integer id", {"r.csv": csv_of(
        [(2 ** 63 - 1, -5, 3), (1, 2, 4)], None)}, "r.csv",
        check=ids_are([1, 2 ** 63 - 1], [-5, 2], "long"), cls="2"),
    Read("a test split's '007' is not the training ratings' 7", {"r.csv": csv_of(
        [("7", "1", 3), ("007", "2", 4)])}, "r.csv",
        expect="column 'user': id '007' is not written as an integer id is (1 row(s)); the "
               "training ratings' ids are integers (pass --id-type string",
        kwargs={"id_type": "long"}, cls="2"),
    Read("20-digit ids in a CSV", {"r.csv": csv_of([(TWENTY, "1", 3), ("1", TWENTY, 4)])},
         "r.csv", check=ids_are([TWENTY, "1"], id_type="string"), cls="2"),
    Read("20-digit ids read as integers", {"r.csv": csv_of([(TWENTY, "1", 3)])}, "r.csv",
         expect=f"column 'user': id '{TWENTY}' does not fit a 64-bit integer",
         kwargs={"id_type": "integer"}, cls="2"),
    Read("'inf' and 'Infinity' ids in a string column", {"r.csv": csv_of(
        [("inf", "Infinity", 3), ("-inf", "NaN", 4)])}, "r.csv",
        check=ids_are(["-inf", "inf"], ["Infinity", "NaN"], "string"), cls="2"),
    Read("--id-type integer parses ids", {"r.csv": csv_of([("007", "1", 3), (" 8", "2", 4)])},
         "r.csv", check=ids_are([7, 8], [1, 2], "long"), kwargs={"id_type": "integer"},
         cls="2"),
    Read("--id-type integer refuses a name", {"r.csv": csv_of([("x7", "1", 3)])}, "r.csv",
         expect="column 'user': non-integer id 'x7' (1 row(s)); --id-type integer",
         kwargs={"id_type": "integer"}, cls="2"),
    Read("a column of fractions is not ids", {"r.csv": csv_of([("1.5", "2", 3)])}, "r.csv",
         expect="column 'user': fractional id 1.5 (1 row(s)); ids must be integers or strings "
                "(pass --id-type string", cls="2"),
    Read("--id-type string keeps '1.5'", {"r.csv": csv_of([("1.5", "2", 3)])}, "r.csv",
         check=ids_are(["1.5"]), kwargs={"id_type": "string"}, cls="2"),
    Read("Parquet decimal(20,0) ids", {"r.parquet": pq_file(
        user=pa.array([12345678901234567890, 7], pa.decimal128(20, 0)), item=[1, 2],
        rating=[3.0, 4.0])}, "r.parquet", check=ids_are([TWENTY, "7"], ["1", "2"], "string"),
        cls="2"),
    Read("Parquet decimal(10,0) ids are integers", {"r.parquet": pq_file(
        user=pa.array([5, 7], pa.decimal128(10, 0)), item=[1, 2], rating=[3.0, 4.0])},
        "r.parquet", check=ids_are([5, 7], [1, 2], "long"), cls="2"),
    Read("Parquet decimal(12,2) fractional id", {"r.parquet": pq_file(
        user=pa.array([1, 2], pa.int64()), item=pa.array(
            [__import__("decimal").Decimal("1.50"), __import__("decimal").Decimal("2.00")],
            pa.decimal128(12, 2)), rating=[3.0, 4.0])}, "r.parquet",
        expect="column 'item': fractional id 1.50", cls="2"),
    Read("Parquet double ids that are integers", {"r.parquet": pq_file(
        user=[1.0, 2.0], item=[3.0, 4.0], rating=[3.0, 4.0])}, "r.parquet",
        check=ids_are([1, 2], [3, 4], "long"), cls="2"),
    Read("Parquet double id inf", {"r.parquet": pq_file(
        user=[1.0, float("inf")], item=[3, 4], rating=[3.0, 4.0])}, "r.parquet",
        expect="column 'user': non-finite id 'Infinity'", cls="2"),
    Read("Parquet double id 1e20", {"r.parquet": pq_file(
        user=[1.0, 1e20], item=[3, 4], rating=[3.0, 4.0])}, "r.parquet",
        expect="is too large to be exact in a double column", cls="2"),
    Read("Parquet double id 2.5", {"r.parquet": pq_file(
        user=[1.0, 2.5], item=[3, 4], rating=[3.0, 4.0])}, "r.parquet",
        expect="column 'user': fractional id 2.5", cls="2"),
    Read("Parquet string ids keep spaces and zeros", {"r.parquet": pq_file(
        user=["007", "7", " 7"], item=["a", "a", "a"], rating=[3.0, 4.0, 5.0])}, "r.parquet",
        check=ids_are(["007", "7", " 7"], id_type="string"), cls="2"),
    Read("Parquet blank string id", {"r.parquet": pq_file(
        user=["a", "  "], item=["b", "b"], rating=[3.0, 4.0])}, "r.parquet",
        expect="column 'user': 1 row(s) with a missing id", cls="2"),
    Read("a struct user column", {"r.parquet": pq_file(
        user=pa.array([{"a": 1}]), item=[1], rating=[3.0])}, "r.parquet",
        expect="column 'user' (the user id) has type struct<a:bigint>", cls="2"),
    Read("an array item column", {"r.parquet": pq_file(
        user=[1], item=pa.array([[1, 2]]), rating=[3.0])}, "r.parquet",
        expect="column 'item' (the item id) has type array<bigint>", cls="2"),
    Read("a map user column", {"r.parquet": pq_file(
        user=pa.array([[("k", 1)]], pa.map_(pa.string(), pa.int64())), item=[1],
        rating=[3.0])}, "r.parquet", expect="has type map<string,bigint>", cls="2"),
    Read("an array rating column", {"r.parquet": pq_file(
        user=[1], item=[1], rating=pa.array([[3.0]]))}, "r.parquet",
        expect="column 'rating' (the rating) has type array<double>; expected a number",
        cls="2"),
    Read("a boolean id column", {"r.parquet": pq_file(
        user=[True], item=[1], rating=[3.0])}, "r.parquet",
        expect="column 'user' (the user id) has type boolean", cls="2"),
    Read("a date id column", {"r.parquet": pq_file(
        user=pa.array([1], pa.date32()), item=[1], rating=[3.0])}, "r.parquet",
        expect="has type date", cls="2"),
    Read("--id-type string on integer Parquet ids", {"r.parquet": pq_file(
        user=[1, 2], item=[3, 4], rating=[3.0, 4.0])}, "r.parquet",
        check=ids_are(["1", "2"], ["3", "4"], "string"), kwargs={"id_type": "string"},
        cls="2"),
    Read("timestamp 1e30 never overflows", {"r.csv": csv_of(
        [(1, 2, 3, "1e30")], "user,item,rating,timestamp")}, "r.csv",
        expect="column 'timestamp': timestamp '1e30' is not a number of seconds", cls="2"),
    Read("rating 1e400", {"r.csv": csv_of([(1, 2, "1e400")])}, "r.csv",
         expect="column 'rating': non-finite rating '1e400'", cls="2"),
    Read("a Parquet timestamp column", {"r.parquet": pq_file(
        user=[1, 1], item=[2, 3], rating=[3.0, 4.0],
        ts=pa.array([1_000_000_000, 2_000_000_000], pa.timestamp("s")))}, "r.parquet",
        check=lambda clean, rows: sorted(r[3] for r in rows) == [1_000_000_000, 2_000_000_000]
        or pytest.fail(str(rows)), kwargs={"timestamp_col": "ts"}, cls="2"),
    # class 3: files
    Read("RFC 4180 quotes, doubled quotes, separators", {"r.csv": 'user,item,rating\n'
         '"Smith, J.","say ""hi""",3\n"plain",x,4\n'}, "r.csv",
         check=ids_are(["Smith, J.", "plain"], ['say "hi"', "x"])),
    Read("quoted header names", {"r.csv": '"user","item","rating"\n"a","b","3"\n'}, "r.csv",
         check=ids_are(["a"], ["b"])),
    Read("a UTF-8 byte-order mark", {"r.csv": "\ufeffuser,item,rating\na,b,3\n"}, "r.csv",
         check=ids_are(["a"], ["b"])),
    Read("two files with different headers", {"d/a.csv": csv_of([(1, 2, 3)]),
                                              "d/b.csv": csv_of([(1, 2, 3)], "item,user,rating")},
         "d", expect="a.csv has the header 'user,item,rating' but", kwargs={"fmt": "csv"}),
    Read("one file with a header, one without", {"d/a.csv": csv_of([(1, 2, 3)]),
                                                  "d/b.csv": csv_of([(4, 5, 3)], None)},
         "d", expect="a.csv has a header row but", kwargs={"fmt": "csv"}),
    Read("every file's header is dropped", {"d/a.csv": csv_of([(1, 2, 3)]),
                                            "d/b.csv": csv_of([(4, 5, 3), (6, 7, 2)])},
         "d", check=ids_are([1, 4, 6], n=3), kwargs={"fmt": "csv"}),
    Read("header-less files with different widths", {"d/a.csv": csv_of([(1, 2, 3)], None),
                                                      "d/b.csv": csv_of([(1, 2, 3, 4)], None)},
         "d", expect="has 3 fields per line but", kwargs={"fmt": "csv"}),
    Read("files in nested directories", {"d/a.csv": csv_of([(1, 2, 3)]),
                                         "d/x/b.csv": csv_of([(4, 5, 3)]),
                                         "d/x/y/c.csv": csv_of([(6, 7, 3)])},
         "d", check=ids_are([1, 4, 6], n=3)),
    Read("Hive-style partitions", {"d/part=1/a.parquet": pq_file(user=[1], item=[2],
                                                                 rating=[3.0]),
                                   "d/part=2/b.parquet": pq_file(user=[4], item=[5],
                                                                 rating=[3.0])},
         "d", check=ids_are([1, 4], n=2), kwargs={"fmt": "parquet"}),
    Read("Parquet files with int64 and double ids", {
        "d/a.parquet": pq_file(user=pa.array([1], pa.int64()), item=[1], rating=[3.0]),
        "d/b.parquet": pq_file(user=[2.0], item=[1], rating=[3.0])}, "d",
        expect="column 'user' is DOUBLE in this file but bigint in the others",
        kwargs={"fmt": "parquet"}),
    Read("a name with [ ]", {"a[1].csv": csv_of([(1, 2, 3)])}, "a[1].csv",
         check=ids_are([1])),
    Read("a name with { }", {"x{y}.csv": csv_of([(1, 2, 3)])}, "x{y}.csv",
         check=ids_are([1])),
    Read("a name with *", {"st*r.csv": csv_of([(1, 2, 3)])}, "st*r.csv", check=ids_are([1])),
    Read("a name with :", {"c:d.csv": csv_of([(1, 2, 3)])}, "c:d.csv", check=ids_are([1])),
    Read("a name starting with _", {"_r.csv": csv_of([(1, 2, 3)])}, "_r.csv",
         check=ids_are([1])),
    Read("a name starting with .", {".r.csv": csv_of([(1, 2, 3)])}, ".r.csv",
         check=ids_are([1])),
    Read("a glob still works", {"d/p-1.csv": csv_of([(1, 2, 3)]),
                                "d/p-2.csv": csv_of([(4, 5, 3)]), "d/q.csv": csv_of([(9, 9, 3)])},
         "d/p-*.csv", check=ids_are([1, 4])),
    Read("a directory holding 'c:d.csv'", {"d/a.csv": csv_of([(1, 2, 3)]),
                                           "d/c:d.csv": csv_of([(4, 5, 3)])},
         "d", check=ids_are([1, 4], n=2), kwargs={"fmt": "csv"}),
    Read("u.data.gz is MovieLens 100K", {"u.data.gz": gz(U_DATA)}, "u.data.gz",
         check=ids_are(list(range(1, 21)), id_type="long", n=300)),
    Read("ratings.csv.bz2", {"r.csv.bz2": BIG_BZ2}, "r.csv.bz2", check=ids_are(n=12000)),
    Read("a truncated .gz", {"r.csv.gz": BIG_GZ[: len(BIG_GZ) // 2]}, "r.csv.gz",
         expect="r.csv.gz: truncated or corrupt compressed file"),
    Read("a .gz that is not gzip", {"r.csv.gz": b"user,item,rating\n1,2,3\n"}, "r.csv.gz",
         expect="r.csv.gz: truncated or corrupt compressed file"),
    Read("a truncated .bz2", {"r.csv.bz2": BIG_BZ2[: len(BIG_BZ2) // 2]}, "r.csv.bz2",
         expect="r.csv.bz2: truncated or corrupt compressed file"),
    Read("a .zip archive", {"r.csv.zip": b"PK\x03\x04"}, "r.csv.zip",
         expect="a zip archive, which Spark cannot read"),
    Read("a truncated Parquet file", {"r.parquet": lambda p: (
        write_parquet(p, user=[1] * 100, item=[2] * 100, rating=[3.0] * 100),
        p.write_bytes(p.read_bytes()[:-50]))}, "r.parquet",
        expect="not readable as Parquet"),
    Read("an empty directory", {"d/.keep": ""}, "d", expect="no data files in this directory",
         kwargs={"fmt": "csv"}),
    Read("a header naming a column twice", {"r.csv": "user,user,rating\n1,2,3\n"}, "r.csv",
         expect="the header names column 'user' twice"),
    Read("a directory of CSV files, format from their names",
         {"d/a.csv": csv_of([(1, 2, 3)]), "d/b.csv": csv_of([(4, 5, 3)])}, "d",
         check=ids_are([1, 4])),
]

COUNTS["2. ids are data"] = sum(r.cls == "2" for r in READS) + 1
COUNTS["3. files as their format says"] = sum(r.cls == "3" for r in READS) + 1


def _make(tmp: Path, files: dict) -> None:
    for rel, content in files.items():
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


@pytest.mark.parametrize("case", READS, ids=[r.name for r in READS])
def test_reading(spark, tmp_path, case: Read):
    _make(tmp_path, case.files)
    kwargs = dict(case.kwargs or {})
    fmt = kwargs.pop("fmt", "auto")
    path = str(tmp_path / case.path)
    if case.expect is not None:
        with pytest.raises(InputDataError) as info:
            load_ratings(spark, path, fmt, **kwargs)
        message = str(info.value)
        assert case.expect in message and "\n" not in message, message
        return
    clean = load_ratings(spark, path, fmt, **kwargs)
    rows = sorted(tuple(r) for r in clean.df.collect())
    case.check(clean, rows)


def test_ids_through_the_job_and_a_test_file_of_other_ids(spark, capsys, tmp_path):
    """Expected: exit 0; '007' and '7' are two users in user_factors (string ids) and
    the --test file reads although training has a non-numeric id."""
    rows = [(u, i, (u * i) % 5 + 1) for u in range(1, 13) for i in range(1, 10)]
    train = [("007" if u == 7 else str(u), f"{i}", r) for u, i, r in rows] + [("7", "1", 5)]
    (tmp_path / "train.csv").write_text(csv_of(train + [("x9", "2", 4)]))
    (tmp_path / "test.csv").write_text(csv_of([("7", "3", 4), ("12", "12", 3)]))
    res = run_job(spark, capsys, ["--ratings", str(tmp_path / "train.csv"), "--test",
                                  str(tmp_path / "test.csv"), "--output", str(tmp_path / "o"),
                                  *QUICK])
    expect_outcome(*res, 0, "")
    users = pq.read_table(tmp_path / "o" / "user_factors").column("user_id").to_pylist()
    assert {"007", "7", "x9"} <= set(users) and len(users) == len(set(users)) == 14


def test_a_test_set_sharing_training_pairs_is_reported(spark, capsys, tmp_path):
    """Expected: exit 0 and one warning line with the count of shared pairs and an
    example (the rest of the test split is unaffected)."""
    (tmp_path / "u1.base").write_text(U_DATA)
    (tmp_path / "u1.test").write_text(U_DATA.splitlines(True)[5] + U_DATA.splitlines(True)[9]
                                      + "99\t99\t3\t1\n")
    res = run_job(spark, capsys, ["--ratings", str(tmp_path / "u1.base"), "--test",
                                  str(tmp_path / "u1.test"), "--output", str(tmp_path / "o"),
                                  *QUICK])
    expect_outcome(*res, 0, "")
    warned = [ln for ln in res[2].splitlines() if "are also in the training ratings" in ln]
    assert len(warned) == 1 and f"test {tmp_path / 'u1.test'}: 2 (user, item) pair(s)" in \
        warned[0] and "e.g. user 1 item 6" in warned[0], warned


# =========================================================================== class 4
# Checkpoints and configuration. One tiny run with a checkpoint after each of its two
# epochs; each case damages a copy and resumes. Expected: exit 2 and the substring,
# before any epoch runs.

@pytest.fixture(scope="module")
def checkpoint(spark, tmp_path_factory):
    base = tmp_path_factory.mktemp("ck")
    (base / "u.data").write_text(U_DATA)
    argv = ["--ratings", str(base / "u.data"), "--checkpoint-dir", str(base / "ck"),
            "--checkpoint-every", "1", "--epochs", "2", "--rank", "2", "--top-k", "0",
            "--no-report"]
    assert train_pmf.main([*argv, "--output", str(base / "out")], spark=spark) == 0
    return base, argv


def _array_file(ck: Path) -> Path:
    return next((ck / "epoch-000002" / "user.parquet").glob("part-*.parquet"))


def _truncate(ck):
    f = _array_file(ck)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _drop_rows(ck):
    f = _array_file(ck)
    t = pq.read_table(f)
    pq.write_table(t.slice(0, t.num_rows - 1), f)


def _edit_values(ck):
    f = _array_file(ck)
    t = pq.read_table(f)
    values = [[v * 1.01 for v in row] for row in t.column("values").to_pylist()]
    pq.write_table(t.set_column(1, "values", pa.array(values)), f)


def _edit_state(ck):
    p = ck / "epoch-000002" / "state.json"
    meta = json.loads(p.read_text())
    meta["state"]["reg_user"] = [x * 2 for x in meta["state"]["reg_user"]]
    p.write_text(json.dumps(meta))


def _write_latest(text: bytes):
    return lambda ck: (ck / "LATEST").write_bytes(text)


def _latest_dir(ck):
    (ck / "LATEST").unlink()
    (ck / "LATEST").mkdir()


def _old_format(ck):
    p = ck / "epoch-000002" / "state.json"
    meta = json.loads(p.read_text())
    meta["format_version"] = 2
    p.write_text(json.dumps(meta))


CHECKPOINTS = [
    ("fewer --epochs than the checkpoint holds", None, ["--epochs", "1"],
     "holds 2 epoch(s) but this run is asked for 1; raise --epochs to at least 2"),
    ("a truncated array file", _truncate, [], "user.parquet: unreadable or incomplete"),
    ("an array file missing rows", _drop_rows, [], "user.parquet: unreadable or incomplete"),
    ("edited factor values", _edit_values, [],
     "user.parquet: contents do not match its checksum"),
    ("an edited state.json", _edit_state, [],
     "state.json: contents do not match its checksum"),
    ("a removed state.json", lambda ck: (ck / "epoch-000002" / "state.json").unlink(), [],
     "state.json: missing"),
    ("a removed array file", lambda ck: shutil.rmtree(ck / "epoch-000002" / "item.parquet"),
     [], "item.parquet: unreadable or incomplete"),
    ("LATEST naming another directory", _write_latest(b"../../etc\n"), [],
     "not a checkpoint of this directory"),
    ("LATEST naming a missing checkpoint", _write_latest(b"epoch-000009\n"), [],
     "epoch-000009/state.json: missing"),
    ("LATEST not text", _write_latest(b"\xff\xfe\x00epoch"), [], "LATEST: not text"),
    ("LATEST a directory", _latest_dir, [], "LATEST: unreadable"),
    ("a checkpoint of an older format", _old_format, [], "format 2, this version reads 3"),
]


THROUGH_THE_JOB = ("fewer --epochs than the checkpoint holds", "a truncated array file",
                   "an edited state.json")


@pytest.mark.parametrize("name,damage,extra,want", CHECKPOINTS, ids=[c[0] for c in CHECKPOINTS])
def test_checkpoints_are_verified(spark, capsys, tmp_path, checkpoint, name, damage, extra,
                                  want):
    """Three cases through the job (refused before any epoch), the rest through the
    checkpoint reader the job uses."""
    from pmf_spark.train.checkpoint import Checkpointer

    base, argv = checkpoint
    ck = tmp_path / "ck"
    shutil.copytree(base / "ck", ck)
    if damage is not None:
        damage(ck)
    if name in THROUGH_THE_JOB:
        argv = [a if a != str(base / "ck") else str(ck) for a in argv]
        res = run_job(spark, capsys, [*argv, *extra, "--resume", "--output",
                                      str(tmp_path / "o")])
        expect_outcome(*res, 2, want)
        assert " epoch " not in res[2] and not (tmp_path / "o").exists()
        return
    fp = json.loads((base / "ck" / "epoch-000002" / "state.json").read_text())["fingerprint"]
    with pytest.raises(ConfigError) as info:
        Checkpointer(spark, str(ck), 1, fp).load_latest()
    assert want in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_resume_at_the_checkpoints_last_epoch_says_so(spark, capsys, tmp_path, checkpoint):
    """Expected: exit 0 and 'nothing left to train'; no epoch is run again."""
    base, argv = checkpoint
    res = run_job(spark, capsys, [*argv, "--resume", "--output", str(tmp_path / "o")])
    expect_outcome(*res, 0, "")
    assert "already holds all 2 epoch(s): nothing left to train" in res[2]
    assert " epoch   1/" not in res[2]


CONFIGS = [
    ("a string for an integer", b'[model]\nrank = "ten"\n',
     "[model] rank = 'ten': expected an integer"),
    ("a fraction for an integer", b"[fit]\nepochs = 2.5\n",
     "[fit] epochs = 2.5: expected an integer"),
    ("a table for a value", b"[model.rank]\nx = 1\n", "[model] rank = dict: expected an integer"),
    ("a number for a path", b"[job]\noutput = 5\n", "[job] output = 5: expected a string"),
    ("a value out of range", b"[model]\nrank = 0\n", "[model] rank: must be >= 1, got 0"),
    ("a bool for a number", b"[fit]\nlambda_u = true\n", "expected a number"),
    ("Latin-1 text", "[job]\noutput = 'café'\n".encode("latin-1"), "not UTF-8 text"),
    ("a directory", None, "is a directory, not a TOML file"),
    ("a missing file", "missing", "no such file"),
    ("not TOML", b"rank: 3\n", "not valid TOML"),
]


@pytest.mark.parametrize("name,content,want", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_config_errors_name_file_and_key(capsys, tmp_path, name, content, want):
    path = tmp_path / "c.toml"
    if content is None:
        path.mkdir()
    elif content != "missing":
        path.write_bytes(content)
    code = train_pmf.main(["--config", str(path), "--print-config"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: config {path}: "), err
    assert want in err[0], err


def test_config_with_a_byte_order_mark_loads(capsys, tmp_path):
    path = tmp_path / "c.toml"
    path.write_bytes("\ufeff[model]\nrank = 4\n".encode())
    assert train_pmf.main(["--config", str(path), "--print-config"]) == 0
    assert "rank = 4" in capsys.readouterr().out


COUNTS["4. checkpoints and configuration"] = len(CHECKPOINTS) + 1 + len(CONFIGS) + 1


# =========================================================================== class 5
# Every failure a person can cause ends in one line.

PARSER = [
    # (job module, arguments, exit code, the one error line contains)
    ("train_pmf", ["--rnak", "3"], 2, "unrecognized arguments: --rnak 3 (did you mean --rank?)"),
    ("train_pmf", ["--ran", "3"], 2, "unrecognized arguments: --ran 3 (did you mean --rank?)"),
    ("train_pmf", ["--epoch", "3"], 2, "(did you mean --epochs?)"),
    ("train_pmf", ["--no-reprot"], 2, "(did you mean --no-report?)"),
    ("train_pmf", ["--format", "tsv"], 2, "argument --format: invalid choice: 'tsv'"),
    ("train_pmf", ["--id-type", "number"], 2, "argument --id-type: invalid choice"),
    ("recommend", ["--model", "m", "--user", "1", "--itmes", "x"], 2,
     "(did you mean --items?)"),
    ("recommend", ["--model", "m", "--users", "ids.txt"], 2, "--users needs --output DIR"),
    ("recommend", ["--model", "m", "--user", "1", "--top-k", "0"], 2, "top_k: must be >= 1"),
    ("tune", ["--trails", "3"], 2, "(did you mean --trials?)"),
    ("tune", ["--lambda-range", "1"], 2, "--lambda-range takes low,high"),
]


@pytest.mark.parametrize("job,argv,code,want", PARSER,
                         ids=[f"{c[0]} {' '.join(c[1])}" for c in PARSER])
def test_argument_errors_need_no_spark(capsys, job, argv, code, want):
    """check_args is what spark-submit.sh runs before the JVM: no SparkSession here."""
    module = __import__(job)
    assert module.check_args(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and want in err[0], err


def _interrupt(signum: int | None, original):
    def run_epoch(self, state):
        if signum is None:
            raise KeyboardInterrupt
        os.kill(os.getpid(), signum)     # arrives while the epoch runs
        return original(self, state)
    return run_epoch


@pytest.mark.parametrize("how", ["Ctrl-C", "SIGTERM"])
def test_interrupt_leaves_the_output_and_says_so(spark, capsys, tmp_path, prior, monkeypatch,
                                                how):
    """Expected: exit 130, 'interrupted; <output> was left as it was', old output intact."""
    import signal

    from pmf_spark.train.loop import Trainer

    out = _prior_output(spark, tmp_path)
    before = files_of(out)
    monkeypatch.setattr(Trainer, "run_epoch", _interrupt(
        None if how == "Ctrl-C" else signal.SIGTERM, Trainer.run_epoch))
    res = run_job(spark, capsys, ["--ratings", str(PRIOR["data"]), "--output", str(out),
                                  *QUICK])
    expect_outcome(*res, 130, f"interrupted; {out} was left as it was")
    assert files_of(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_workers_without_numpy_are_one_line(spark, capsys, tmp_path, prior):
    """An executor Python without the dependencies. Expected: exit 2, one line naming the
    missing module."""
    import sys

    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    sc = spark.sparkContext
    saved = sc.pythonExec
    sc.pythonExec = str(bare / "bin" / "python")
    try:
        res = run_job(spark, capsys, ["--ratings", str(PRIOR["data"]), "--output",
                                      str(tmp_path / "o"), *QUICK])
    finally:
        sc.pythonExec = saved
    expect_outcome(*res, 2, "the Python workers cannot import '")
    assert not (tmp_path / "o").exists()


FILTERS = [
    ("a minimum count above every item", ["--min-item-ratings", "1000"],
     "min_item_ratings: 1000 is above every item's number of training ratings (the most is"),
    ("an exclude list covering the catalogue", ["--exclude-items", "ALL"],
     "excludes every item that could be recommended"),
    ("an exclude list that is not there", ["--exclude-items", "MISSING"],
     "no such file or directory"),
]


@pytest.mark.parametrize("name,extra,want", FILTERS, ids=[c[0] for c in FILTERS])
def test_filters_leaving_nothing_are_refused_before_training(spark, capsys, tmp_path, name,
                                                            extra, want):
    (tmp_path / "u.data").write_text(U_DATA)
    (tmp_path / "all.txt").write_text("".join(f"{i}\n" for i in range(1, 16)))
    extra = [{"ALL": str(tmp_path / "all.txt"), "MISSING": str(tmp_path / "none.txt")}.get(a, a)
             for a in extra]
    res = run_job(spark, capsys, ["--ratings", str(tmp_path / "u.data"), "--output",
                                  str(tmp_path / "o"), "--epochs", "1", "--rank", "2",
                                  "--no-report", "--top-k", "5", *extra])
    expect_outcome(*res, 2, want)
    assert " epoch " not in res[2] and not (tmp_path / "o").exists()


def test_absurd_blocks_are_capped_with_a_note(spark, capsys, tmp_path, prior):
    """Expected: exit 0, one line saying what was used; model.json records it."""
    res = run_job(spark, capsys, ["--ratings", str(PRIOR["data"]), "--output",
                                  str(tmp_path / "o"), "--blocks", "50000", *QUICK])
    expect_outcome(*res, 0, "")
    assert "--blocks 50000 is far more than" in res[2]
    assert json.loads((tmp_path / "o" / "model.json").read_text())["blocks"] == 2


def test_worker_memory_grows_with_rank_and_refuses_what_does_not_fit(spark):
    """The estimate counts the k x k Gram buffers (rank-dependent). Expected: a
    ConfigError naming the rank when a worker has too little memory."""
    import numpy as np

    from pmf_spark.config.params import PMFParams
    from pmf_spark.train.preflight import check_worker_memory, worker_memory_needed

    counts = {"user": np.full(6040, 165), "item": np.full(3706, 270)}
    small = worker_memory_needed(counts, 11, 2)
    large = worker_memory_needed(counts, 501, 2)
    assert large > 5 * small and large > 1 << 30
    with pytest.raises(ConfigError, match=r"worker memory: at rank 500 each Python worker "
                                          r"needs about .* GiB"):
        check_worker_memory(spark, counts, PMFParams.of(rank=500), 2, available=1 << 30)
    check_worker_memory(spark, counts, PMFParams.of(rank=10), 2, available=1 << 30)


COUNTS["5. one-line failures"] = len(PARSER) + 2 + 1 + len(FILTERS) + 1 + 1 + 2


# --------------------------------------------------------------------------- spawned

@pytest.mark.submit
def test_spark_submit_checks_arguments_before_the_jvm(tmp_path):
    """Expected: exit 2 within seconds (no JVM), the one line with a suggestion."""
    root = Path(__file__).resolve().parents[1]
    t0 = time.perf_counter()
    proc = subprocess.run([str(root / "spark-submit.sh"), "jobs/train_pmf.py", "--rnak", "3"],
                          cwd=root, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unrecognized arguments: --rnak 3 (did you mean --rank?) (see --help)"]
    assert "SparkContext" not in proc.stdout + proc.stderr and seconds < 10, seconds


@pytest.mark.submit
def test_ctrl_c_through_spark_submit(tmp_path, prior):
    """Ctrl-C (SIGINT to the terminal's process group) during training. Expected:
    exit 130, the last line 'error: interrupted; <output> was left as it was', the old
    output untouched and no staging or lock left."""
    import signal
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    shutil.copytree(PRIOR["path"], out)
    before = files_of(out)
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    proc = subprocess.Popen([str(root / "spark-submit.sh"), "jobs/train_pmf.py", "--output",
                             str(out), "--epochs", "200", "--top-k", "0", "--no-report"],
                            cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if " epoch " in line and "/200" in line:
                os.killpg(proc.pid, signal.SIGINT)
                break
        rest, _ = proc.communicate(timeout=120)
        lines.append(rest)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = "".join(lines)
    assert proc.returncode == 130, text[-3000:]
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: interrupted; {out} was left as it was"], text[-3000:]
    assert "Traceback" not in text
    assert files_of(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# =========================================================================== the commit
# A deterministic kill test: a crash injected after each filesystem step of the commit
# (and of the recovery that follows) on each way of committing. With the atomic
# exchange (Linux, local) the output is the complete old one or the complete new one at
# every point; with two renames (HDFS and other filesystems) it is too, except between
# the two renames, when both complete directories sit beside it; and the next run
# always recovers.

OLD = {"a.txt": "old a", "t/part-0.txt": "old table"}
NEW = {"a.txt": "new a", "b.txt": "new b", "t/part-0.txt": "new table", "t/part-1.txt": "new"}


def _write(out, files):
    for name, text in files.items():
        if "/" in name:
            os.makedirs(short_local(out.path(name.rsplit("/", 1)[0])), exist_ok=True)
        out.write_text(name, text)


def short_local(uri: str) -> str:
    return uri[len("file:"):] if uri.startswith("file:") else uri


def _state(out_dir: Path) -> str:
    """'old', 'new' or what is wrong, from the files in the output."""
    if not out_dir.is_dir():
        return "missing"
    files = {str(p.relative_to(out_dir)): p.read_text() for p in out_dir.rglob("*")
             if p.is_file() and p.name != "_SUCCESS" and not p.name.endswith(".crc")}
    manifest = json.loads((out_dir / "_SUCCESS").read_text())
    listed = set(manifest["contents"])
    on_disk = {str(p.relative_to(out_dir)) for p in out_dir.rglob("*")   # Hadoop's local
               if p.is_file() and p.name != "_SUCCESS" and not p.name.endswith(".crc")}
    if listed != on_disk:
        return f"incomplete: listed {sorted(listed)} on disk {sorted(on_disk)}"
    return {tuple(sorted(OLD.items())): "old", tuple(sorted(NEW.items())): "new"}.get(
        tuple(sorted(files.items())), f"mixed {files}")


def _die(out) -> None:
    """The process that held ``out``'s lock is gone (its heartbeat stops, its pid is
    dead)."""
    out.lock._stop.set()
    path = Path(short_local(out.lock.path))
    if not path.exists():            # it had released the lock already
        return
    info = json.loads(path.read_text())
    path.write_text(json.dumps({**info, "pid": _dead_pid()}))


def _commit_steps(spark, tmp, backend) -> list[str]:
    from pmf_spark.outputs import commit

    seen: list[str] = []
    commit.FAULT = seen.append
    try:
        _commit_once(spark, tmp / "dry", OLD)
        seen.clear()
        _commit_once(spark, tmp / "dry", NEW)
    finally:
        commit.FAULT = None
    return list(seen)


def _commit_once(spark, out_dir: Path, files) -> None:
    from pmf_spark.outputs.commit import AtomicOutput

    with AtomicOutput(spark, str(out_dir), job="test") as out:
        _write(out, files)
        out.commit({"tables": {}})


@pytest.fixture(params=["exchange", "two renames", "hadoop"])
def backend(request, monkeypatch):
    from pmf_spark.outputs import commit
    from pmf_spark.storage import ops as fsops

    if request.param == "two renames":
        monkeypatch.setattr(fsops.LocalOps, "exchange", lambda self, a, b: False)
    if request.param == "hadoop":
        monkeypatch.setattr(commit, "is_local_uri", lambda uri: False)
    return request.param


def test_a_crash_at_any_step_of_the_commit_leaves_old_or_new(spark, tmp_path, backend, report):
    from pmf_spark.outputs import commit
    from pmf_spark.outputs.commit import AtomicOutput, SimulatedCrash

    steps = _commit_steps(spark, tmp_path, backend)
    assert "manifest" in steps and "unlocked" in steps
    outcomes = []
    for k, step in enumerate(steps):
        base = tmp_path / f"s{k}"
        base.mkdir()
        final = base / "out"
        _commit_once(spark, final, OLD)

        def crash(name, step=step):
            if name == step:
                raise SimulatedCrash(name)

        out = AtomicOutput(spark, str(final), job="test")
        _write(out, NEW)
        commit.FAULT = crash
        try:
            with pytest.raises(SimulatedCrash):
                out.commit({"tables": {}})
        finally:
            commit.FAULT = None
        after_crash = _state(final)
        if after_crash == "missing":
            # only without an atomic exchange, between its two renames: both complete,
            # beside the output, named by the run's token (the next run puts one back)
            assert backend != "exchange" and step == "previous-aside", (backend, step)
            assert _state(Path(short_local(out.previous))) == "old"
            assert _state(Path(short_local(out.staging))) == "new"
        else:
            assert after_crash in ("old", "new"), (backend, step, after_crash)
        _die(out)
        # the next run: recovers on opening the output, then aborts (writes nothing)
        with AtomicOutput(spark, str(final), job="test") as again:
            again.abort()
        recovered = _state(final)
        assert recovered in ("old", "new"), (backend, step, recovered)
        if after_crash == "new":
            assert recovered == "new"
        assert sorted(p.name for p in base.iterdir()) == ["out"], list(base.iterdir())
        outcomes.append(f"{step}:{after_crash}->{recovered}")
    report(f"commit kill test ({backend}): {len(steps)} steps, " + ", ".join(outcomes))


def test_a_crash_during_recovery_is_recovered_by_the_run_after(spark, tmp_path, monkeypatch,
                                                               report):
    """Two renames: killed between them, then killed again while recovering."""
    from pmf_spark.outputs import commit
    from pmf_spark.outputs.commit import AtomicOutput, SimulatedCrash
    from pmf_spark.storage import ops as fsops

    monkeypatch.setattr(fsops.LocalOps, "exchange", lambda self, a, b: False)
    results = []
    for recovery_step in ("recover-forward", "recover-remove-previous"):
        base = tmp_path / recovery_step
        base.mkdir()
        final = base / "out"
        _commit_once(spark, final, OLD)
        out = AtomicOutput(spark, str(final), job="test")
        _write(out, NEW)

        def crash_at(target):
            def hook(name):
                if name == target:
                    raise SimulatedCrash(name)
            return hook

        commit.FAULT = crash_at("previous-aside")
        with pytest.raises(SimulatedCrash):
            out.commit({})
        assert _state(final) == "missing"          # between the renames ...
        _die(out)
        commit.FAULT = crash_at(recovery_step)
        with pytest.raises(SimulatedCrash):
            AtomicOutput(spark, str(final), job="test")
        commit.FAULT = None
        lock = json.loads((base / ".out.pmf-lock").read_text())
        (base / ".out.pmf-lock").write_text(json.dumps({**lock, "pid": _dead_pid()}))
        with AtomicOutput(spark, str(final), job="test") as again:
            again.abort()
        assert _state(final) == "new" and sorted(p.name for p in base.iterdir()) == ["out"]
        results.append(recovery_step)
    report(f"recovery killed at {results}: the run after completed it each time")


def test_the_hostile_suite_has_at_least_80_cases(report):
    total = sum(COUNTS.values())
    report("hostile cases: " + ", ".join(f"{k} {v}" for k, v in COUNTS.items())
           + f"; {total} in all")
    assert total >= 80


def test_a_lock_of_an_exited_unreaped_process_is_stale(spark, tmp_path):
    """A driver killed with its JVM can linger as a zombie. Expected: its lock is
    taken over."""
    from pmf_spark.outputs.commit import AtomicOutput

    zombie = subprocess.Popen(["true"])
    time.sleep(0.3)                        # exited, not yet waited for
    try:
        _lock(tmp_path, pid=zombie.pid, proc_start=outlock._proc_start(zombie.pid))
        with AtomicOutput(spark, str(tmp_path / "out")) as out:
            out.write_text("a.txt", "new")
            out.commit()
    finally:
        zombie.wait()
    assert (tmp_path / "out" / "a.txt").read_text() == "new"
