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
on the item side, that chunk's held-out test ratings in COO form
(``test_rows`` local row position int32, ``test_cols`` int32, ``test_vals``).
Feeding Python a handful of large binary values per epoch instead of one
Arrow row per rating is what makes an epoch cheap (see SPARK-NOTES).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .solvers import ridge_solve_csr, to_rating

PACKED_SCHEMA = (
    "block int, chunk int, n_rows int, nnz long, n_test long, row_ids binary, indptr binary, "
    "cols binary, vals binary, test_rows binary, test_cols binary, test_vals binary")
PACKED_COLUMNS = [c.strip().split(" ")[0] for c in PACKED_SCHEMA.split(",")]

SOLVED_SCHEMA = (
    "block int, chunk int, row_ids binary, factors binary, n_train long, sse double, sae double, "
    "sse_z double, n_test long, test_sse double, test_sae double")
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


def pack_block(key, pdf, *, chunk_ratings, val_dtype, with_test):
    """Pack one block's ratings into CSR chunks.

    Input columns: ``row`` (int, dense index of the side being solved), ``col``
    (int, dense index on the fixed side), ``rating``, and ``is_test`` when
    ``with_test``. Rows appear once per chunk, sorted; a row with only test
    ratings is kept with zero training entries so its test ratings have a home.
    """
    block = int(key[0])
    rows = pdf["row"].to_numpy(dtype=np.int64)
    cols = pdf["col"].to_numpy(dtype=np.int64)
    vals = pdf["rating"].to_numpy(dtype=np.float64)
    test = pdf["is_test"].to_numpy(dtype=bool) if with_test else np.zeros(rows.size, bool)
    order = np.lexsort((cols, rows))
    rows, cols, vals, test = rows[order], cols[order], vals[order], test[order]
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
        c_rows, c_cols, c_vals, c_test = rows[sl], cols[sl], vals[sl], test[sl]
        local = np.searchsorted(row_ids[start:stop], c_rows)
        tr = ~c_test
        indptr = np.zeros(stop - start + 1, dtype=np.int64)
        np.cumsum(np.bincount(local[tr], minlength=stop - start), out=indptr[1:])
        out.append({
            "block": block, "chunk": len(out), "n_rows": stop - start,
            "nnz": int(tr.sum()), "n_test": int(c_test.sum()),
            "row_ids": _b(row_ids[start:stop].astype(np.int32)),
            "indptr": _b(indptr),
            "cols": _b(c_cols[tr].astype(np.int32)),
            "vals": _b(c_vals[tr].astype(vdt)),
            "test_rows": _b(local[c_test].astype(np.int32)),
            "test_cols": _b(c_cols[c_test].astype(np.int32)),
            "test_vals": _b(c_vals[c_test].astype(vdt)),
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
    }


def solve_block(key, pdf, *, fixed, rank, biases, lam, lam_bias, count_scaling, mu, sigma,
                lo, hi, link, clip, val_dtype, gram_dtype, metrics):
    """Solve every row of one block against the broadcast fixed side.

    ``fixed`` is a Broadcast (or a plain tuple in tests) of ``(design, offset)``:
    design float64 (n_fixed, k) -- the fixed factors, with a column of ones
    appended when biases are on --, offset float64 (n_fixed,) the fixed side's
    biases (or None). Each row's target is the z-scored rating minus the fixed
    side's bias; each solution is ``[factors (rank), bias]``.

    With ``metrics``, also returns training and test error sums of the updated
    model in rating units (and the z-unit squared error for the objective).
    """
    limit_blas_threads()
    design, offset = fixed.value if hasattr(fixed, "value") else fixed
    k = design.shape[1]
    reg = np.full(k, float(lam))
    if biases:
        reg[rank] = lam_bias
    out = []
    for _, row in pdf.sort_values("chunk").iterrows():
        c = decode_chunk(row, val_dtype)
        z = (c["vals"] - mu) / sigma
        off = offset[c["cols"]] if offset is not None else 0.0
        counts = np.diff(c["indptr"]).astype(np.float64)
        sol = ridge_solve_csr(c["indptr"], c["cols"], z - off, design, reg,
                              row_scale=counts if count_scaling else None,
                              with_fitted=metrics, gram_dtype=np.dtype(gram_dtype))
        x = sol.x
        full = np.zeros((x.shape[0], rank + 1))
        full[:, :k] = x
        rec = {"block": int(key[0]), "chunk": int(row["chunk"]),
               "row_ids": _b(c["row_ids"]), "factors": _b(full),
               "n_train": int(c["cols"].size), "sse": 0.0, "sae": 0.0, "sse_z": 0.0,
               "n_test": int(c["test_cols"].size), "test_sse": 0.0, "test_sae": 0.0}
        if metrics:
            conv = dict(mu=mu, sigma=sigma, lo=lo, hi=hi, link=link, clip=clip)
            z_hat = sol.fitted + off
            err = to_rating(z_hat, **conv) - c["vals"]
            rec.update(sse=float(err @ err), sae=float(np.abs(err).sum()),
                       sse_z=float(((z - z_hat) ** 2).sum()))
            if c["test_cols"].size:
                tc = c["test_cols"]
                zt = np.einsum("ij,ij->i", design[tc], x[c["test_rows"]])
                if offset is not None:
                    zt = zt + offset[tc]
                et = to_rating(zt, **conv) - c["test_vals"]
                rec.update(test_sse=float(et @ et), test_sae=float(np.abs(et).sum()))
        out.append(rec)
    return pd.DataFrame(out, columns=SOLVED_COLUMNS)
