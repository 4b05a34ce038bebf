"""The Spark ALS path against the dense numpy reference, and its plan."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import functions as F

from pmf_spark.config.params import PMFParams
from pmf_spark.engine.spark import block_labels, pack_side
from pmf_spark.kernels import reference
from pmf_spark.kernels.rows import ReadOut
from pmf_spark.train.loop import Trainer

from helpers import dense_split, prepared, random_ratings

P = PMFParams.of

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def small(spark):
    data = prepared(spark, random_ratings(0, 70, 45, 0.25), test_fraction=0.2)
    yield data
    data.release()


def ref_kwargs(params, data):
    m, f = params.model, params.fit
    return dict(rank=m.rank, lam_bias=f.lambda_bias, biases=m.biases,
                count_scaling=f.reg_scaling == "count", mu=data.mu, sigma=data.sigma)


@pytest.mark.parametrize("params", [
    P(rank=5, blocks=3, lambda_u=3.0, lambda_v=7.0, lambda_bias=2.0),
    P(rank=4, blocks=2, biases=False, reg_scaling="count", lambda_u=0.1, lambda_v=0.2),
], ids=["pmf-biases", "als-wr-no-biases"])
def test_half_epochs_equal_the_dense_reference(spark, small, params):
    trainer = Trainer(spark, small, params)
    trainer.setup()
    try:
        state = trainer.initial_state()
        R, _ = dense_split(small)
        kw = ref_kwargs(params, small)
        # one user half-epoch through applyInPandas, from the same initial item factors
        init_items = state.item.copy()
        trainer.half_step(state, "user")
        want_users = reference.half_step(R, init_items, lam=params.fit.lambda_u, **kw)
        np.testing.assert_allclose(state.user, want_users, rtol=0, atol=1e-8)
        # then the item half-epoch
        trainer.half_step(state, "item", metrics=True)
        want_items = reference.half_step(R.T, want_users, lam=params.fit.lambda_v, **kw)
        np.testing.assert_allclose(state.item, want_items, rtol=0, atol=1e-8)
    finally:
        trainer.release()


def test_epochs_match_reference_predictions_and_metrics(spark, small):
    params = P(rank=6, epochs=4, blocks=2, lambda_u=5.0, lambda_v=5.0)
    trainer = Trainer(spark, small, params)
    trainer.setup()
    try:
        init = trainer.initial_state()
        R, T = dense_split(small)
        kw = ref_kwargs(params, small)
        ru, ri = reference.als(R, init.user.copy(), init.item.copy(), params.fit.epochs,
                               lam_u=params.fit.lambda_u, lam_v=params.fit.lambda_v, **kw)
        state = trainer.fit(trainer.initial_state())
        Zs = reference.predict_z(state.user, state.item, params.model.rank)
        Zr = reference.predict_z(ru, ri, params.model.rank)
        np.testing.assert_allclose(Zs, Zr, rtol=0, atol=1e-8)
        last = state.history[-1]
        ro = ReadOut(mu=small.mu, sigma=small.sigma, lo=small.rating_lo, hi=small.rating_hi)
        for M, rmse, mae in ((R, last.train_rmse, last.train_mae),
                             (T, last.test_rmse, last.test_mae)):
            m = ~np.isnan(M)
            err = ro.to_rating(Zr[m]) - M[m]
            assert rmse == pytest.approx(np.sqrt(np.mean(err ** 2)), rel=1e-9)
            assert mae == pytest.approx(np.mean(np.abs(err)), rel=1e-9)
        want_obj = reference.objective(R, ru, ri, lam_u=5.0, lam_v=5.0, **kw)
        assert last.objective == pytest.approx(want_obj, rel=1e-9)
    finally:
        trainer.release()


def test_objective_never_rises_across_epochs(spark, small):
    for params in (P(rank=8, epochs=8, blocks=2, lambda_u=2.0, lambda_v=2.0),
                   P(rank=8, epochs=8, blocks=2, reg_scaling="count", lambda_u=0.05,
                     lambda_v=0.05)):
        trainer = Trainer(spark, small, params)
        try:
            objs = [m.objective for m in trainer.fit().history]
        finally:
            trainer.release()
        assert all(b <= a * (1 + 1e-12) for a, b in zip(objs, objs[1:])), objs
        assert objs[-1] < objs[0]


def plan_nodes(df) -> list[str]:
    """Node names of the physical plan (what AQE starts from), not descending into the
    plans that built cached relations."""
    def walk(node):
        if node.nodeName() == "AdaptiveSparkPlan":
            return walk(node.executedPlan())
        ch = node.children()
        return [node.nodeName()] + [n for i in range(ch.size()) for n in walk(ch.apply(i))]
    return walk(df._jdf.queryExecution().executedPlan())


def test_epoch_plan_reuses_the_cached_layout_without_shuffle_or_sort(spark, small):
    trainer = Trainer(spark, small, P(rank=3, blocks=3))
    trainer.setup()
    engine = trainer.engine
    try:
        state = trainer.initial_state()
        for solving in ("user", "item"):
            tasks = trainer.strategy.tasks(state, solving, 1, None)
            df, bc = engine.frame(solving, tasks, metrics=solving == "item")
            nodes = plan_nodes(df)
            bc.destroy()
            assert nodes == ["FlatMapGroupsInPandas", "InMemoryTableScan"], nodes
            # the light input (keys only) and the re-send of some blocks keep the layout too
            for kw in ({"light": True}, {"blocks": [0]}):
                df, bc = engine.frame(solving, tasks, **kw)
                nodes = plan_nodes(df)
                bc.destroy()
                assert "Exchange" not in nodes and "Sort" not in nodes, (kw, nodes)
                assert nodes[0] == "FlatMapGroupsInPandas" and nodes[-1] == "InMemoryTableScan"
        # the check can fail: a layout cached without the in-partition sort needs a Sort
        import functools

        from pmf_spark.engine.layout import PACKED_SCHEMA, pack_block
        from pmf_spark.engine.spark import block_of
        labels = block_labels(spark, 3)
        fn = functools.partial(pack_block, chunk_ratings=1000, val_dtype="float32",
                               with_test=False)
        unsorted = (small.ratings.filter("kind = 0")
                    .select(F.col("u").alias("row"), F.col("i").alias("col"), "rating",
                            block_of("u", labels).alias("block"))
                    .groupBy("block").applyInPandas(fn, PACKED_SCHEMA)
                    .repartition(3, "block").cache())
        unsorted.count()  # materialised, like the real layout
        cached, engine.layout["user"] = engine.layout["user"], unsorted
        try:
            df, bc = engine.frame("user", trainer.strategy.tasks(state, "user", 1, None))
            nodes = plan_nodes(df)
            bc.destroy()
        finally:
            engine.layout["user"] = cached
        assert "Sort" in nodes and "Exchange" not in nodes, nodes
        unsorted.unpersist()
    finally:
        trainer.release()


@pytest.mark.parametrize("blocks", [2, 3, 5, 8])
def test_block_labels_land_one_per_partition(spark, small, blocks):
    labels = block_labels(spark, blocks)
    assert len(set(labels)) == blocks
    packed = pack_side(small.ratings, "u", "i", labels, with_test=False, chunk_ratings=1000,
                       val_dtype="float32")
    per_part = (packed.select(F.spark_partition_id().alias("p"), "block")
                .groupBy("p").agg(F.countDistinct("block").alias("n")).collect())
    packed.unpersist()
    assert len(per_part) == blocks and all(r["n"] == 1 for r in per_part)


def test_results_do_not_depend_on_the_block_count(spark, small):
    finals = []
    for blocks in (1, 4):
        trainer = Trainer(spark, small, P(rank=5, epochs=3, blocks=blocks))
        try:
            st = trainer.fit()
        finally:
            trainer.release()
        finals.append((st.history[-1].test_rmse, reference.predict_z(st.user, st.item, 5)))
    assert finals[0][0] == pytest.approx(finals[1][0], abs=1e-10)
    np.testing.assert_allclose(finals[0][1], finals[1][1], atol=1e-9)


def test_blocks_are_balanced_by_rating_count(spark):
    # heavy-tailed activity: count-ordered round-robin keeps blocks within a few percent
    rng = np.random.default_rng(5)
    import pandas as pd
    n = rng.zipf(1.6, 400).clip(1, 300)
    users = np.repeat(np.arange(400), n)
    items = np.concatenate([rng.choice(300, k, replace=False) for k in n])
    pdf = pd.DataFrame({"user": users, "item": items, "rating": 3.0 + (users % 3) / 2})
    data = prepared(spark, pdf, test_fraction=0.1)
    labels = block_labels(spark, 4)
    packed = pack_side(data.ratings, "u", "i", labels, with_test=False, chunk_ratings=1000,
                       val_dtype="float32")
    nnz = [r["n"] for r in packed.groupBy("block").agg(F.sum("nnz").alias("n")).collect()]
    packed.unpersist()
    data.release()
    assert max(nnz) - min(nnz) <= max(n) + 1, nnz


def test_rows_without_training_ratings_stay_at_the_prior_mean(spark):
    import pandas as pd

    from pmf_spark.prepare.ratings import prepare

    from helpers import clean_from_pandas

    train = random_ratings(3, 40, 30, 0.3)
    test = pd.DataFrame({"user": [99999, 99999, 100, 100], "item": [1000, 88888, 88888, 1003],
                         "rating": [4.0, 2.0, 3.5, 1.0]})
    data = prepare(clean_from_pandas(spark, train), clean_from_pandas(spark, test, "t"),
                   test_fraction=0.5, split_seed=0, on_duplicate="error")
    assert (data.cold_users, data.cold_items) == (1, 1)
    trainer = Trainer(spark, data, P(rank=4, epochs=2, blocks=2))
    try:
        st = trainer.fit()
        cold_u = trainer.counts["user"] == 0
        cold_i = trainer.counts["item"] == 0
        assert cold_u.sum() == 1 and cold_i.sum() == 1
        assert not st.user[cold_u].any() and not st.item[cold_i].any()
        m = trainer.model(st)
        # the cold user/item pairs predict the mean plus the known side's bias, never NaN
        u_cold, i_cold = np.flatnonzero(cold_u)[0], np.flatnonzero(cold_i)[0]
        pred = m.predict(np.array([u_cold, u_cold]), np.array([0, i_cold]))
        assert np.isfinite(pred).all()
        assert pred[1] == pytest.approx(np.clip(data.mu, data.rating_lo, data.rating_hi))
        assert pred[0] == pytest.approx(np.clip(data.mu + data.sigma * m.item_bias[0],
                                                data.rating_lo, data.rating_hi))
        assert np.isfinite(st.history[-1].test_rmse)
    finally:
        trainer.release()
        data.release()


def test_resident_blocks_give_identical_results_and_fall_back_when_missing(spark, small):
    """Later epochs send only chunk keys; a worker without the chunk reports it and the
    driver re-sends that block. Bit-identical factors either way."""
    import pmf_spark.engine.spark as train_mod
    trainer = Trainer(spark, small, P(rank=2, epochs=1, blocks=3))
    trainer.setup()
    assert not trainer.engine.uses_resident("user")      # tiny blocks are always sent
    assert 0 < trainer.engine.block_mb["item"] < train_mod.RESIDENT_MIN_BLOCK_MB
    trainer.release()
    monkey_min = train_mod.RESIDENT_MIN_BLOCK_MB
    train_mod.RESIDENT_MIN_BLOCK_MB = 0.0        # these test blocks are tiny
    try:
        _resident_checks(spark, small)
    finally:
        train_mod.RESIDENT_MIN_BLOCK_MB = monkey_min


def _resident_checks(spark, small):
    runs = {}
    for name, mb in (("off", 0), ("on", 256)):
        trainer = Trainer(spark, small, P(rank=4, epochs=4, blocks=3, resident_mb=mb))
        try:
            st = trainer.fit()
            runs[name] = (st, dict(trainer.engine.resident.stats))
        finally:
            trainer.release()
    (off, _), (on, stats) = runs["off"], runs["on"]
    np.testing.assert_array_equal(off.user, on.user)
    np.testing.assert_array_equal(off.item, on.item)
    assert stats["light_chunks"] > 0                     # epochs 2..4 went light
    # empty every worker's store: the next light run misses everything and re-sends it all
    trainer = Trainer(spark, small, P(rank=4, epochs=2, blocks=3, resident_mb=256))
    try:
        st = trainer.fit()
        spark.sparkContext.parallelize(range(8), 8).foreach(
            lambda _: __import__("pmf_spark.engine.layout", fromlist=["layout"]).resident_clear())
        trainer.engine.resident.token = "not-in-any-worker"   # and a key nobody holds
        trainer.half_step(st, "user")
        assert trainer.engine.resident.stats["resent_chunks"] > 0
        R, _ = dense_split(small)
        want = reference.half_step(R, st.item, lam=12.0, **ref_kwargs(trainer.params, small))
        np.testing.assert_allclose(st.user, want, atol=1e-8)
    finally:
        trainer.release()


def test_block_labels_use_sparks_own_hash(spark):
    from pmf_spark.engine.spark import spark_hash_int

    got = spark.range(-300, 3000).select(F.col("id").cast("int").alias("k"),
                                         F.hash(F.col("id").cast("int")).alias("h")).collect()
    assert all(spark_hash_int(r["k"]) == r["h"] for r in got)
