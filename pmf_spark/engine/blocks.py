"""Block functions for ``groupBy("block").applyInPandas``: pandas in, pandas out.

Every function here is top-level and pure: ``(key, pdf) -> pdf``, its parameters
bound by ``functools.partial`` and holding only primitives, numpy arrays, frozen
payload dataclasses or a Broadcast of them (:func:`unwrap` reads either). Output
columns follow the schema constants below. The functions carry no type annotations
on purpose: PySpark tries to read an eval type from annotations and warns on every
call when given a partial. No pyspark import: these run in the Python workers.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from pmf_spark.engine.layout import (
    TEST,
    VALIDATION,
    decode_chunk,
    iter_chunks,
    limit_blas_threads,
    to_bytes,
)
from pmf_spark.kernels.rows import ReadOut, kernel_backend, kernel_compile_seconds, row_dots

SOLVED_SCHEMA = (
    "block int, chunk int, task int, row_ids binary, factors binary, variances binary, "
    "n_train long, sse double, sae double, sse_z double, n_test long, test_sse double, "
    "test_sae double, n_val long, val_sse double, val_sae double, esse double, "
    "missing boolean, backend string, compile_s double, kernel_s double, task_s double")
SOLVED_COLUMNS = [c.strip().split(" ")[0] for c in SOLVED_SCHEMA.split(",")]
#: the summed statistics of a half-step
SUMS = ("n_train", "sse", "sae", "sse_z", "n_test", "test_sse", "test_sae", "n_val",
        "val_sse", "val_sae", "esse")

EVAL_SCHEMA = ("block int, chunk int, n_train long, train_sse double, train_sae double, "
               "n_test long, test_sse double, test_sae double")
EVAL_COLUMNS = [c.strip().split(" ")[0] for c in EVAL_SCHEMA.split(",")]

DIAG_SCHEMA = ("block int, chunk int, pred_hist binary, true_hist binary, user_sse binary, "
               "user_n binary, base_sse double, pred_sum binary, pred_sq binary")
DIAG_COLUMNS = [c.strip().split(" ")[0] for c in DIAG_SCHEMA.split(",")]


def unwrap(shared):
    """The value of a Broadcast, or the object itself (tests pass plain values)."""
    return shared.value if hasattr(shared, "value") else shared


def error_sums(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(sum of squared errors, sum of absolute errors)."""
    err = pred - truth
    return float(err @ err), float(np.abs(err).sum())


def _record(key, row, task: int) -> dict:
    rec: dict = {name: 0.0 for name in SUMS}
    rec.update(block=int(key[0]), chunk=int(row["chunk"]), task=task, row_ids=b"",
               factors=b"", variances=b"", n_train=0, n_test=0, n_val=0, missing=False,
               backend="", compile_s=0.0)
    return rec


def rating_metrics(rec: dict, c, payload, sol) -> None:
    """Training, test and validation error sums (rating units) of a solved chunk,
    and the z-unit squared error of the objective."""
    ro: ReadOut = payload.readout
    z_hat = payload.fitted_z(c, sol.fitted)
    rec["sse"], rec["sae"] = error_sums(ro.to_rating(z_hat), c.vals)
    rec["sse_z"] = float(((ro.to_z(c.vals) - z_hat) ** 2).sum())
    if c.test_cols.size:
        pred = ro.to_rating(payload.predict_z(c.test_cols, sol.x[c.test_rows]))
        for kind, prefix in ((TEST, "test"), (VALIDATION, "val")):
            sel = c.test_kind == kind
            rec[f"n_{prefix}"] = int(sel.sum())
            rec[f"{prefix}_sse"], rec[f"{prefix}_sae"] = error_sums(pred[sel],
                                                                    c.test_vals[sel])


