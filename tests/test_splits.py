"""Every split's invariants: disjoint and complete, deterministic whatever the
partitioning, per-user counts, temporal order; time-based splits refuse data without
timestamps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pmf_spark.errors import InputDataError
from pmf_spark.prepare.splits import mark_test

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def events(spark):
    rng = np.random.default_rng(8)
    n_users, per = 40, rng.integers(1, 30, 40)
    users = np.repeat(np.arange(n_users) * 3 + 1, per)
    items = np.concatenate([rng.choice(200, c, replace=False) for c in per]) + 1000
    ts = rng.integers(0, 50, users.size) * 1000 + 878_000_000    # many ties
    pdf = pd.DataFrame({"user": users.astype(np.int64), "item": items.astype(np.int64),
                        "rating": rng.integers(1, 6, users.size).astype(float),
                        "ts": ts.astype(np.int64)})
    return pdf


def split(spark, pdf, how, parts=3, **kw):
    df = spark.createDataFrame(pdf).repartition(parts)
    kw = {"seed": 4, "fraction": 0.2, "n_last": 2, "has_timestamp": True, "path": "e"} | kw
    return mark_test(df, how, **kw).toPandas().sort_values(["user", "item"]).reset_index(drop=True)


@pytest.mark.parametrize("how", ["random", "user-fraction", "temporal", "leave-last-n"])
def test_split_is_disjoint_complete_and_deterministic(spark, events, how):
    a = split(spark, events, how, parts=2)
    b = split(spark, events, how, parts=5)
    assert len(a) == len(events)
    assert a[["user", "item"]].duplicated().sum() == 0
    assert (a.is_test == b.is_test).all()                      # partitioning-independent
    assert 0 < a.is_test.sum() < len(a)
    if how == "random":
        assert a.is_test.mean() == pytest.approx(0.2, abs=0.06)


def test_user_fraction_holds_out_each_users_share(spark, events):
    got = split(spark, events, "user-fraction")
    per_user = got.groupby("user").agg(n=("item", "size"), t=("is_test", "sum"))
    assert (per_user.t == np.floor(per_user.n * 0.2)).all()
    assert (per_user.n - per_user.t >= 1).all()                 # nobody loses all training


def test_temporal_split_is_one_cut_in_time(spark, events):
    got = split(spark, events, "temporal")
    assert got.is_test.sum() == round(0.2 * len(got))
    assert got[~got.is_test].ts.max() <= got[got.is_test].ts.min()
    # ties at the cut are decided by (user, item), so the split is exact and repeatable
    at_cut = got[got.ts == got[got.is_test].ts.min()].sort_values(["user", "item"])
    assert not (at_cut.is_test.diff().fillna(0) < 0).any()


def test_leave_last_n_holds_out_each_users_latest(spark, events):
    got = split(spark, events, "leave-last-n", n_last=2)
    for _user, g in got.groupby("user"):
        if len(g) <= 2:
            assert not g.is_test.any()
            continue
        assert g.is_test.sum() == 2
        latest = g.sort_values(["ts", "item"], ascending=False).head(2)
        assert set(latest.item) == set(g[g.is_test].item)


@pytest.mark.parametrize("how", ["temporal", "leave-last-n"])
def test_time_based_splits_need_timestamps(spark, events, how):
    with pytest.raises(InputDataError, match=f"--split {how} needs a timestamp column"):
        split(spark, events, how, has_timestamp=False)


def test_the_job_refuses_a_time_based_split_without_timestamps(spark, tmp_path, capsys):
    import train_pmf

    path = tmp_path / "r.csv"
    pd.DataFrame({"user": [1, 1, 2, 2, 3], "item": [1, 2, 1, 3, 2],
                  "rating": [4, 3, 5, 2, 1]}).to_csv(path, index=False)
    code = train_pmf.main(["--ratings", str(path), "--split", "temporal", "--output",
                           str(tmp_path / "o")], spark=spark)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == (f"error: ratings {path}: --split temporal needs a "
                                     f"timestamp column (name it with --timestamp-col)")


@pytest.mark.parametrize("ids", [
    ["007", "7", "b", "B", "é", "e", "ß", "10", "9", "zz", "Z", "\u00a0x", "日本", "a b"],
    [7, -3, 10**15, 0, 42, 5, 6, 2**40, -2**40],
])
def test_the_driver_side_vocabulary_equals_the_distributed_one(spark, ids):
    """Small inputs order their vocabulary on the driver (Arrow); it must assign exactly
    the indices the distributed sort does, ties by id in Spark's order."""
    from pmf_spark.prepare.indexing import build_vocabulary

    rng = np.random.default_rng(4)
    rows = [(ids[j], int(rng.integers(0, 3)), int(rng.random() < 0.2)) for j in
            rng.integers(0, len(ids) // 2, 200)] + [
                (x, 0, j % 2) for j, x in enumerate(ids)]     # the second half's odd: cold
    typ = "string" if isinstance(ids[0], str) else "bigint"
    df = spark.createDataFrame(rows, f"user {typ}, item int, kind int")
    got, n_local, cold_local = build_vocabulary(df, "user", local=True)
    want, n, cold = build_vocabulary(df, "user")
    assert n_local == n == len(set(ids))
    assert got.schema == want.schema
    a, b = got.toPandas(), want.toPandas()
    pd.testing.assert_frame_equal(a.sort_values("idx").reset_index(drop=True),
                                  b.sort_values("idx").reset_index(drop=True))
    assert (a.sort_values("idx").n_ratings.diff().dropna() <= 0).all()
    assert cold_local == cold == int((a.n_ratings == 0).sum()) > 0
    got.unpersist()
    want.unpersist()
