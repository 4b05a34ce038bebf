"""Block functions for ``groupBy("block").applyInPandas``: pandas in, pandas out.

Every function here is top-level and pure: ``(key, pdf) -> pdf``, with its
parameters bound by ``functools.partial`` and holding only primitives, numpy
arrays or a Broadcast handle. Output columns follow the schema constants below.
The block functions carry no type annotations on purpose: PySpark tries to read
an eval type from annotations and warns on every call when given a partial.

The packed layout
-----------------
At setup each block's ratings are packed, once, into a few rows (chunks) of
binary columns: a chunk holds complete rows in CSR form (``row_ids`` int32,
``indptr`` int64, ``cols`` int32, ``vals`` float32 or float64 raw ratings) and,
on the item side, that chunk's held-out ratings in COO form (``test_rows``
local row position int32, ``test_cols`` int32, ``test_vals``, ``test_kind``
int8: 1 test, 2 validation).
Feeding Python a handful of large binary values per epoch instead of one
Arrow row per rating is what makes an epoch cheap (see SPARK-NOTES).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pandas as pd

from .solvers import ridge_solve_csr, to_rating

PACKED_SCHEMA = (
    "block int, chunk int, n_rows int, nnz long, n_test long, row_ids binary, indptr binary, "
    "cols binary, vals binary, test_rows binary, test_cols binary, test_vals binary, "
    "test_kind binary")
PACKED_COLUMNS = [c.strip().split(" ")[0] for c in PACKED_SCHEMA.split(",")]

SOLVED_SCHEMA = (
    "block int, chunk int, row_ids binary, factors binary, n_train long, sse double, sae double, "
    "sse_z double, n_test long, test_sse double, test_sae double, n_val long, val_sse double, "
    "val_sae double, variances binary, esse double, missing boolean")

#: held-out entry kinds in the packed layout
TEST, VALIDATION = 1, 2
SOLVED_COLUMNS = [c.strip().split(" ")[0] for c in SOLVED_SCHEMA.split(",")]

_blas_limited = False


def limit_blas_threads() -> None:
    """Cap BLAS at one thread in this (worker) process, once: Spark already runs
    one task per core, more BLAS threads only oversubscribe the cores."""
    global _blas_limited
    if not _blas_limited:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
        _blas_limited = True


def _b(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def pack_block(key, pdf, *, chunk_ratings, val_dtype, with_test, trained_rows_only=False):
    """Pack one block's ratings into CSR chunks.

    Input columns: ``row`` (int, dense index of the side being solved), ``col``
    (int, dense index on the fixed side), ``rating``, and ``kind`` when
    ``with_test`` (0 train, 1 test, 2 validation). Rows appear once per chunk,
    sorted; a row with only held-out ratings is kept with zero training entries
    so its held-out ratings have a home -- unless ``trained_rows_only``, which drops
    such rows (the row set is then that of the training ratings).
    """
    block = int(key[0])
    rows = pdf["row"].to_numpy(dtype=np.int64)
    cols = pdf["col"].to_numpy(dtype=np.int64)
    vals = pdf["rating"].to_numpy(dtype=np.float64)
    kind = pdf["kind"].to_numpy(dtype=np.int8) if with_test else np.zeros(rows.size, np.int8)
    if trained_rows_only:
        keep = np.isin(rows, rows[kind == 0])
        rows, cols, vals, kind = rows[keep], cols[keep], vals[keep], kind[keep]
    order = np.lexsort((cols, rows))
    rows, cols, vals, kind = rows[order], cols[order], vals[order], kind[order]
    row_ids, first = np.unique(rows, return_index=True)
    bounds = np.append(first, rows.size)                  # entries of row r: bounds[r]:bounds[r+1]
    vdt = np.dtype(val_dtype)
    out = []
    start = 0
    while start < row_ids.size:
        # whole rows, up to chunk_ratings entries (at least one row)
        limit = bounds[start] + chunk_ratings
        stop = int(np.searchsorted(bounds, limit, side="right")) - 1
        stop = min(max(stop, start + 1), row_ids.size)
        sl = slice(bounds[start], bounds[stop])
        c_rows, c_cols, c_vals, c_kind = rows[sl], cols[sl], vals[sl], kind[sl]
        local = np.searchsorted(row_ids[start:stop], c_rows)
        tr = c_kind == 0
        held = ~tr
        indptr = np.zeros(stop - start + 1, dtype=np.int64)
        np.cumsum(np.bincount(local[tr], minlength=stop - start), out=indptr[1:])
        out.append({
            "block": block, "chunk": len(out), "n_rows": stop - start,
            "nnz": int(tr.sum()), "n_test": int(held.sum()),
            "row_ids": _b(row_ids[start:stop].astype(np.int32)),
            "indptr": _b(indptr),
            "cols": _b(c_cols[tr].astype(np.int32)),
            "vals": _b(c_vals[tr].astype(vdt)),
            "test_rows": _b(local[held].astype(np.int32)),
            "test_cols": _b(c_cols[held].astype(np.int32)),
            "test_vals": _b(c_vals[held].astype(vdt)),
            "test_kind": _b(c_kind[held].astype(np.int8)),
        })
        start = stop
    return pd.DataFrame(out, columns=PACKED_COLUMNS)


def decode_chunk(row, val_dtype: str) -> dict:
    """The arrays of one packed chunk (a row of PACKED_SCHEMA)."""
    vdt = np.dtype(val_dtype)
    return {
        "row_ids": np.frombuffer(row["row_ids"], dtype=np.int32),
        "indptr": np.frombuffer(row["indptr"], dtype=np.int64),
        "cols": np.frombuffer(row["cols"], dtype=np.int32),
        "vals": np.frombuffer(row["vals"], dtype=vdt).astype(np.float64),
        "test_rows": np.frombuffer(row["test_rows"], dtype=np.int32),
        "test_cols": np.frombuffer(row["test_cols"], dtype=np.int32),
        "test_vals": np.frombuffer(row["test_vals"], dtype=vdt).astype(np.float64),
        "test_kind": np.frombuffer(row["test_kind"], dtype=np.int8),
    }


# ----------------------------------------------------------------------- resident blocks
#
# A Python worker that has decoded a chunk keeps it, keyed by the packed layout's token,
# the side, the block and the chunk, so a later half-epoch can send only the chunk's key
# (the "light" input: the cached layout with its binary columns pruned away) instead of
# tens of MB per block. Spark does not pin partitions to workers: a worker that does not
# hold a chunk reports it missing and the driver re-runs those blocks with the full data
# (which also stores them). A hit is checked against the chunk's sizes before use, and
# each worker's store is bounded (least recently used chunks go first).

_RESIDENT: "OrderedDict[tuple, tuple[dict, int]]" = OrderedDict()
_resident_bytes = 0


def _chunk_nbytes(c: dict) -> int:
    return sum(a.nbytes for a in c.values())


def resident_get(key, n_rows: int, nnz: int, n_test: int):
    """The stored chunk for ``key`` if this worker holds it and its sizes match."""
    hit = _RESIDENT.get(key)
    if hit is None:
        return None
    c = hit[0]
    if c["row_ids"].size != n_rows or c["cols"].size != nnz or c["test_cols"].size != n_test:
        resident_drop(key)
        return None
    _RESIDENT.move_to_end(key)
    return c


def resident_put(key, c: dict, budget_mb: int) -> None:
    global _resident_bytes
    if budget_mb <= 0:
        return
    resident_drop(key)
    size = _chunk_nbytes(c)
    _RESIDENT[key] = (c, size)
    _resident_bytes += size
    while _resident_bytes > budget_mb * (1 << 20) and len(_RESIDENT) > 1:
        old = next(iter(_RESIDENT))
        resident_drop(old)


def resident_drop(key) -> None:
    global _resident_bytes
    hit = _RESIDENT.pop(key, None)
    if hit is not None:
        _resident_bytes -= hit[1]


def resident_clear() -> None:
    global _resident_bytes
    _RESIDENT.clear()
    _resident_bytes = 0


def _chunks(pdf, val_dtype, resident):
    """(row, decoded chunk or None) for the rows of a packed or light block input.

    ``resident``: None, or (key prefix, budget MB). Light rows (no binary columns)
    resolve from this worker's store; full rows are decoded and stored.
    """
    light = "row_ids" not in pdf.columns
    for _, row in pdf.sort_values("chunk").iterrows():
        key = None if resident is None else (*resident[0], int(row["block"]),
                                             int(row["chunk"]))
        if light:
            yield row, resident_get(key, int(row["n_rows"]), int(row["nnz"]),
                                    int(row["n_test"]))
            continue
        c = decode_chunk(row, val_dtype)
        if key is not None:
            resident_put(key, c, resident[1])
        yield row, c


def _error_sums(pred, truth):
    err = pred - truth
    return float(err @ err), float(np.abs(err).sum())


def solve_block(key, pdf, *, fixed, rank, biases, reg, count_scaling, mu, sigma, lo, hi, link,
                clip, val_dtype, gram_dtype, metrics, resident=None):
    """Solve (or, for BPMF, sample) every row of one block against the broadcast
    fixed side.

    ``fixed`` is a Broadcast (or a plain tuple in tests) of ``(design, offset,
    extra)``: design float64 (n_fixed, k) -- the fixed factors, with a column of
    ones appended when biases are on --, offset float64 (n_fixed,) the fixed
    side's biases (or None), and extra None for PMF, or a dict: for BPMF
    ``prior_precision`` (k, k), ``prior_shift`` (k,), ``alpha`` and ``noise``
    (n_rows_of_this_side, k) standard normal draws; for variational PMF
    ``design_var`` (n_fixed, k), ``offset_var`` (n_fixed,) or None and
    ``noise_var``. ``reg`` (k floats) is the diagonal prior precision of PMF.
    Each row's target is the z-scored rating minus the fixed side's bias; each
    solution is ``[factors (rank), bias]``.

    With ``metrics``, also returns training, test and validation error sums of
    the updated model in rating units (and the z-unit squared error of the
    objective); in variational mode, the rows' posterior variances and the
    expected squared error beyond the fitted residuals. With ``resident`` (see the
    resident-block notes above) the input may be light, and a chunk this worker
    does not hold comes back as a row with ``missing`` set.
    """
    limit_blas_threads()
    design, offset, extra = fixed.value if hasattr(fixed, "value") else fixed
    k = design.shape[1]
    bayes = extra is not None and "prior_precision" in extra
    vb = extra is not None and "design_var" in extra
    solve_kw = {}
    if bayes:
        prior = extra["prior_precision"]
        solve_kw = dict(alpha=extra["alpha"], prior_shift=extra["prior_shift"])
    else:
        prior = np.asarray(reg, dtype=np.float64)
    if vb:
        solve_kw = dict(fixed_var=extra["design_var"], with_cov=True)
    conv = dict(mu=mu, sigma=sigma, lo=lo, hi=hi, link=link, clip=clip)
    out = []
    for row, c in _chunks(pdf, val_dtype, resident):
        if c is None:
            out.append(_missing_row(key, row))
            continue
        z = (c["vals"] - mu) / sigma
        off = offset[c["cols"]] if offset is not None else 0.0
        counts = np.diff(c["indptr"]).astype(np.float64)
        if bayes:
            solve_kw["noise"] = extra["noise"][c["row_ids"]]
        sol = ridge_solve_csr(c["indptr"], c["cols"], z - off, design, prior,
                              row_scale=counts if count_scaling else None,
                              with_fitted=metrics, gram_dtype=np.dtype(gram_dtype), **solve_kw)
        x = sol.x
        full = np.zeros((x.shape[0], rank + 1))
        full[:, :k] = x
        var = np.zeros((x.shape[0], rank + 1))
        esse = 0.0
        if vb:
            var[:, :k] = extra["noise_var"] * sol.inv_diag
            esse = float((var[:, :k] * (sol.gram_diag + sol.var_sum)).sum()
                         + (x ** 2 * sol.var_sum).sum())
            if extra["offset_var"] is not None:
                esse += float(extra["offset_var"][c["cols"]].sum())
        rec = {"block": int(key[0]), "chunk": int(row["chunk"]),
               "row_ids": _b(c["row_ids"]), "factors": _b(full),
               "n_train": int(c["cols"].size), "sse": 0.0, "sae": 0.0, "sse_z": 0.0,
               "n_test": 0, "test_sse": 0.0, "test_sae": 0.0,
               "n_val": 0, "val_sse": 0.0, "val_sae": 0.0,
               "variances": _b(var) if vb else b"", "esse": esse, "missing": False}
        if metrics:
            z_hat = sol.fitted + off
            rec["sse"], rec["sae"] = _error_sums(to_rating(z_hat, **conv), c["vals"])
            rec["sse_z"] = float(((z - z_hat) ** 2).sum())
            if c["test_cols"].size:
                tc = c["test_cols"]
                zt = np.einsum("ij,ij->i", design[tc], x[c["test_rows"]])
                if offset is not None:
                    zt = zt + offset[tc]
                pred = to_rating(zt, **conv)
                for kind, prefix in ((TEST, "test"), (VALIDATION, "val")):
                    sel = c["test_kind"] == kind
                    rec[f"n_{prefix}"] = int(sel.sum())
                    rec[f"{prefix}_sse"], rec[f"{prefix}_sae"] = _error_sums(
                        pred[sel], c["test_vals"][sel])
        out.append(rec)
    return pd.DataFrame(out, columns=SOLVED_COLUMNS)


def _missing_row(key, row) -> dict:
    return {"block": int(key[0]), "chunk": int(row["chunk"]), "row_ids": b"", "factors": b"",
            "n_train": 0, "sse": 0.0, "sae": 0.0, "sse_z": 0.0, "n_test": 0, "test_sse": 0.0,
            "test_sae": 0.0, "n_val": 0, "val_sse": 0.0, "val_sae": 0.0, "variances": b"",
            "esse": 0.0, "missing": True}


def evaluate_block(key, pdf, *, shared, mu, sigma, lo, hi, link, clip, val_dtype):
    """Error sums of a fixed model over one packed item block: ``shared`` holds
    (user_design, user_offset, item_design, item_offset), designs (n, k') whose
    row dot products are the predictions in z units (minus the offsets)."""
    limit_blas_threads()
    ud, uo, idz, io = shared.value if hasattr(shared, "value") else shared
    conv = dict(mu=mu, sigma=sigma, lo=lo, hi=hi, link=link, clip=clip)
    out = []
    for _, row in pdf.iterrows():
        c = decode_chunk(row, val_dtype)
        rows = c["row_ids"]
        counts = np.diff(c["indptr"])
        owner = rows[np.repeat(np.arange(rows.size), counts)]
        rec = {"block": int(key[0]), "chunk": int(row["chunk"])}
        for prefix, users, items, truth in (
                ("train", c["cols"], owner, c["vals"]),
                ("test", c["test_cols"], rows[c["test_rows"]], c["test_vals"])):
            z = np.einsum("ij,ij->i", ud[users], idz[items]) + uo[users] + io[items]
            sel = np.ones(truth.size, bool) if prefix == "train" else c["test_kind"] == TEST
            rec[f"n_{prefix}"] = int(sel.sum())
            rec[f"{prefix}_sse"], rec[f"{prefix}_sae"] = _error_sums(
                to_rating(z[sel], **conv), truth[sel])
        out.append(rec)
    return pd.DataFrame(out, columns=EVAL_COLUMNS)


EVAL_SCHEMA = ("block int, chunk int, n_train long, train_sse double, train_sae double, "
               "n_test long, test_sse double, test_sae double")
EVAL_COLUMNS = [c.strip().split(" ")[0] for c in EVAL_SCHEMA.split(",")]


DIAG_SCHEMA = "block int, chunk int, pred_hist binary, true_hist binary, user_sse binary, " \
              "user_n binary, base_sse double"
DIAG_COLUMNS = [c.strip().split(" ")[0] for c in DIAG_SCHEMA.split(",")]


def diagnose_block(key, pdf, *, shared, bins, n_users, mu, sigma, lo, hi, link, clip,
                   val_dtype):
    """Test-split diagnostics of a fixed model over one packed item block: histograms
    of predicted and true ratings over ``bins`` (edges), and per-user squared error
    sums and counts (n_users,), for the report."""
    limit_blas_threads()
    ud, uo, idz, io = shared.value if hasattr(shared, "value") else shared
    conv = dict(mu=mu, sigma=sigma, lo=lo, hi=hi, link=link, clip=clip)
    edges = np.asarray(bins, dtype=np.float64)
    out = []
    for _, row in pdf.iterrows():
        c = decode_chunk(row, val_dtype)
        sel = c["test_kind"] == TEST
        users = c["test_cols"][sel]
        items = c["row_ids"][c["test_rows"][sel]]
        truth = c["test_vals"][sel]
        z = np.einsum("ij,ij->i", ud[users], idz[items]) + uo[users] + io[items]
        pred = to_rating(z, **conv)
        err2 = (pred - truth) ** 2
        out.append({
            "block": int(key[0]), "chunk": int(row["chunk"]),
            "pred_hist": _b(np.histogram(np.clip(pred, edges[0], edges[-1]), edges)[0]),
            "true_hist": _b(np.histogram(np.clip(truth, edges[0], edges[-1]), edges)[0]),
            "user_sse": _b(np.bincount(users, weights=err2, minlength=n_users)),
            "user_n": _b(np.bincount(users, minlength=n_users).astype(np.int64)),
            "base_sse": float(((truth - mu) ** 2).sum()),
        })
    return pd.DataFrame(out, columns=DIAG_COLUMNS)