def solve_block(key, pdf, *, shared, kernels, widths, metrics, variances, val_dtype,
                resident=None, fitted=None):
    """Run every task's kernel on every chunk of one block (one output row per chunk
    and task, task = position in ``kernels``).

    ``shared``: a Broadcast (or tuple) of the tasks' payloads. ``fitted[t]``: ask task
    t's kernel for its fitted values (and its model-specific extra sum; default: as
    ``metrics``); ``metrics[t]``: compute task t's rating error sums from its solution;
    ``variances[t]``: return its rows' variances. With ``resident`` (see
    :mod:`pmf_spark.engine.layout`) the input may be light, and a chunk this worker does not
    hold comes back as one row with ``missing`` set.
    """
    t_task = time.perf_counter()
    limit_blas_threads()
    payloads = unwrap(shared)
    fitted = metrics if fitted is None else fitted
    out = []
    in_kernels = 0.0
    for row, c in iter_chunks(pdf, val_dtype, resident):
        if c is None:
            rec = _record(key, row, 0)
            rec["missing"] = True
            out.append(rec)
            continue
        for t, (kernel, payload) in enumerate(zip(kernels, payloads)):
            t0 = time.perf_counter()
            sol = kernel(c, payload, bool(fitted[t] or metrics[t]))
            in_kernels += time.perf_counter() - t0
            rec = _record(key, row, t)
            n = c.row_ids.size
            full = np.zeros((n, widths[t]))
            full[:, :sol.x.shape[1]] = sol.x
            rec.update(row_ids=to_bytes(c.row_ids), factors=to_bytes(full),
                       n_train=int(c.cols.size), esse=sol.esse, backend=kernel_backend(),
                       compile_s=kernel_compile_seconds())
            if variances[t]:
                var = np.zeros((n, widths[t]))
                var[:, :sol.var.shape[1]] = sol.var
                rec["variances"] = to_bytes(var)
            if metrics[t]:
                rating_metrics(rec, c, payload, sol)
            out.append(rec)
    if out:     # where a task's time went (the first row of the task carries it)
        out[0]["kernel_s"], out[0]["task_s"] = in_kernels, time.perf_counter() - t_task
    return pd.DataFrame(out, columns=SOLVED_COLUMNS)


def _fixed_model(shared):
    """(user design, user offset, item design, item offset, read-out) of a fixed model,
    designs (n, r) whose row dot products are the predictions in z units minus the
    offsets."""
    return unwrap(shared)


def evaluate_block(key, pdf, *, shared, val_dtype):
    """Training and test error sums of a fixed model over one packed item block."""
    limit_blas_threads()
    ud, uo, idz, io, ro = _fixed_model(shared)
    out = []
    for _, row in pdf.iterrows():
        c = decode_chunk(row, val_dtype)
        rows = c.row_ids
        owner = rows[c.entry_rows()]
        rec: dict = {"block": int(key[0]), "chunk": int(row["chunk"])}
        for prefix, users, items, truth in (
                ("train", c.cols, owner, c.vals),
                ("test", c.test_cols, rows[c.test_rows], c.test_vals)):
            z = row_dots(ud[users], idz[items]) + uo[users] + io[items]
            sel = np.ones(truth.size, bool) if prefix == "train" else c.test_kind == TEST
            rec[f"n_{prefix}"] = int(sel.sum())
            rec[f"{prefix}_sse"], rec[f"{prefix}_sae"] = error_sums(ro.to_rating(z[sel]),
                                                                    truth[sel])
        out.append(rec)
    return pd.DataFrame(out, columns=EVAL_COLUMNS)


def diagnose_block(key, pdf, *, shared, bins, n_users, val_dtype):
    """Test-split diagnostics of a fixed model over one packed item block: histograms
    of predicted and true ratings over ``bins`` (edges), the sum and sum of squares of
    the predictions per true-rating bin, and per-user squared error sums and counts
    (n_users,), for the report."""
    limit_blas_threads()
    ud, uo, idz, io, ro = _fixed_model(shared)
    edges = np.asarray(bins, dtype=np.float64)
    nb = edges.size - 1
    out = []
    for _, row in pdf.iterrows():
        c = decode_chunk(row, val_dtype)
        sel = c.test_kind == TEST
        users = c.test_cols[sel]
        items = c.row_ids[c.test_rows[sel]]
        truth = c.test_vals[sel]
        pred = ro.to_rating(row_dots(ud[users], idz[items]) + uo[users] + io[items])
        err2 = (pred - truth) ** 2
        tbin = np.clip(np.searchsorted(edges, truth, side="right") - 1, 0, nb - 1)
        out.append({
            "block": int(key[0]), "chunk": int(row["chunk"]),
            "pred_hist": to_bytes(np.histogram(np.clip(pred, edges[0], edges[-1]), edges)[0]),
            "true_hist": to_bytes(np.histogram(np.clip(truth, edges[0], edges[-1]), edges)[0]),
            "user_sse": to_bytes(np.bincount(users, weights=err2, minlength=n_users)),
            "user_n": to_bytes(np.bincount(users, minlength=n_users).astype(np.int64)),
            "base_sse": float(((truth - ro.mu) ** 2).sum()),
            "pred_sum": to_bytes(np.bincount(tbin, weights=pred, minlength=nb)),
            "pred_sq": to_bytes(np.bincount(tbin, weights=pred ** 2, minlength=nb)),
        })
    return pd.DataFrame(out, columns=DIAG_COLUMNS)
