"""Warm starts: a retraining after new ratings starts from the previous model's factors
(persisting ids predict exactly what the previous model did, new ids start at the prior
mean) and needs fewer epochs; through the job, and refused for a model of another rank."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from pmf_spark.config.params import JobConfig, PMFParams
from pmf_spark.prepare.ratings import prepare
from pmf_spark.train import job as pipeline
from pmf_spark.train.loop import Trainer
from pmf_spark.train.warmstart import warm_start_state

import train_pmf
from helpers import clean_from_pandas, random_ratings

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def grown(spark, tmp_path_factory):
    """A previous model trained without 5% of the ratings, 4 users and 3 items, and the
    full data those were added to."""
    base = tmp_path_factory.mktemp("warm")
    full = random_ratings(23, 120, 70, 0.3)
    rng = np.random.default_rng(5)
    new_users, new_items = full.user.unique()[-4:], full.item.unique()[-3:]
    added = (rng.random(len(full)) < 0.05) | full.user.isin(new_users) | full.item.isin(new_items)
    full.to_csv(base / "full.csv", index=False)
    full[~added].to_csv(base / "old.csv", index=False)
    cfg = JobConfig(ratings=str(base / "old.csv"), output=str(base / "previous"), top_k=0,
                    report=False, id_type="integer")
    res = pipeline.run_training(spark, cfg, PMFParams.of(rank=5, epochs=8, blocks=2,
                                                         ranking_rank=4))
    res.trainer.release()
    res.data.release()
    return base, full, new_users, new_items


def test_persisting_ids_start_from_the_previous_predictions(spark, grown):
    base, full, new_users, new_items = grown
    data = prepare(clean_from_pandas(spark, full), None, test_fraction=0.15, split_seed=0,
                   on_duplicate="error")
    trainer = Trainer(spark, data, PMFParams.of(rank=5, epochs=10, blocks=2,
                                                recommend_by="rating"))
    try:
        state = warm_start_state(spark, str(base / "previous"), trainer)
        users = data.users.toPandas().set_index("id")
        items = data.items.toPandas().set_index("id")
        prev_u = pd.read_parquet(base / "previous" / "user_factors").set_index("user_id")
        prev_i = pd.read_parquet(base / "previous" / "item_factors").set_index("item_id")
        meta = json.loads((base / "previous" / "model.json").read_text())
        uid = [u for u in prev_u.index if prev_u.n_ratings[u] > 0 and u in users.index][:20]
        iid = [i for i in prev_i.index if prev_i.n_ratings[i] > 0 and i in items.index][:20]
        # the new run's read-out of the initial state = the previous model's prediction
        U = state.user[users.idx[uid].to_numpy()]
        V = state.item[items.idx[iid].to_numpy()]
        z1 = U[:, :5] @ V[:, :5].T + U[:, 5:6] + V[:, 5][None, :]
        pu, pi = np.stack(prev_u.features[uid]), np.stack(prev_i.features[iid])
        z0 = pu @ pi.T + prev_u.bias[uid].to_numpy()[:, None] + prev_i.bias[iid].to_numpy()
        np.testing.assert_allclose(data.mu + data.sigma * z1, meta["mu"] + meta["sigma"] * z0,
                                   rtol=0, atol=1e-9)
        assert data.mu != meta["mu"]                  # so the rescaling did something
        for ids, vocab, m in ((new_users, users, state.user), (new_items, items, state.item)):
            assert not m[vocab.idx[list(ids)].to_numpy()].any()   # the prior mean
        # fewer epochs to the cold run's final test RMSE
        cold = trainer.fit()
        warm = trainer.fit(warm_start_state(spark, str(base / "previous"), trainer))
        target = cold.history[-1].test_rmse + 0.002
        first = {name: next(m.epoch for m in st.history if m.test_rmse <= target)
                 for name, st in (("cold", cold), ("warm", warm))}
        assert warm.history[0].test_rmse < cold.history[0].test_rmse
        assert first["warm"] < first["cold"], first
    finally:
        trainer.release()
        data.release()


def test_warm_start_through_the_job_and_a_wrong_rank(spark, grown, tmp_path, capsys):
    base, full, new_users, _ = grown
    out = tmp_path / "again"

    def job(rank: int, warm, id_type: str = "integer") -> int:
        return train_pmf.main(["--ratings", str(base / "full.csv"), "--output", str(out),
                               "--rank", str(rank), "--ranking-rank", "4", "--epochs", "2",
                               "--top-k", "0", "--id-type", id_type,
                               "--no-report", "--blocks", "2", "--warm-start", str(warm)],
                              spark=spark)

    assert job(5, base / "previous") == 0
    text = capsys.readouterr().err
    found = re.search(r"warm start from \S+: (\d+) of (\d+) user\(s\) and (\d+) of (\d+) "
                      r"item\(s\)", text)
    assert found, text
    kept_u, all_u, kept_i, all_i = map(int, found.groups())
    assert all_u - kept_u >= len(new_users) and 0 < kept_u and 0 < kept_i <= all_i - 3
    assert "the missing-data ranking model starts from its factors too" in text
    meta = json.loads((out / "model.json").read_text())
    assert meta["job"]["warm_start"] == str(base / "previous")
    assert job(7, base / "previous") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: warm-start {base / 'previous'}: its factors have 5 dimensions "
                       f"(a pmf model); this run trains rank 7 (a warm start needs the same "
                       f"rank)")
    assert job(5, tmp_path / "nope") == 2
    assert "no model.json" in capsys.readouterr().err
    # a previous model of integer ids never meets this run's string ids ("007" is not 7)
    assert job(5, base / "previous", "string") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: warm-start {base / 'previous'}: its user ids are bigint, this "
                       "run's are string; pass --id-type integer to read the ratings the way "
                       "the previous run did")
