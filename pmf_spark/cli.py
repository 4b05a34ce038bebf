"""Small pieces the spark-submit entry points in ``jobs/`` share: one-line usage
errors with a "did you mean" and no silent abbreviations, the log format, one line
per error kind with its exit code, Ctrl-C and SIGTERM as one line and exit 130, and
the argument check ``spark-submit.sh`` runs in plain Python before the JVM starts::

    python -m pmf_spark.cli check jobs/train_pmf.py --rank 0 ...

which exits 0 to go on, :data:`CHECK_DONE` when the job has nothing more to do
(``--help``, ``--print-config``), or the job's exit code for a bad argument.

The skeleton every job in ``jobs/`` is: :func:`check_job` (its ``check_args``: the
checks that need no Spark) and :func:`run_job` (its ``main``: parse, log, a
:class:`JobRun` that starts the SparkSession when first asked and stops it only if it
started it, Ctrl-C and errors as one line); a job supplies its parser, its checks and
its body.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib.util
import logging
import os
import re
import signal
import sys
import warnings
from collections.abc import Callable

from .errors import Interrupted, PMFError

#: ``check`` exit status meaning "handled, exit 0 without starting Spark"
CHECK_DONE = 10


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2, a mistyped
    flag gets a "did you mean", and long flags are never abbreviated."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def _suggest(self, message: str) -> str:
        m = re.match(r"unrecognized arguments: (.*)", message)
        if not m:
            return ""
        flags = [a for a in self._option_string_actions if a.startswith("--")]
        for token in m.group(1).split():
            if token.startswith("-"):
                near = difflib.get_close_matches(token.split("=", 1)[0], flags, n=1,
                                                 cutoff=0.6)
                if near:
                    return f" (did you mean {near[0]}?)"
        return ""

    def error(self, message):
        self.exit(2, f"error: {message}{self._suggest(message)} (see --help)\n")


def setup_logging(verbose: bool = False) -> None:
    """Progress lines on stderr as ``HH:MM:SS pmf-spark  message``; library
    warnings (version notices from pandas/pyarrow/pyspark) only with ``verbose``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s pmf-spark  %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("pmf_spark")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not verbose:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)


def report_error(exc: BaseException) -> int:
    """Print a known error as one line on stderr; its exit code (see
    :mod:`pmf_spark.errors`)."""
    print(f"error: {exc}", file=sys.stderr)
    return int(getattr(exc, "exit_code", 1))


def _terminate(signum, frame):
    raise KeyboardInterrupt


def announce_driver() -> None:
    """Tell ``spark-submit.sh`` (``$PMF_SPARK_DRIVER_PIDFILE``) which process is the
    Python driver, and take Ctrl-C here even when the launcher ignores it."""
    pidfile = os.environ.get("PMF_SPARK_DRIVER_PIDFILE")
    if pidfile:
        with contextlib.suppress(OSError):
            with open(pidfile, "w") as fh:
                fh.write(f"{os.getpid()}\n")
    with contextlib.suppress(ValueError):        # not the main thread
        signal.signal(signal.SIGINT, signal.default_int_handler)


def run_guarded(body: Callable[[], int], output: Callable[[], str | None]) -> int:
    """Run a job's body: known errors and the failures a person causes (see
    :func:`pmf_spark.runtime.failures.user_failure`) as one line with their exit code;
    Ctrl-C or SIGTERM as ``interrupted; <output> was left as it was`` and 130 (once
    the body has a session, :func:`pmf_spark.runtime.interrupt.watch` handles them)."""
    from pmf_spark.runtime import interrupt

    interrupt.clear()
    previous = None
    with contextlib.suppress(ValueError):
        previous = signal.signal(signal.SIGTERM, _terminate)

    def interrupted() -> int:
        where = output()
        return report_error(Interrupted(
            f"interrupted; {where} was left as it was" if where else "interrupted"))

    try:
        return body()
    except KeyboardInterrupt:
        return interrupted()
    except PMFError as exc:
        return interrupted() if interrupt.requested() else report_error(exc)
    except Exception as exc:
        if interrupt.requested():        # the action a cancel interrupted
            return interrupted()
        from pmf_spark.runtime.failures import user_failure

        known = user_failure(exc)
        if known is None:
            raise
        return report_error(known)
    finally:
        if previous is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, previous)


