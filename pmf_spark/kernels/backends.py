"""Which row kernels run: the compiled ones (:mod:`pmf_spark.kernels.compiled`, numba) or the
numpy ones in :mod:`pmf_spark.kernels.rows`. Loading is tried once per process; what ran
and what compiling cost are reported back to the driver by the block functions."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

#: ``kernel`` settings: 'auto' compiles with numba when it can be loaded, else numpy
BACKENDS = ("auto", "numba", "numpy")


class _Compiled:
    """This process's compiled kernels (:mod:`pmf_spark.kernels.compiled`), loaded on first use:
    the module, or None with the reason numba could not be loaded, and the seconds the
    first compilation (or load from the disk cache) took."""

    module: Any = None
    error: str | None = None
    seconds = 0.0
    tried = False
    last_backend = "numpy"


def compiled(backend: str = "auto"):
    """The compiled kernels for ``backend``: the module, or None for numpy. 'numba'
    raises RuntimeError when they cannot be loaded; 'auto' falls back to numpy."""
    if backend == "numpy":
        return None
    if not _Compiled.tried:
        _Compiled.tried = True
        t0 = time.perf_counter()
        try:
            from pmf_spark.kernels import compiled as module

            module.warm_up()
            _Compiled.module = module
        except Exception as exc:  # numba missing, or it cannot compile on this machine
            _Compiled.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        _Compiled.seconds = time.perf_counter() - t0
    if _Compiled.module is None and backend == "numba":
        raise RuntimeError(f"the numba kernels cannot be loaded here ({_Compiled.error}); "
                           f"install numba or run with --kernel numpy")
    return _Compiled.module


def kernels_cached() -> bool:
    """Whether numba's disk cache already holds the compiled kernels, where numba itself
    looks for them (the kernels' locator: ``NUMBA_CACHE_DIR`` / a directory named by the
    source's hash, see :class:`pmf_spark.kernels.compiled.ContentCacheLocator`): an index file of
    every compiled kernel of :mod:`pmf_spark.kernels.compiled`."""
    import glob
    import os

    import numba

    from pmf_spark.kernels import compiled as module

    kernels = [f for f in vars(module).values()
               if isinstance(f, numba.core.registry.CPUDispatcher)]
    for f in kernels:
        cache = getattr(f, "_cache", None)
        path = getattr(cache, "_cache_path", None)
        name = getattr(f, "__name__", "")
        if not path or not glob.glob(os.path.join(str(path), f"*.{name}-*.nbi")):
            return False
    return bool(kernels)


def prepare_kernels(backend: str = "auto", say=None) -> float:
    """Compile (or load) the compiled kernels in this process before the first Spark
    job, so that on one machine (local mode) the workers load them from the disk cache;
    ``say`` (a callable taking one line) is told when compiling is needed, which happens
    on the first run on a machine only. Returns the seconds it took (0 for numpy)."""
    if backend == "numpy" or _Compiled.tried:
        return 0.0
    try:
        import numba  # noqa: F401
    except Exception:  # numba missing: the numpy kernels run, the engine says so
        return 0.0
    from pmf_spark.kernels import compiled as _  # noqa: F401  (sets NUMBA_CACHE_DIR before the check)

    if say is not None and not kernels_cached():
        say("compiling the row kernels (first run on this machine only; cached afterwards)")
    compiled("auto")
    return kernel_compile_seconds()


def kernel_backend() -> str:
    """What the last row kernel of this process ran on ('numba' or 'numpy', with the
    reason numba could not be loaded when it fell back)."""
    if _Compiled.last_backend == "numpy" and _Compiled.error:
        return f"numpy ({_Compiled.error})"
    return _Compiled.last_backend


def kernel_compile_seconds() -> float:
    """Seconds this process spent compiling (or loading) the compiled kernels, once:
    reported by the first call after it, 0 afterwards."""
    s, _Compiled.seconds = _Compiled.seconds, 0.0
    return s


_PADDED: list = [None, None, None]      # (design, dtype, padded): one per process


def note_backend(compiled_ran: bool) -> None:
    _Compiled.last_backend = "numba" if compiled_ran else "numpy"


def padded_design(C, design: np.ndarray, gdt) -> np.ndarray:
    """The compiled kernels' padded copy of a fixed side, made once per broadcast value
    (the same design arrives for every chunk of a block)."""
    if _PADDED[0] is not design or _PADDED[1] != gdt:
        _PADDED[:] = [design, gdt, C.padded(design, gdt)]
    return _PADDED[2]
