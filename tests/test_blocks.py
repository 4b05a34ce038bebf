"""Block functions called on plain pandas frames, no Spark."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pmf_spark.engine.blocks import SOLVED_COLUMNS, solve_block
from pmf_spark.engine.layout import PACKED_COLUMNS, decode_chunk, pack_block
from pmf_spark.kernels import reference
from pmf_spark.kernels.rows import ReadOut
from pmf_spark.models.pmf import RidgePayload, ridge_kernel


def ridge(design, offset, reg, *, count_scaling=False, mu=3.0, sigma=1.0, lo=0.5, hi=5.0,
          link="linear", clip=True, gram_dtype="float64"):
    """The block-function keywords of one MAP-PMF task."""
    payload = RidgePayload(design=design, offset=offset,
                           readout=ReadOut(mu=mu, sigma=sigma, lo=lo, hi=hi, link=link, clip=clip),
                           gram_dtype=gram_dtype, kernel="auto",
                           reg=np.asarray(reg, dtype=np.float64),
                           count_scaling=count_scaling)
    return dict(shared=(payload,), kernels=(ridge_kernel,), widths=(design.shape[1] + 1,),
                variances=(False,))


def ratings_frame(rng, n_rows, n_cols, density, test_fraction=0.0):
    mask = rng.random((n_rows, n_cols)) < density
    r, c = np.nonzero(mask)
    vals = rng.integers(1, 11, r.size) / 2.0
    df = pd.DataFrame({"row": r.astype(np.int32), "col": c.astype(np.int32), "rating": vals,
                       "is_test": rng.random(r.size) < test_fraction})
    df["kind"] = df.is_test.astype(np.int8)
    return df.sample(frac=1.0, random_state=1).reset_index(drop=True)  # unordered, like Spark


def dense(df, n_rows, n_cols, test=False):
    R = np.full((n_rows, n_cols), np.nan)
    sel = df[df.is_test == test]
    R[sel.row, sel.col] = sel.rating
    return R


@pytest.mark.parametrize("chunk", [1000, 7])
def test_pack_round_trip_keeps_every_rating_once(chunk):
    rng = np.random.default_rng(0)
    df = ratings_frame(rng, 30, 20, 0.3, test_fraction=0.2)
    packed = pack_block((5,), df, chunk_ratings=chunk if chunk >= 1000 else 1000,
                        val_dtype="float32", with_test=True)
    if chunk == 7:  # chunking below the validated minimum: call with a tiny chunk directly
        packed = pack_block((5,), df, chunk_ratings=7, val_dtype="float32", with_test=True)
        assert len(packed) > 1
    assert list(packed.columns) == PACKED_COLUMNS
    assert (packed.block == 5).all() and packed.chunk.tolist() == list(range(len(packed)))
    got_train, got_test, seen_rows = [], [], []
    for _, row in packed.iterrows():
        c = decode_chunk(row, "float32")
        seen_rows.extend(c.row_ids.tolist())
        assert c.indptr[0] == 0 and c.indptr[-1] == c.cols.size == row.nnz
        for j, rid in enumerate(c.row_ids):
            sl = slice(c.indptr[j], c.indptr[j + 1])
            assert (np.diff(c.cols[sl]) > 0).all()    # sorted, no duplicates
            got_train += [(rid, col, v) for col, v in zip(c.cols[sl], c.vals[sl])]
        got_test += [(c.row_ids[r], col, v)
                     for r, col, v in zip(c.test_rows, c.test_cols, c.test_vals)]
    assert seen_rows == sorted(set(seen_rows))                     # each row in one chunk
    assert set(seen_rows) == set(df.row)                           # test-only rows kept too
    want_train = sorted(map(tuple, df[~df.is_test][["row", "col", "rating"]].to_numpy().tolist()))
    want_test = sorted(map(tuple, df[df.is_test][["row", "col", "rating"]].to_numpy().tolist()))
    assert sorted((int(a), int(b), float(v)) for a, b, v in got_train) == want_train
    assert sorted((int(a), int(b), float(v)) for a, b, v in got_test) == want_test


@pytest.mark.parametrize("biases,count_scaling", [(True, False), (False, False), (True, True)])
def test_solve_block_matches_dense_reference_and_reports_metrics(biases, count_scaling):
    rng = np.random.default_rng(1)
    n_rows, n_cols, rank = 25, 40, 4
    df = ratings_frame(rng, n_rows, n_cols, 0.25, test_fraction=0.15)
    packed = pack_block((0,), df, chunk_ratings=1000, val_dtype="float64", with_test=True)
    fixed = np.hstack([rng.normal(size=(n_cols, rank)), rng.normal(size=(n_cols, 1))])
    if not biases:
        fixed[:, rank] = 0.0
    design = np.hstack([fixed[:, :rank], np.ones((n_cols, 1))]) if biases else fixed[:, :rank]
    offset = fixed[:, rank].copy() if biases else None
    mu, sigma, lo, hi = 3.0, 1.1, 0.5, 5.0
    reg = (2.0,) * rank + ((0.7,) if biases else ())
    task = ridge(design, offset, reg, count_scaling=count_scaling, mu=mu, sigma=sigma, lo=lo,
                 hi=hi)
    task["widths"] = (rank + 1,)
    out = solve_block((0,), packed, val_dtype="float64", metrics=(True,), **task)
    assert list(out.columns) == SOLVED_COLUMNS
    got = np.zeros((n_rows, rank + 1))
    for _, row in out.iterrows():
        ids = np.frombuffer(row.row_ids, np.int32)
        got[ids] = np.frombuffer(row.factors, np.float64).reshape(ids.size, rank + 1)
    R = dense(df, n_rows, n_cols)
    want = reference.half_step(R, fixed, rank=rank, lam=2.0, lam_bias=0.7, biases=biases,
                               count_scaling=count_scaling, mu=mu, sigma=sigma)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)

    Z = reference.predict_z(got, fixed, rank)
    for test, (n_col, sse_col, sae_col) in ((False, ("n_train", "sse", "sae")),
                                           (True, ("n_test", "test_sse", "test_sae"))):
        Rm = dense(df, n_rows, n_cols, test=test)
        m = ~np.isnan(Rm)
        err = ReadOut(mu=mu, sigma=sigma, lo=lo, hi=hi).to_rating(Z[m]) - Rm[m]
        assert out[n_col].sum() == m.sum()
        assert out[sse_col].sum() == pytest.approx(float(err @ err), rel=1e-10)
        assert out[sae_col].sum() == pytest.approx(float(np.abs(err).sum()), rel=1e-10)


def test_sigmoid_link_metrics_use_the_sigmoid_read_out():
    rng = np.random.default_rng(2)
    df = ratings_frame(rng, 10, 12, 0.5)
    packed = pack_block((0,), df, chunk_ratings=1000, val_dtype="float32", with_test=False)
    design = rng.normal(size=(12, 3))
    kw = dict(val_dtype="float32", metrics=(True,))
    lin = solve_block((0,), packed, **kw, **ridge(design, None, (1.0,) * 3, lo=1.0, hi=5.0,
                                                  link="linear"))
    sig = solve_block((0,), packed, **kw, **ridge(design, None, (1.0,) * 3, lo=1.0, hi=5.0,
                                                  link="sigmoid"))
    assert lin.factors.tolist() == sig.factors.tolist()   # the link only changes the read-out
    assert lin.sse.sum() != pytest.approx(sig.sse.sum())


def test_resident_store_hits_misses_and_sizes():
    from pmf_spark.engine import layout
    rng = np.random.default_rng(4)
    df = ratings_frame(rng, 12, 9, 0.5, test_fraction=0.2)
    packed = pack_block((3,), df, chunk_ratings=1000, val_dtype="float64", with_test=True)
    light = packed[["block", "chunk", "n_rows", "nnz", "n_test"]]
    design = rng.normal(size=(9, 2))
    kw = dict(val_dtype="float64", metrics=(True,), resident=(("tok", "item"), 64),
              **ridge(design, None, (1.0, 1.0)))
    layout.resident_clear()
    miss = solve_block((3,), light, **kw)
    assert miss.missing.all() and (miss.row_ids == b"").all()
    full = solve_block((3,), packed, **kw)              # decodes and stores
    assert not full.missing.any()
    hit = solve_block((3,), light, **kw)                 # served from the store
    assert not hit.missing.any()
    for col in ("row_ids", "factors", "sse", "test_sse"):
        assert hit[col].tolist() == full[col].tolist()
    # a stored chunk whose sizes no longer match is dropped, never used
    wrong = light.copy()
    wrong["nnz"] += 1
    assert solve_block((3,), wrong, **kw).missing.all()
    assert solve_block((3,), light, **kw).missing.all()   # it was dropped
    # the budget bounds the store
    store = layout.ResidentStore()
    big = decode_chunk(pack_block((0,), ratings_frame(rng, 100, 700, 0.9), chunk_ratings=10**6,
                                  val_dtype="float64", with_test=False).iloc[0], "float64")
    assert 0.6 * (1 << 20) < big.nbytes < (1 << 20)
    store.put(("a",), big, budget_mb=1)
    store.put(("b",), big, budget_mb=1)
    assert ("a",) not in store and ("b",) in store
    assert store.nbytes == big.nbytes
    layout.resident_clear()