def session(app: str, verbose: bool, *, log_start: bool = True,
            workers_python: bool = False):
    """A job's SparkSession (its settings come from spark-submit and conf/).
    ``log_start``: log its start and how long it took; ``workers_python``: the Python
    workers use this interpreter unless PYSPARK_PYTHON names another (for a command
    run with plain Python, whose interpreter has numpy and pandas)."""
    import time

    from pyspark.sql import SparkSession

    if workers_python:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    log = logging.getLogger("pmf_spark")
    t0 = time.perf_counter()
    if log_start:
        log.info("starting the Spark session ...")
    spark = SparkSession.builder.appName(app).getOrCreate()
    if not verbose:
        spark.sparkContext.setLogLevel("ERROR")
    if log_start:
        sc = spark.sparkContext
        log.info("Spark %s ready in %.1fs: master %s, %d core(s)", spark.version,
                 time.perf_counter() - t0, sc.master, sc.defaultParallelism)
    return spark


class JobRun:
    """One run of a job: its parsed ``args`` and the SparkSession, started on first
    use (:meth:`spark`) unless the caller passed one, and stopped at :meth:`close`
    only if this run started it."""

    def __init__(self, app: str, args: argparse.Namespace, spark=None, **session_options):
        self.app, self.args = app, args
        self._spark, self._own = spark, False
        #: :func:`session`'s options for this job
        self.session_options = session_options
        #: what the job writes, for the "interrupted; X was left as it was" line
        self.output: str | None = None

    @property
    def has_session(self) -> bool:
        return self._spark is not None

    @contextlib.contextmanager
    def spark(self):
        """The session, with Ctrl-C and SIGTERM cancelling its running jobs."""
        from pmf_spark.runtime import interrupt

        if self._spark is None:
            self._spark = session(self.app, getattr(self.args, "verbose", False),
                                  **self.session_options)
            self._own = True
        restore = interrupt.watch(self._spark)
        try:
            yield self._spark
        finally:
            restore()

    def close(self) -> None:
        if self._own and self._spark is not None:
            self._spark.stop()
            self._spark = None


def _parsed(build_parser: Callable[[], argparse.ArgumentParser], argv: list[str] | None):
    try:
        return build_parser().parse_args(argv), None
    except SystemExit as exc:  # --help, or a usage error already printed
        return None, int(exc.code or 0)


def check_job(build_parser: Callable[[], argparse.ArgumentParser],
              checks: Callable[[argparse.Namespace], int | None],
              argv: list[str] | None) -> int | None:
    """A job's ``check_args``: parse ``argv`` and run ``checks(args)`` (which need no
    Spark); None to go on, else the exit code (0 after --help, a known error as one
    line). spark-submit.sh runs it before starting the JVM."""
    args, code = _parsed(build_parser, argv)
    if args is None:
        return code
    try:
        return checks(args)
    except PMFError as exc:
        return report_error(exc)


def run_job(app: str, build_parser: Callable[[], argparse.ArgumentParser],
            body: Callable[[JobRun], int], argv: list[str] | None, spark=None,
            **session_options) -> int:
    """A job's ``main``: parse, set up logging, run ``body(run)`` guarded (known errors
    as one line, Ctrl-C as ``interrupted; <run.output> was left as it was`` and 130);
    the exit code. ``spark``: a session to use (and leave running), for embedding;
    ``session_options``: :func:`session`'s, for the one the run starts."""
    args, code = _parsed(build_parser, argv)
    if args is None:
        return int(code or 0)
    setup_logging(getattr(args, "verbose", False))
    announce_driver()
    run = JobRun(app, args, spark, **session_options)
    try:
        return run_guarded(lambda: body(run), lambda: run.output)
    finally:
        run.close()


def inputs_on_this_machine() -> bool:
    """Whether a scheme-less path names a file on this machine: the master is local and
    nothing could make another filesystem (HDFS) the default (``spark-submit.sh`` says so
    in ``PMF_SPARK_LOCAL_MASTER``: a local master, its own properties, no ``--conf`` of a
    master or ``fs.defaultFS``, no spark-env.sh or core-site.xml in Spark's conf
    directory), and no HADOOP_CONF_DIR or YARN_CONF_DIR. ``file:`` paths are on this
    machine always."""
    return (os.environ.get("PMF_SPARK_LOCAL_MASTER") == "1"
            and not os.environ.get("HADOOP_CONF_DIR") and not os.environ.get("YARN_CONF_DIR"))


