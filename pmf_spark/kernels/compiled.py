"""Compiled (numba) row kernels: the Gram accumulation, right-hand side and solve of a
block's rows, fused so no per-row Gram matrix is ever stored.

Why compiled: an epoch is nearly all Gram accumulation (every entry adds its design
row's outer product to its row's Gram). numpy does that one row at a time with a BLAS
``syrk`` call of a few dozen rows, which runs at a few GFLOP/s; here each row's entries
are applied four at a time to a k_p x k_p accumulator (k padded to a multiple of 8, so
the inner loop vectorises) that stays in cache, then the row is solved in place by a
Cholesky factorisation and two triangular solves.

Everything here is an implementation of :mod:`pmf_spark.kernels.rows`' contracts (same
arguments, same results to ~1e-12 in float64); that module falls back to its numpy
code when numba is missing. JIT-compiled code is cached on disk (``NUMBA_CACHE_DIR``,
by default a per-user directory under the system's temporary directory, which
executors can write even when the package is shipped as a zip), in a directory named by
the hash of this file's source (:class:`ContentCacheLocator`), so a process compiles once
per machine and code version, not per task, epoch or application.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile

if "NUMBA_CACHE_DIR" not in os.environ:
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(
        tempfile.gettempdir(), f"pmf-spark-numba-{os.getuid() if hasattr(os, 'getuid') else 0}")

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba.core import caching  # noqa: E402


def _source_bytes(path: str) -> bytes:
    """This module's source, from a directory or from inside a zip (``.../x.zip/pmf_spark/
    kernels/compiled.py``, as spark-submit's ``--py-files`` ships it)."""
    if os.path.isfile(path):
        with open(path, "rb") as fh:
            return fh.read()
    parts = path.replace(os.sep, "/").split("/")
    for i, part in enumerate(parts):
        if part.endswith(".zip"):
            with zipfile.ZipFile("/".join(parts[:i + 1])) as z:
                return z.read("/".join(parts[i + 1:]))
    raise OSError(f"cannot read the source of {path}")


class ContentCacheLocator(caching._CacheLocator):
    """numba's cache locator for this module's kernels: ``NUMBA_CACHE_DIR`` /
    ``pmf_spark-<hash of this file's source>``, wherever the file was imported from.

    numba's own locators key the cache by the source file's *path*; spark-submit copies
    ``--py-files`` into a new per-application directory (and the driver imports from
    that copy once its session has started), so every application compiled the kernels
    again in every process. Keyed by content, they compile once per machine and code
    version (the source hash is also the freshness stamp)."""

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._digest = hashlib.sha256(_source_bytes(py_file)).hexdigest()
        self._cache_path = os.path.join(os.environ["NUMBA_CACHE_DIR"],
                                        f"pmf_spark-{self._digest[:16]}")

    def get_cache_path(self):
        return self._cache_path

    def get_source_stamp(self):
        return self._digest

    def get_disambiguator(self):
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):
        if getattr(py_func, "__module__", None) != __name__:
            return None                  # every other library keeps numba's own locators
        try:
            self = cls(py_func, py_file)
            self.ensure_cache_path()
        except (OSError, KeyError, zipfile.BadZipFile):
            return None                  # unreadable or unwritable: numba's locators decide
        return self


# the locator list lives on numba's cache-implementation base class (CacheImpl, or
# _CacheImpl in older releases); its subclasses share the list object
for _impl in [v for v in vars(caching).values()
              if isinstance(v, type) and "_locator_classes" in vars(v)]:
    _classes: list = vars(_impl)["_locator_classes"]
    if ContentCacheLocator not in _classes:
        _classes.insert(0, ContentCacheLocator)

#: compiled once per machine (cached on disk), vectorised with fast math, no GIL held
jit = numba.njit(cache=True, fastmath=True, nogil=True)


@jit
def _accumulate_plain(X, cols, targets, a, e, G, b):
    """G = X_I^T X_I and b = X_I^T t over entries a..e of one row (X padded): the
    entries' rows are applied four at a time to the accumulator."""
    kp = X.shape[1]
    t = a
    while t + 4 <= e:
        r0, r1, r2, r3 = X[cols[t]], X[cols[t + 1]], X[cols[t + 2]], X[cols[t + 3]]
        y0, y1, y2, y3 = targets[t], targets[t + 1], targets[t + 2], targets[t + 3]
        for i in range(kp):
            a0, a1, a2, a3 = r0[i], r1[i], r2[i], r3[i]
            b[i] += a0 * y0 + a1 * y1 + a2 * y2 + a3 * y3
            for j in range(kp):
                G[i, j] += a0 * r0[j] + a1 * r1[j] + a2 * r2[j] + a3 * r3[j]
        t += 4
    while t < e:
        r0 = X[cols[t]]
        y0 = targets[t]
        for i in range(kp):
            a0 = r0[i]
            b[i] += a0 * y0
            for j in range(kp):
                G[i, j] += a0 * r0[j]
        t += 1


@jit
def _accumulate_weighted(X, cols, targets, root_w, a, e, G, b, S):
    """As :func:`_accumulate_plain` with per-entry Gram weights w = root_w**2: the four
    rows are scaled into the scratch S (4, kp) first."""
    kp = X.shape[1]
    t = a
    while t < e:
        m = min(4, e - t)
        for q in range(m):
            row = X[cols[t + q]]
            w = root_w[t + q]
            y = targets[t + q]
            for i in range(kp):
                S[q, i] = row[i] * w
                b[i] += row[i] * y
        for q in range(m, 4):
            for i in range(kp):
                S[q, i] = 0.0
        for i in range(kp):
            a0, a1, a2, a3 = S[0, i], S[1, i], S[2, i], S[3, i]
            for j in range(kp):
                G[i, j] += a0 * S[0, j] + a1 * S[1, j] + a2 * S[2, j] + a3 * S[3, j]
        t += m


