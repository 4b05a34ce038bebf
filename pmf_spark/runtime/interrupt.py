"""Ctrl-C and SIGTERM during a run, without breaking the connection to the JVM.

PySpark's own SIGINT handler calls into the JVM from inside the signal handler,
which breaks the socket the interrupted call was using (a screen of tracebacks, exit
1). :func:`watch` replaces it: the first signal only records the request and cancels
the running Spark jobs from another thread, so the interrupted action fails cleanly;
:func:`check` (called between epochs and before committing) stops the run at the next
safe point. A second Ctrl-C raises KeyboardInterrupt at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable

_REQUESTED = threading.Event()
_STATE: dict = {"spark": None}


def requested() -> bool:
    """Whether the run being watched (or the last one) was asked to stop."""
    return _REQUESTED.is_set()


def clear() -> None:
    _REQUESTED.clear()


def check() -> None:
    """Raise KeyboardInterrupt when an interrupt was requested."""
    if _REQUESTED.is_set():
        raise KeyboardInterrupt


def _cancel() -> None:
    spark = _STATE["spark"]
    if spark is not None:
        with contextlib.suppress(Exception):
            spark.sparkContext.cancelAllJobs()


def _handler(signum, frame):
    if _REQUESTED.is_set() or _STATE["spark"] is None:
        raise KeyboardInterrupt
    _REQUESTED.set()
    threading.Thread(target=_cancel, name="pmf-spark interrupt", daemon=True).start()


def watch(spark) -> Callable[[], None]:
    """Handle SIGINT and SIGTERM as above while ``spark`` runs; returns a function that
    puts the previous handlers back."""
    _REQUESTED.clear()
    _STATE["spark"] = spark
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):      # not the main thread
            previous[sig] = signal.signal(sig, _handler)

    def restore() -> None:
        _STATE["spark"] = None
        for sig, old in previous.items():
            with contextlib.suppress(ValueError):
                signal.signal(sig, old)
    return restore
