"""Every registered model through the same checks, so that a new model gets them by
adding its registry line: training improves it (its objective never rises, or its
samples stay finite and fit better than the mean), the Spark half-epoch equals the
local engine's, fold-in is the model's own user half-step, a saved model loads back
to the same predictions, and the declared capabilities agree with what the strategy
does."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from pmf_spark.config.params import PMFParams
from pmf_spark.engine.layout import TRAIN
from pmf_spark.engine.local import LocalData, LocalEngine
from pmf_spark.ml import PMFModel
from pmf_spark.ml.core import FactorCore
from pmf_spark.models import REGISTRY, capabilities
from pmf_spark.outputs.tables import ids_frame
from pmf_spark.recommend.foldin import fold_in_rows
from pmf_spark.serve import LocalModel
from pmf_spark.train.loop import Trainer, readout_of

from helpers import prepared, random_ratings

#: every registry entry with its defaults, and the variant a flag picks inside one
VARIANTS = [(name, {}) for name in REGISTRY] + [("pmf", {"priors": "diagonal"})]
IDS = [name + ("-" + "-".join(f"{v}" for v in extra.values()) if extra else "")
       for name, extra in VARIANTS]
BASE = dict(rank=3, blocks=2, lambda_u=2.0, lambda_v=2.0, lambda_bias=1.0, seed=5,
            recommend_by="rating", kernel="numpy")


def params_of(name: str, extra: dict, epochs: int) -> PMFParams:
    return PMFParams.of(model=name, epochs=epochs, **BASE, **extra)


@pytest.fixture(scope="module")
def data(spark):
    d = prepared(spark, random_ratings(1, 60, 40, 0.3), test_fraction=0.2)
    yield d
    d.release()


@pytest.fixture(scope="module")
def local(data):
    """The same indexed ratings as ``data``, in memory, with its statistics."""
    pdf = data.ratings.toPandas()
    kind = np.where(pdf.is_test.to_numpy(), 1, 0).astype(np.int8)
    return LocalData(u=pdf.u.to_numpy(np.int64), i=pdf.i.to_numpy(np.int64),
                     rating=pdf.rating.to_numpy(np.float64), kind=kind, n_users=data.n_users,
                     n_items=data.n_items, mu=data.mu, sigma=data.sigma,
                     rating_lo=data.rating_lo, rating_hi=data.rating_hi)


def local_trainer(local: LocalData, params: PMFParams) -> Trainer:
    t = Trainer(None, local, params, engine=LocalEngine(local))
    t.setup()
    return t


@pytest.mark.spark
@pytest.mark.parametrize(("name", "extra"), VARIANTS, ids=IDS)
def test_spark_epochs_equal_the_local_engine(spark, data, local, name, extra):
    params = params_of(name, extra, epochs=2)
    spark_t = Trainer(spark, data, params)
    try:
        spark_t.setup()
        local_t = local_trainer(local, params)
        a, b = spark_t.initial_state(), local_t.initial_state()
        np.testing.assert_array_equal(a.item, b.item)
        for _ in range(2):
            ma, mb = spark_t.run_epoch(a), local_t.run_epoch(b)
            np.testing.assert_allclose(a.user, b.user, rtol=0, atol=1e-8)
            np.testing.assert_allclose(a.item, b.item, rtol=0, atol=1e-8)
            for field in ("objective", "train_rmse", "test_rmse"):
                x, y = getattr(ma, field), getattr(mb, field)
                assert (np.isnan(x) and np.isnan(y)) or x == pytest.approx(y, rel=1e-9), field
    finally:
        spark_t.release()


@pytest.mark.spark
@pytest.mark.parametrize(("name", "extra"), VARIANTS, ids=IDS)
def test_every_model_saves_and_loads_to_the_same_predictions(spark, data, name, extra,
                                                            tmp_path):
    params = params_of(name, extra, epochs=2)
    trainer = Trainer(spark, data, params)
    try:
        state = trainer.fit()
        seen = ids_frame(data.ratings.where(~data.ratings.is_test), data).select(
            "user_id", "item_id", "rating")
        model = PMFModel(FactorCore.from_training(trainer, state, seen, None, {}))
        model.write().save(str(tmp_path / "m"))
    finally:
        trainer.release()
    back = PMFModel.load(str(tmp_path / "m"))
    local = LocalModel(str(tmp_path / "m"))
    for side in ("user", "item"):
        np.testing.assert_array_equal(back.core.side(side).factors, model.core.side(side).factors)
    assert back.pmf_params == model.pmf_params
    assert local.rates == capabilities(name).predicts_ratings
    pairs = seen.limit(20).toDF(model.getUserCol(), model.getItemCol(), "rating")
    a = model.transform(pairs).orderBy(model.getUserCol(), model.getItemCol())
    b = back.transform(pairs).orderBy(model.getUserCol(), model.getItemCol())
    np.testing.assert_allclose([r.prediction for r in a.collect()],
                               [r.prediction for r in b.collect()], rtol=0, atol=1e-12)
    uid = int(seen.first()["user_id"])
    f, _, _ = local.user_row(uid)
    at = int(np.flatnonzero(model.core.user.ids == uid)[0])
    np.testing.assert_array_equal(f, model.core.user.factors[at])


@pytest.mark.parametrize(("name", "extra"), VARIANTS, ids=IDS)
def test_training_improves_every_model(local, name, extra):
    params = params_of(name, extra, epochs=6)
    cls = REGISTRY[name]
    trainer = local_trainer(local, params)
    state = trainer.fit()
    hist = state.history
    assert len(hist) == trainer.total_epochs      # a sampler's burn-in and samples
    assert np.isfinite(state.user).all() and np.isfinite(state.item).all()
    if cls.has_objective and params.fit.priors == "fixed":
        objs = [m.objective for m in hist]
        assert all(b <= a * (1 + 1e-12) for a, b in zip(objs, objs[1:])), objs
        assert objs[-1] < objs[0]
    if cls.predicts_ratings and not cls.ranks:     # better than the mean for everyone
        assert hist[-1].train_rmse < local.sigma
    if cls.predicts_ratings:
        assert np.isfinite(hist[-1].test_rmse)
    else:                         # a preference model has no RMSE to report
        assert np.isnan(hist[-1].train_rmse)


@pytest.mark.parametrize(("name", "extra"), VARIANTS, ids=IDS)
def test_fold_in_is_the_user_half_step_of_the_model_that_folds_in(local, name, extra):
    params = params_of(name, extra, epochs=3)
    trainer = local_trainer(local, params)
    trained = trainer.fit()
    rank = params.model.rank
    tr = local.kind == TRAIN
    order = np.lexsort((local.i[tr], local.u[tr]))
    u, items, vals = local.u[tr][order], local.i[tr][order], local.rating[tr][order]
    indptr = np.zeros(local.n_users + 1, np.int64)
    np.cumsum(np.bincount(u, minlength=local.n_users), out=indptr[1:])
    feats, bias = fold_in_rows(params, trained.item[:, :rank], trained.item[:, rank],
                               trainer.counts["item"], readout_of(local, params), indptr,
                               items, vals)
    # what the engine makes of every user with the trained items fixed, under the model
    # that folds in (a sampler names the MAP model) from its initial priors
    folding = params.replace(model=capabilities(name).fold_in_as or name)
    fold_t = local_trainer(local, folding)
    state = fold_t.initial_state()
    state.item = trained.item.copy()
    state.extra = {k: np.zeros_like(v) for k, v in state.extra.items()
                   if isinstance(v, np.ndarray) and v.shape == state.item.shape}
    fold_t.half_step(state, "user")
    rows = np.flatnonzero(np.diff(indptr) > 0)
    np.testing.assert_allclose(feats[rows], state.user[rows, :rank], rtol=0, atol=1e-10)
    if params.model.biases:
        np.testing.assert_allclose(bias[rows], state.user[rows, rank], rtol=0, atol=1e-10)
    if folding.fit.model == name and params.fit.priors == "fixed":
        # and, for a model with fixed priors, its own next user update in training
        again = copy.deepcopy(trained)
        trainer.half_step(again, "user")
        np.testing.assert_allclose(feats[rows], again.user[rows, :rank], rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_declared_capabilities_hold(local, name):
    cls = REGISTRY[name]
    params = params_of(name, {}, epochs=1)
    if cls.fits_events:          # trained beside a rating model it takes ratings as events
        comp = PMFParams.of(recommend_by=name).companion()
        assert comp is not None and comp.fit.confidence == "presence"
    if cls.fold_in_as is not None:
        assert cls.fold_in_as in REGISTRY and REGISTRY[cls.fold_in_as].fold_in_as is None
    if cls.ranks:                # a ranking model can order a rating model's lists
        assert PMFParams.of(recommend_by=name).companion().fit.model == name
    if not cls.supports_early_stopping:
        with pytest.raises(Exception, match="early_stopping"):
            params.replace(early_stopping=2)
    trainer = local_trainer(local, params)
    m = trainer.run_epoch(trainer.initial_state())
    assert np.isnan(m.objective) != cls.has_objective
