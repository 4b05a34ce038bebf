"""The packed block layout, and the worker-resident store of decoded chunks.

Pure numpy and pandas: this runs inside the Python workers.

The packed layout
-----------------
At setup each block's ratings are packed, once, into a few rows (chunks) of binary
columns: a chunk holds complete rows in CSR form (``row_ids`` int32, ``indptr``
int64, ``cols`` int32, ``vals`` float32 or float64 raw ratings) and that chunk's
held-out ratings in COO form (``test_rows`` local row position int32, ``test_cols``
int32, ``test_vals``, ``test_kind`` int8: 1 test, 2 validation). Feeding Python a
handful of large binary values per epoch instead of one Arrow row per rating is what
makes an epoch cheap (see SPARK-NOTES).

Resident chunks
---------------
A Python worker that has decoded a chunk keeps it, keyed by the packed layout's
token, the side, the block and the chunk, so a later half-epoch can send only the
chunk's key (the "light" input: the cached layout with its binary columns pruned
away) instead of tens of MB per block. Spark does not pin partitions to workers: a
worker that does not hold a chunk reports it missing and the driver re-runs those
blocks with the full data (which also stores them). A hit is checked against the
chunk's sizes before use, and each worker's store is bounded (least recently used
chunks go first).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pandas as pd

PACKED_SCHEMA = (
    "block int, chunk int, n_rows int, nnz long, n_test long, row_ids binary, indptr binary, "
    "cols binary, vals binary, test_rows binary, test_cols binary, test_vals binary, "
    "test_kind binary")
PACKED_COLUMNS = [c.strip().split(" ")[0] for c in PACKED_SCHEMA.split(",")]
#: the columns of a light input: a chunk's key and sizes, no data
LIGHT_COLUMNS = ["block", "chunk", "n_rows", "nnz", "n_test"]

#: held-out entry kinds in the packed layout (0 is a training rating)
TRAIN, TEST, VALIDATION = 0, 1, 2

_blas_limited = False


def limit_blas_threads() -> None:
    """Cap BLAS at one thread in this (worker) process, once: Spark already runs
    one task per core, more BLAS threads only oversubscribe the cores."""
    global _blas_limited
    if not _blas_limited:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
        _blas_limited = True


def to_bytes(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


@dataclass(frozen=True)
class Chunk:
    """One decoded chunk: n rows of one side with their entries.

    Attributes:
        block, chunk: the chunk's key within its side.
        row_ids: int32 (n,) dense indices of the rows, ascending.
        indptr: int64 (n + 1,) CSR pointers into cols/vals (training entries).
        cols: int32 (nnz,) dense indices on the other side; vals: float64 (nnz,) raw values.
        test_rows: int32 (h,) local row positions of the held-out entries;
        test_cols: int32 (h,); test_vals: float64 (h,); test_kind: int8 (h,) TEST/VALIDATION.
    """

    block: int
    chunk: int
    row_ids: np.ndarray
    indptr: np.ndarray
    cols: np.ndarray
    vals: np.ndarray
    test_rows: np.ndarray
    test_cols: np.ndarray
    test_vals: np.ndarray
    test_kind: np.ndarray

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.indptr)

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f).nbytes for f in ("row_ids", "indptr", "cols", "vals",
                                                      "test_rows", "test_cols", "test_vals",
                                                      "test_kind"))

    def sizes_match(self, n_rows: int, nnz: int, n_test: int) -> bool:
        return (self.row_ids.size == n_rows and self.cols.size == nnz
                and self.test_cols.size == n_test)

    def entry_rows(self) -> np.ndarray:
        """int64 (nnz,) the local row of every training entry."""
        return np.repeat(np.arange(self.row_ids.size), self.counts)


def decode_chunk(row, val_dtype: str) -> Chunk:
    """The arrays of one packed chunk (a row of PACKED_SCHEMA)."""
    vdt = np.dtype(val_dtype)
    return Chunk(
        block=int(row["block"]), chunk=int(row["chunk"]),
        row_ids=np.frombuffer(row["row_ids"], dtype=np.int32),
        indptr=np.frombuffer(row["indptr"], dtype=np.int64),
        cols=np.frombuffer(row["cols"], dtype=np.int32),
        vals=np.frombuffer(row["vals"], dtype=vdt).astype(np.float64),
        test_rows=np.frombuffer(row["test_rows"], dtype=np.int32),
        test_cols=np.frombuffer(row["test_cols"], dtype=np.int32),
        test_vals=np.frombuffer(row["test_vals"], dtype=vdt).astype(np.float64),
        test_kind=np.frombuffer(row["test_kind"], dtype=np.int8),
    )


def _sorted_block(pdf: pd.DataFrame, with_test: bool, trained_rows_only: bool):
    rows = pdf["row"].to_numpy(dtype=np.int64)
    cols = pdf["col"].to_numpy(dtype=np.int64)
    vals = pdf["rating"].to_numpy(dtype=np.float64)
    kind = pdf["kind"].to_numpy(dtype=np.int8) if with_test else np.zeros(rows.size, np.int8)
    if trained_rows_only:
        keep = np.isin(rows, rows[kind == TRAIN])
        rows, cols, vals, kind = rows[keep], cols[keep], vals[keep], kind[keep]
    order = np.lexsort((cols, rows))
    return rows[order], cols[order], vals[order], kind[order]


def pack_block(key, pdf, *, chunk_ratings, val_dtype, with_test, trained_rows_only=False):
    """Pack one block's ratings into CSR chunks (rows of PACKED_SCHEMA).

    Input columns: ``row`` (int, dense index of the side being solved), ``col``
    (int, dense index on the fixed side), ``rating``, and ``kind`` when
    ``with_test`` (0 train, 1 test, 2 validation). Rows appear once per chunk,
    sorted; a row with only held-out ratings is kept with zero training entries
    so its held-out ratings have a home -- unless ``trained_rows_only``, which drops
    such rows (the row set is then that of the training ratings).
    """
    block = int(key[0])
    rows, cols, vals, kind = _sorted_block(pdf, with_test, trained_rows_only)
    row_ids, first = np.unique(rows, return_index=True)
    bounds = np.append(first, rows.size)                  # entries of row r: bounds[r]:bounds[r+1]
    vdt = np.dtype(val_dtype)
    out: list[dict] = []
    start = 0
    while start < row_ids.size:
        # whole rows, up to chunk_ratings entries (at least one row)
        limit = bounds[start] + chunk_ratings
        stop = int(np.searchsorted(bounds, limit, side="right")) - 1
        stop = min(max(stop, start + 1), row_ids.size)
        sl = slice(bounds[start], bounds[stop])
        c_rows, c_cols, c_vals, c_kind = rows[sl], cols[sl], vals[sl], kind[sl]
        local = np.searchsorted(row_ids[start:stop], c_rows)
        tr = c_kind == TRAIN
        held = ~tr
        indptr = np.zeros(stop - start + 1, dtype=np.int64)
        np.cumsum(np.bincount(local[tr], minlength=stop - start), out=indptr[1:])
        out.append({
            "block": block, "chunk": len(out), "n_rows": stop - start,
            "nnz": int(tr.sum()), "n_test": int(held.sum()),
            "row_ids": to_bytes(row_ids[start:stop].astype(np.int32)),
            "indptr": to_bytes(indptr),
            "cols": to_bytes(c_cols[tr].astype(np.int32)),
            "vals": to_bytes(c_vals[tr].astype(vdt)),
            "test_rows": to_bytes(local[held].astype(np.int32)),
            "test_cols": to_bytes(c_cols[held].astype(np.int32)),
            "test_vals": to_bytes(c_vals[held].astype(vdt)),
            "test_kind": to_bytes(c_kind[held].astype(np.int8)),
        })
        start = stop
    return pd.DataFrame(out, columns=PACKED_COLUMNS)


class ResidentStore:
    """This worker's decoded chunks, least recently used first, bounded in bytes."""

    def __init__(self) -> None:
        self._chunks: OrderedDict[tuple, tuple[Chunk, int]] = OrderedDict()
        self.nbytes = 0

    def __contains__(self, key) -> bool:
        return key in self._chunks

    def get(self, key, n_rows: int, nnz: int, n_test: int) -> Chunk | None:
        """The stored chunk for ``key`` if this worker holds it and its sizes match."""
        hit = self._chunks.get(key)
        if hit is None:
            return None
        if not hit[0].sizes_match(n_rows, nnz, n_test):
            self.drop(key)
            return None
        self._chunks.move_to_end(key)
        return hit[0]

    def put(self, key, chunk, budget_mb: int) -> None:
        if budget_mb <= 0:
            return
        self.drop(key)
        size = chunk.nbytes
        self._chunks[key] = (chunk, size)
        self.nbytes += size
        while self.nbytes > budget_mb * (1 << 20) and len(self._chunks) > 1:
            self.drop(next(iter(self._chunks)))

    def drop(self, key) -> None:
        hit = self._chunks.pop(key, None)
        if hit is not None:
            self.nbytes -= hit[1]

    def clear(self) -> None:
        self._chunks.clear()
        self.nbytes = 0


#: the store of this Python worker process
RESIDENT = ResidentStore()


def resident_clear() -> None:
    RESIDENT.clear()


def iter_chunks(pdf: pd.DataFrame, val_dtype: str, resident=None):
    """(key row, decoded Chunk or None) for the rows of a packed or light block input.

    ``resident``: None, or (key prefix, budget MB). Light rows (no binary columns)
    resolve from this worker's store (None when it does not hold them); full rows are
    decoded and stored.
    """
    light = "row_ids" not in pdf.columns
    for _, row in pdf.sort_values("chunk").iterrows():
        key = None if resident is None else (*resident[0], int(row["block"]),
                                             int(row["chunk"]))
        if light:
            yield row, RESIDENT.get(key, int(row["n_rows"]), int(row["nnz"]),
                                    int(row["n_test"]))
            continue
        c = decode_chunk(row, val_dtype)
        if key is not None:
            RESIDENT.put(key, c, resident[1])
        yield row, c