@jit
def _accumulate_row(X, cols, targets, root_w, a, e, G, b, S):
    """G = X_I^T W X_I and b = X_I^T t over entries a..e of one row."""
    kp = X.shape[1]
    for i in range(kp):
        b[i] = 0.0
        for j in range(kp):
            G[i, j] = 0.0
    if root_w.shape[0] > 0:
        _accumulate_weighted(X, cols, targets, root_w, a, e, G, b, S)
    else:
        _accumulate_plain(X, cols, targets, a, e, G, b)


@jit
def _cholesky_solve(A, b, k, x):
    """Solve A x = b for the leading k x k block of A in place (A's lower triangle
    becomes its Cholesky factor). Returns False when A is not positive definite."""
    for j in range(k):
        s = A[j, j]
        for m in range(j):
            s -= A[j, m] * A[j, m]
        if s <= 0.0:
            return False
        d = np.sqrt(s)
        A[j, j] = d
        for i in range(j + 1, k):
            s = A[i, j]
            for m in range(j):
                s -= A[i, m] * A[j, m]
            A[i, j] = s / d
    for i in range(k):                   # L y = b
        s = b[i]
        for m in range(i):
            s -= A[i, m] * x[m]
        x[i] = s / A[i, i]
    for i in range(k - 1, -1, -1):       # L^T x = y
        s = x[i]
        for m in range(i + 1, k):
            s -= A[m, i] * x[m]
        x[i] = s / A[i, i]
    return True


@jit
def ridge_rows_fused(indptr, cols, targets, root_w, X, k, reg, scale, base_gram, base_rhs,
                     gram_scale, x_out, fitted_out, failed):
    """Every row with entries: accumulate, add gram_scale, base terms and s_i * reg,
    solve. Rows whose system is not positive definite are listed in ``failed`` (the
    caller solves those by least squares) and counted in the return value."""
    kp = X.shape[1]
    n_rows = indptr.shape[0] - 1
    G = np.empty((kp, kp), dtype=X.dtype)
    b = np.empty(kp, dtype=X.dtype)
    S = np.empty((4, kp), dtype=X.dtype)
    A = np.empty((k, k))
    rhs = np.empty(k)
    x = np.empty(k)
    # B and b are given independently (implicit ALS has B only): an empty array is 0
    has_gram = base_gram.shape[0] > 0
    has_rhs = base_rhs.shape[0] > 0
    n_failed = 0
    for r in range(n_rows):
        a, e = indptr[r], indptr[r + 1]
        if a == e:
            continue
        _accumulate_row(X, cols, targets, root_w, a, e, G, b, S)
        for i in range(k):
            rhs[i] = b[i] + (base_rhs[i] if has_rhs else 0.0)
            for j in range(k):
                A[i, j] = gram_scale * G[i, j] + (base_gram[i, j] if has_gram else 0.0)
            A[i, i] += scale[r] * reg[i]
        if not _cholesky_solve(A, rhs, k, x):
            failed[n_failed] = r
            n_failed += 1
            continue
        for i in range(k):
            x_out[r, i] = x[i]
        if fitted_out.shape[0] > 0:
            for t in range(a, e):
                row = X[cols[t]]
                s = 0.0
                for i in range(k):
                    s += row[i] * x[i]
                fitted_out[t] = s
    return n_failed


@jit
def gram_rows(indptr, cols, targets, root_w, X, rows, gram_out, rhs_out):
    """The Gram matrices and right-hand sides of ``rows`` (the models that need the
    matrices themselves: variational and Gibbs rows)."""
    kp = X.shape[1]
    k = gram_out.shape[1]
    G = np.empty((kp, kp), dtype=X.dtype)
    b = np.empty(kp, dtype=X.dtype)
    S = np.empty((4, kp), dtype=X.dtype)
    for n in range(rows.shape[0]):
        r = rows[n]
        _accumulate_row(X, cols, targets, root_w, indptr[r], indptr[r + 1], G, b, S)
        for i in range(k):
            rhs_out[n, i] = b[i]
            for j in range(k):
                gram_out[n, i, j] = G[i, j]


def padded(design: np.ndarray, dtype) -> np.ndarray:
    """The design with its columns padded to a multiple of 8 (zeros), C-contiguous."""
    n, k = design.shape
    kp = max(8, -(-k // 8) * 8)
    out = np.zeros((n, kp), dtype=dtype)
    out[:, :k] = design
    return out


def warm_up() -> None:
    """Compile (or load from the disk cache) every specialisation the job uses."""
    for dt in (np.float64, np.float32):
        X = padded(np.ones((3, 2)), dt)
        indptr = np.array([0, 2], np.int64)
        cols = np.array([0, 2], np.int32)
        t = np.ones(2, dt)
        x = np.zeros((1, 2))
        for w in (np.zeros(0, dt), np.ones(2, dt)):
            ridge_rows_fused(indptr, cols, t, w, X, 2, np.ones(2), np.ones(1), np.zeros((0, 0)),
                             np.zeros(0), 1.0, x, np.zeros(0), np.zeros(1, np.int64))
            ridge_rows_fused(indptr, cols, t, w, X, 2, np.ones(2), np.ones(1), np.eye(2),
                             np.ones(2), 0.5, x, np.zeros(2), np.zeros(1, np.int64))
            gram_rows(indptr, cols, t, w, X, np.zeros(1, np.int64), np.zeros((1, 2, 2)),
                      np.zeros((1, 2)))
