"""Implicit feedback as input (--feedback implicit): (user, item) events with an optional
count or weight column; duplicates summed, zeros left out, negative or non-finite values
refused in one line; the job trains implicit-feedback ALS, writes ranking metrics and no
RMSE; on ML-100K taken as mere presence its lists beat the most popular items."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pmf_spark.config.files import IMPLICIT_DEFAULTS, resolve
from pmf_spark.errors import ConfigError, InputDataError
from pmf_spark.inputs.read import load_ratings
from pmf_spark.prepare.ratings import dedupe

import train_pmf

pytestmark = pytest.mark.spark


def _write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("value, message", [
    ("-3", "column 'plays': negative value -3 (user u2, item i1; 1 row(s)); implicit "
           "feedback values are counts or weights >= 0"),
    ("NaN", "column 'plays': non-finite value 'NaN' (1 row(s))"),
    ("inf", "column 'plays': non-finite value 'inf' (1 row(s))"),
    ("lots", "column 'plays': non-numeric value 'lots' (1 row(s))"),
    ("", "column 'plays': 1 row(s) with a missing value, e.g. user u2 item i1"),
])
def test_bad_values_are_refused_in_one_line(spark, tmp_path, value, message):
    path = _write(tmp_path / "plays.csv", f"user,item,plays\nu1,i1,2\nu2,i1,{value}\nu3,i2,1\n")
    with pytest.raises(InputDataError) as err:
        load_ratings(spark, path, feedback="implicit", value_col="plays")
    assert str(err.value) == f"ratings {path}, {message}"


def test_a_missing_value_column_is_named(spark, tmp_path):
    path = _write(tmp_path / "plays.csv", "user,item,plays\nu1,i1,2\n")
    with pytest.raises(InputDataError, match=r"no column 'count' for the feedback value "
                                             r"\(columns: user, item, plays\)"):
        load_ratings(spark, path, feedback="implicit", value_col="count")


def test_duplicates_are_summed_and_zero_values_left_out(spark, tmp_path):
    rng = np.random.default_rng(3)
    n = 400
    pdf = pd.DataFrame({"user": rng.integers(0, 15, n).astype(str),
                        "item": np.char.add("m", rng.integers(0, 12, n).astype(str)),
                        "plays": rng.choice([0, 0.5, 1, 3], n)})
    path = tmp_path / "events.csv"
    pdf.to_csv(path, index=False)
    clean = load_ratings(spark, str(path), feedback="implicit", value_col="plays")
    assert clean.implicit and clean.scale is None and clean.id_type == "string"
    merged, n_merged = dedupe(clean, "sum")
    got = merged.toPandas().set_index(["user", "item"]).rating.sort_index()
    want = pdf[pdf.plays > 0].groupby(["user", "item"]).plays.sum().sort_index()
    pd.testing.assert_series_equal(got, want, check_names=False)
    assert n_merged == int((pdf.plays > 0).sum()) - len(want)
    merged.unpersist()


def test_bare_pairs_count_each_row_once(spark, tmp_path):
    # a header-less file of two fields, and a rating column that implicit mode ignores
    pairs = _write(tmp_path / "pairs.csv", "7,a\n7,a\n7,b\n8,a\n")
    clean = load_ratings(spark, pairs, feedback="implicit")
    merged, _ = dedupe(clean, "sum")
    got = {(r.user, r.item): r.rating for r in merged.collect()}
    assert got == {("7", "a"): 2.0, ("7", "b"): 1.0, ("8", "a"): 1.0}
    merged.unpersist()
    rated = _write(tmp_path / "rated.csv", "user,item,rating\n1,x,1\n1,y,5\n")
    clean = load_ratings(spark, rated, feedback="implicit")
    assert sorted(r.rating for r in clean.df.collect()) == [1.0, 1.0]


def test_the_configuration_of_implicit_feedback():
    job, params = resolve(None, {"job": {"feedback": "implicit"}, "params": {}})
    assert job.on_duplicate == "sum"
    assert params.fit.model == "implicit" and params.companion() is None
    assert params.model.rank == IMPLICIT_DEFAULTS["rank"]
    assert params.fit.lambda_u == IMPLICIT_DEFAULTS["lambda_u"]
    assert params.fit.alpha == IMPLICIT_DEFAULTS["alpha"] and not params.model.biases
    _, mine = resolve(None, {"job": {"feedback": "implicit"}, "params": {"rank": 8}})
    assert mine.model.rank == 8
    for job_values, flat, message in [
        ({"feedback": "implicit"}, {"model": "pmf"}, "model: --feedback implicit trains"),
        ({"feedback": "implicit"}, {"recommend_by": "missing-data"}, "recommend_by: with"),
        ({"value_col": "plays"}, {}, "value_col: only with --feedback implicit"),
        ({"feedback": "implicit", "rating_min": 1.0}, {}, "rating_min: implicit feedback "
                                                         "has no rating scale"),
        ({"on_duplicate": "sum"}, {}, "on_duplicate: 'sum' adds implicit feedback"),
    ]:
        with pytest.raises(ConfigError, match=message):
            resolve(None, {"job": job_values, "params": flat})


def test_the_job_on_counts(spark, tmp_path, capsys):
    """Plays with a heavy tail through the job: no RMSE anywhere, ranking metrics with
    every held-out pair relevant, the lists from implicit ALS."""
    rng = np.random.default_rng(0)
    taste = rng.normal(size=(60, 3)) @ rng.normal(size=(3, 40))
    u, i = np.nonzero(taste > 0.8)
    plays = rng.geometric(0.3, u.size)
    pd.DataFrame({"listener": np.char.add("L", u.astype(str)), "track": i, "plays": plays}) \
        .to_csv(tmp_path / "plays.csv", index=False)
    out = tmp_path / "out"
    code = train_pmf.main(["--ratings", str(tmp_path / "plays.csv"), "--feedback", "implicit",
                           "--value-col", "plays", "--user-col", "listener", "--item-col",
                           "track", "--output", str(out), "--epochs", "4", "--rank", "4",
                           "--blocks", "2"], spark=spark)
    err = capsys.readouterr().err
    assert code == 0, err
    assert "test rmse" not in err
    assert "judged by the ranking metrics (no RMSE)" in err
    assert "the lists are ranked by the implicit model, trained on implicit feedback" in err
    assert "rating model" not in err
    # no rating words for events: no mean/std/range of values, no threshold of 0, no biases
    assert "test pairs (implicit feedback)" in err and ", std " not in err
    assert "every held-out pair relevant" in err and "relevant >=" not in err
    assert "known side's bias" not in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final"]["test_rmse"] is None and metrics["epochs"][0]["train_rmse"] is None
    assert metrics["ranking"]["model"]["relevance_threshold"] == 0.0
    assert metrics["ranking"]["ranked_by"] == "implicit"
    meta = json.loads((out / "model.json").read_text())
    assert meta["fit"]["model"] == "implicit" and meta["job"]["feedback"] == "implicit"
    recs = pd.read_parquet(out / "recommendations")
    assert recs.user_id.str.startswith("L").all() and len(recs) > 0
    report = (out / "report.html").read_text()
    assert "not applicable: the model scores preferences" in report
    assert "test RMSE" not in report and "nan / nan" not in report
    assert "every held-out pair is relevant" in report and "test rating &ge;" not in report


@pytest.mark.movielens
def test_presence_on_ml100k_beats_popularity(spark, ml100k, tmp_path, report):
    out = tmp_path / "presence"
    code = train_pmf.main(["--ratings", str(ml100k / "u.data"), "--feedback", "implicit",
                           "--output", str(out), "--no-report"], spark=spark)
    assert code == 0
    ranking = json.loads((out / "metrics.json").read_text())["ranking"]
    ours, pop = ranking["model"], ranking["popular"]
    report(f"ML-100K as presence (implicit ALS defaults), every held-out pair relevant: "
           f"precision@10 {ours['precision']:.4f} vs popular {pop['precision']:.4f}, "
           f"NDCG@10 {ours['ndcg']:.4f} vs {pop['ndcg']:.4f}")
    assert ours["precision"] >= 1.5 * pop["precision"]
    assert ours["ndcg"] >= 1.5 * pop["ndcg"]


def test_planted_groups_are_recovered_as_top_items():
    """Three taste groups, each user with events on ~40% of their group's items and a
    few stray ones: implicit ALS (one process, the job's strategy and kernels) puts the
    user's unseen group items at the top of their list."""
    from pmf_spark.config.params import PMFParams
    from pmf_spark.engine.local import LocalData, LocalEngine
    from pmf_spark.train.loop import Trainer

    rng = np.random.default_rng(11)
    n_users, n_items, groups = 90, 60, 3
    ug, ig = np.arange(n_users) % groups, np.arange(n_items) % groups
    p = np.where(ug[:, None] == ig[None, :], 0.4, 0.02)
    u, i = np.nonzero(rng.random((n_users, n_items)) < p)
    counts = rng.geometric(0.5, u.size).astype(float)
    data = LocalData.from_arrays(u, i, counts, np.zeros(u.size, np.int8), n_users, n_items,
                                 0.0, float(counts.max()))
    params = PMFParams.of(model="implicit", rank=3, lambda_u=1.0, lambda_v=1.0, alpha=2.0,
                          epochs=15, recommend_by="implicit")
    trainer = Trainer(None, data, params, engine=LocalEngine(data))
    m = trainer.model(trainer.fit())
    scores = m.U @ m.V.T
    scores[u, i] = -np.inf                      # the user's own events are not candidates
    top = np.argsort(-scores, axis=1)[:, :5]
    share = float((ig[top] == ug[:, None]).mean())
    assert share >= 0.95, share