def check_inputs(job, paths: dict[str, str | None] | None = None) -> None:
    """Before Spark starts: the job's input files on this machine exist, and the ratings'
    (and the test split's) first line has the columns the options name, so a typo costs
    a second, not a JVM start (:func:`pmf_spark.inputs.read.check_local_input`). ``paths``: more
    inputs that must exist ({role: path}); ``job``: a JobConfig, or None."""
    from pmf_spark.inputs.read import check_local_input

    here = inputs_on_this_machine()
    if job is not None:
        opts = dict(user_col=job.user_col, item_col=job.item_col, rating_col=job.rating_col,
                    timestamp_col=job.timestamp_col, sep=job.sep, feedback=job.feedback,
                    value_col=job.value_col)
        for role in ("ratings", "test"):
            path = getattr(job, role)
            if path is not None:
                check_local_input(path, job.format, role=role, on_local_fs=here, **opts)
        paths = {"exclude-items": job.exclude_items, "candidates": job.candidates,
                 "warm-start": job.warm_start, **(paths or {})}
    for role, path in (paths or {}).items():
        if path is not None:
            check_local_input(path, role=role, on_local_fs=here, columns=False)


def _defines_check(app: str) -> bool:
    """Whether the file defines ``check_args`` at its top level (read, not run: a
    script that does its work on import must not run twice)."""
    import ast

    try:
        with open(app, encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
    except (OSError, SyntaxError, UnicodeDecodeError):
        return False
    return any(isinstance(n, ast.FunctionDef) and n.name == "check_args" for n in tree.body)


def check_job_args(app: str, argv: list[str]) -> int:
    """Run the job file's ``check_args(argv)`` without Spark: 0 to go on,
    :data:`CHECK_DONE` when it handled everything, else its exit code."""
    if not (app.endswith(".py") and os.path.isfile(app)) or not _defines_check(app):
        return 0        # not one of the jobs: run it as it is
    sys.path.insert(0, os.path.dirname(os.path.abspath(app)))
    spec = importlib.util.spec_from_file_location("_pmf_spark_job", app)
    if spec is None or spec.loader is None:
        return 0
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit):  # it needs more than plain Python at import: let it run
        return 0
    check = getattr(module, "check_args", None)
    if check is None:
        return 0
    code = check(argv)
    if code is None:
        return 0
    return CHECK_DONE if code == 0 else int(code)


def _main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "check":
        return check_job_args(argv[1], argv[2:])
    print("usage: python -m pmf_spark.cli check JOB.py [job arguments]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))


#: what a flag's value is, where its type does not say it (int: N, float: X)
METAVARS = {"ratings": "PATH", "ratings_table": "TABLE", "test": "PATH", "sep": "SEP",
            "output": "DIR", "output_table_prefix": "PREFIX", "exclude_items": "PATH",
            "candidates": "PATH", "users_per_item_items": "PATH", "checkpoint_dir": "DIR",
            "warm_start": "DIR", "eval_k": "K[,K...]", "top_k": "K", "rank": "D",
            "ranking_rank": "D", "lambda_u": "LAMBDA", "lambda_v": "LAMBDA",
            "lambda_bias": "LAMBDA", "ranking_lambda": "LAMBDA", "rating_min": "RATING",
            "rating_max": "RATING", "missing_rating": "RATING",
            "relevance_threshold": "RATING", "resident_mb": "MB", "seed": "SEED",
            "split_seed": "SEED"}


def metavar(name: str, typ) -> str:
    """The placeholder of a flag's value in --help: what it is (PATH, COL, LAMBDA, ...)
    rather than the last word of its name (--burn-in IN, --warm-start START)."""
    if name in METAVARS:
        return METAVARS[name]
    if name.endswith("_col"):
        return "COL"
    return {int: "N", float: "X"}.get(typ, "VALUE")


def said_default(name: str, doc: str, default) -> str:
    """' (default: ...)' after a flag's help, unless the help already says what happens
    without the flag; parameters implicit-feedback runs set otherwise say both."""
    if default is None or "default" in doc.lower():
        return ""
    from pmf_spark.config.files import IMPLICIT_DEFAULTS

    implicit = IMPLICIT_DEFAULTS.get(name)
    if implicit is not None and implicit != default:
        return f" (default: {default}; {implicit} with --feedback implicit)"
    return f" (default: {default})"


def type_of(annotation: str):
    """The argparse type of a parameter's annotation ('int', 'float | None', ...)."""
    for name, typ in (("bool", bool), ("int", int), ("float", float)):
        if annotation.startswith(name):
            return typ
    return str


def job_flag(group, name: str, choices=None) -> None:
    """``--name`` of a :class:`~pmf_spark.config.params.JobConfig` field on ``group``, with the
    training job's help text and placeholder, and no default of its own (None: the
    configuration's)."""
    from pmf_spark.config.params import JobConfig

    f = JobConfig.__dataclass_fields__[name]
    doc = f.metadata.get("doc", "")
    typ = type_of(str(f.type))
    group.add_argument("--" + name.replace("_", "-"), type=typ, choices=choices,
                       metavar=None if choices else metavar(name, typ),
                       help=doc + said_default(name, doc, f.default))
