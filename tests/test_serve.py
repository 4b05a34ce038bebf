"""Answers without Spark (pmf_spark.serve.local, recommend.py --engine local): the same answers
as the Spark path, one user's answer from a large model equal to the brute-force one
with no JVM and no pyspark import (benchmarks/serve_one_user.py times it at MovieLens-10M
size), bulk fold-in on both engines,
top users per item and similar users as tables and as answers, the allow-list."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pmf_spark.config.params import JobConfig, PMFParams
from pmf_spark.errors import InputDataError
from pmf_spark.serve import LocalModel
from pmf_spark.serve.files import parse_rating_lines
from pmf_spark.serve.saved import SavedModel
from pmf_spark.train import job as pipeline

import recommend as recommend_job
from helpers import brute_force_top_k, random_ratings, shaped_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    """A tenth of MovieLens 10M's shape (1 M ratings in row groups of 300,000): the
    Spark-free path's reading of many row groups and large tables, in seconds
    (benchmarks/serve_one_user.py times the full shape)."""
    root = tmp_path_factory.mktemp("big-shape") / "model"
    info = shaped_model(root, 7_000, 1_100, 1_000_000, row_group_size=300_000)
    return root, info


def test_one_user_without_spark_is_the_brute_force_answer_and_loads_no_pyspark(big_model):
    root, info = big_model
    user = int(info["users"][1234])
    cmd = [sys.executable, str(ROOT / "jobs" / "recommend.py"), "--model", str(root), "--user",
           str(user), "--items", str(root.parent / "movies.dat")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    block = proc.stdout.split("Top 10 recommendations")[1].strip().splitlines()
    at, shown = block[1].split().index("item"), block[2:]
    assert [int(ln.split()[at]) for ln in shown] == brute_force_top_k(root, user, 10)
    assert "Film " in shown[0]                                    # titles from movies.dat
    # and no JVM, no pyspark: the module never imports it
    probe = ("import runpy, sys\nsys.argv = sys.argv[1:]\ntry:\n"
             "    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit as e:\n"
             "    assert not e.code, e.code\n"
             "print('loaded:', sorted(m for m in sys.modules if m.split('.')[0] in "
             "('pyspark', 'py4j')))\n")
    proc = subprocess.run([sys.executable, "-c", probe, *cmd[1:]], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "loaded: []"


@pytest.mark.spark
def test_big_model_answers_equal_the_spark_path(spark, big_model):
    root, info = big_model
    local, saved = LocalModel(str(root)), SavedModel(spark, str(root))
    for user in (int(info["users"][0]), int(info["users"][4000]), 424242424):
        a, b = local.recommend(user, 10), saved.recommend(user, 10)
        assert a.item_id.tolist() == b.item_id.tolist()
        np.testing.assert_array_equal(a.score.to_numpy(), b.score.to_numpy())
        assert a.cold_start.all() == (user == 424242424)


# ----------------------------------------------------------------------- both engines

@pytest.fixture(scope="module")
def trained_dir(spark, tmp_path_factory):
    """A real training run with every user-side table, an allow-list and exclusions."""
    base = tmp_path_factory.mktemp("serve")
    pdf = random_ratings(17, 90, 60, 0.3)
    ratings = base / "ratings.csv"
    pdf.to_csv(ratings, index=False)
    items = sorted(pdf.item.unique())
    (base / "allowed.txt").write_text("\n".join(str(x) for x in items[::2]) + "\n")
    (base / "excluded.txt").write_text(f"{items[0]}\n{items[2]}\n")
    (base / "targets.txt").write_text(f"{items[1]}\n{items[4]}\n999999\n")
    out = base / "model"
    cfg = JobConfig(ratings=str(ratings), output=str(out), top_k=5,
                    candidates=str(base / "allowed.txt"),
                    exclude_items=str(base / "excluded.txt"), similar_items=4,
                    users_per_item=6, users_per_item_items=str(base / "targets.txt"),
                    similar_users=3, id_type="integer")
    res = pipeline.run_training(spark, cfg, PMFParams.of(rank=4, epochs=4, blocks=2))
    res.trainer.release()
    res.data.release()
    return base, out, pdf


@pytest.mark.spark
def test_allow_list_and_user_tables_of_the_job(trained_dir):
    base, out, pdf = trained_dir
    allowed = {int(x) for x in (base / "allowed.txt").read_text().split()}
    excluded = {int(x) for x in (base / "excluded.txt").read_text().split()}
    recs = pd.read_parquet(out / "recommendations")
    assert set(recs.item_id) <= allowed - excluded and len(recs) == 5 * pdf.user.nunique()
    train = pd.read_parquet(out / "train_ratings")
    model = LocalModel(str(out))
    item_users = pd.read_parquet(out / "item_users")
    targets = [int(x) for x in (base / "targets.txt").read_text().split()][:2]
    assert sorted(item_users.item_id.unique()) == sorted(targets)   # only the listed items
    assert item_users.merge(train, on=["user_id", "item_id"]).empty  # never a rater
    for item in targets:
        got = item_users[item_users.item_id == item].sort_values("rank")
        want = model.users_for_item(item, 6)
        assert got.user_id.tolist() == want.user_id.tolist()
        np.testing.assert_allclose(got.score, want.score, rtol=0, atol=1e-12)
        # brute force: every user with training ratings, scored by the model that orders
        # the lists (the ranking model beside the rating model), raters removed
        users = pd.read_parquet(out / "ranking_user_factors")
        items = pd.read_parquet(out / "ranking_item_factors").set_index("item_id")
        s = np.stack(users.features) @ items.features[item] + users.bias + items.bias[item]
        keep = (users.n_ratings > 0) & ~users.user_id.isin(train[train.item_id == item].user_id)
        best = users[keep].assign(s=s[keep]).sort_values(["s", "user_id"],
                                                         ascending=[False, True])
        assert got.user_id.tolist() == best.user_id.head(6).tolist()
    neighbours = pd.read_parquet(out / "user_neighbors")
    assert (neighbours.user_id != neighbours.neighbor_id).all()
    for user in neighbours.user_id.unique()[:10]:
        got = neighbours[neighbours.user_id == user].sort_values("rank")
        assert got.neighbor_id.tolist() == model.similar_users(user, 3).neighbor_id.tolist()
    doc = (ROOT / "docs" / "outputs.md").read_text()
    assert "### `item_users`" in doc and "### `user_neighbors`" in doc
    # standard JSON: NaN metrics (no validation split) are null
    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    for name in ("model.json", "metrics.json"):
        json.loads((out / name).read_text(), parse_constant=refuse)
    assert json.loads((out / "metrics.json").read_text())["epochs"][0]["val_rmse"] is None
    report = (out / "report.html").read_text()
    for words in (str(base / "ratings.csv"), "run at (UTC)",
                  "train/test 85%/15% by a seeded hash (seed 0)", "phases",
                  "The lists are ranked by the <b>missing-data</b> model"):
        assert words in report, words


@pytest.mark.spark
def test_both_engines_print_the_same_answers(spark, trained_dir, capsys):
    base, out, pdf = trained_dir
    user, item = int(pdf.user.iloc[0]), int(pdf.item.iloc[3])
    (base / "mine.csv").write_text(f"item_id,rating\n{item},5\n{pdf.item.iloc[7]},2\n")
    questions = [["--user", str(user)], ["--user", "31337"], ["--similar-items", str(item)],
                 ["--users-for-item", str(item)], ["--similar-users", str(user)],
                 ["--ratings-for-new-user", str(base / "mine.csv")],
                 ["--user", str(user), "--candidates", str(base / "allowed.txt"),
                  "--min-item-ratings", "3", "--top-k", "4"]]
    for q in questions:
        argv = ["--model", str(out), *q]
        assert recommend_job.main([*argv, "--engine", "local"]) == 0
        local = capsys.readouterr().out
        assert recommend_job.main(argv, spark=spark) == 0
        assert capsys.readouterr().out == local, q
        assert "rank" in local
    allowed = {x for x in (base / "allowed.txt").read_text().split()}
    block = local.split("recommendations")[1].strip().splitlines()
    at, shown = block[1].split().index("item"), block[2:]
    assert len(shown) == 4 and {ln.split()[at] for ln in shown} <= allowed


@pytest.mark.spark
def test_bulk_fold_in_and_lists_agree_across_engines_and_the_api(spark, trained_dir, tmp_path):
    base, out, pdf = trained_dir
    rows = pdf[pdf.user.isin(pdf.user.unique()[:25])]
    new = pd.DataFrame({"user_id": rows.user + 10_000, "item_id": rows.item,
                        "rating": rows.rating})
    new = pd.concat([new, pd.DataFrame({"user_id": [77], "item_id": [123456],
                                        "rating": [4.0]})])       # only an unknown item
    path = tmp_path / "new.csv"
    new.to_csv(path, index=False)
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(str(u) for u in pdf.user.unique()[:7]) + "\n424242\n")
    for flag, source in (("--new-users", path), ("--users", ids)):
        got = {}
        for engine in ("local", "spark"):
            dest = tmp_path / f"{flag[2:]}-{engine}"
            argv = ["--model", str(out), flag, str(source), "--output", str(dest), "--engine",
                    engine]
            assert recommend_job.main(argv, spark=spark if engine == "spark" else None) == 0
            got[engine] = {t: pd.read_parquet(dest / t).sort_values(
                ["user_id", "rank"] if t == "recommendations" else ["user_id"]).reset_index(
                drop=True) for t in ("recommendations", "user_factors") if (dest / t).exists()}
            assert "model" in json.loads((dest / "_SUCCESS").read_text())
        assert got["local"].keys() == got["spark"].keys()
        for t in got["local"]:
            a, b = got["local"][t], got["spark"][t]
            assert a.columns.tolist() == b.columns.tolist() and len(a) == len(b)
            assert (a.dtypes == b.dtypes).all()
            for c in a.columns:
                if c == "features":
                    assert a[c].isna().tolist() == b[c].isna().tolist()
                    np.testing.assert_allclose(np.stack(a[c].dropna()), np.stack(b[c].dropna()),
                                               atol=1e-12)
                elif a[c].dtype.kind == "f":
                    np.testing.assert_allclose(a[c], b[c], atol=1e-12)
                else:
                    assert a[c].tolist() == b[c].tolist(), (t, c)
    folded = pd.read_parquet(tmp_path / "new-users-local" / "user_factors")
    assert folded.loc[folded.user_id == 77, "n_ratings"].item() == 0
    recs = pd.read_parquet(tmp_path / "new-users-local" / "recommendations")
    assert recs[recs.user_id == 77].cold_start.all()
    assert not recs[recs.user_id != 77].cold_start.any()
    rated = new.groupby("user_id").item_id.apply(set)
    assert not any(r.item_id in rated[r.user_id] for r in recs.itertuples())
    # the API: the same fold-in from a DataFrame
    from pmf_spark import PMF

    api_factors, api_recs = PMF.load(str(out), spark).fold_in_users(
        spark.createDataFrame(new.rename(columns={"user_id": "user", "item_id": "item"})), k=5)
    api = api_factors.toPandas().sort_values("user_id").reset_index(drop=True)
    np.testing.assert_allclose(np.stack(api.features.dropna()),
                               np.stack(folded.sort_values("user_id").features.dropna()),
                               atol=1e-12)
    assert api_recs.count() == len(recs)
    # an output directory that is not an answer is never replaced
    mine = tmp_path / "precious"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    code = recommend_job.main(["--model", str(out), "--users", str(ids), "--output", str(mine),
                               "--engine", "local"])
    assert code == 2 and (mine / "notes.txt").read_text() == "keep me"


# ----------------------------------------------------------------------- no Spark at all

def test_engine_is_chosen_by_the_size_of_the_question(tmp_path):
    parse = recommend_job.build_parser().parse_args
    few, many = tmp_path / "few.txt", tmp_path / "many.txt"
    few.write_text("1\n2\n")
    many.write_text("".join(f"{n}\n" for n in range(recommend_job.LOCAL_MAX_LINES + 1)))
    choose = recommend_job.choose_engine
    assert choose(parse(["--model", "m", "--user", "1"])) == "local"
    assert choose(parse(["--model", "m", "--users", str(few), "--output", "o"])) == "local"
    assert choose(parse(["--model", "m", "--users", str(many), "--output", "o"])) == "spark"
    assert choose(parse(["--model", "hdfs:///m", "--user", "1"])) == "spark"
    assert choose(parse(["--model", "m", "--users", str(many), "--engine", "local"])) == "local"
    assert choose(parse(["--model", "m", "--user", "1", "--engine", "spark"])) == "spark"


def test_rating_lines_are_read_the_same_way_everywhere():
    lines = ["# mine", "user_id,item_id,rating", "1,10,4.5", "2\t11\t3\t881250949", "",
             "3::12::5"]
    frame, problem = parse_rating_lines(lines, ("user_id", "item_id", "rating"), "long", 1, 5)
    assert problem is None
    assert frame.values.tolist() == [[1, 10, 4.5], [2, 11, 3.0], [3, 12, 5.0]]
    layout = ("item_id", "rating")
    for bad, why in (("10,x", "non-numeric rating 'x'"), ("10,9", "outside [1, 5]"),
                     ("10", "is not 'item_id,rating'"), ("a1,4", "item_id 'a1' is not an integer"),
                     ("10,nan", "outside")):
        assert why in parse_rating_lines([bad], layout, "long", 1, 5)[1], bad
    frame, _ = parse_rating_lines(["007,4"], layout, "string", 1, 5)
    assert frame.item_id.tolist() == ["007"]                      # ids are data


def test_local_errors_are_one_line(tmp_path, capsys):
    out = tmp_path / "nothing"
    assert recommend_job.main(["--model", str(out), "--user", "1"]) == 2
    assert capsys.readouterr().err.strip() == \
        f"error: model {out}: no model.json (not a pmf-spark model directory?)"
    with pytest.raises(InputDataError, match="no such file"):
        from pmf_spark.inputs.titles import read_titles_local
        read_titles_local(str(tmp_path / "u.item"), [1])


@pytest.mark.spark
def test_a_fitted_model_folds_in_users_and_takes_an_allow_list(spark):
    from pmf_spark import PMF
    from pmf_spark.kernels import reference

    pdf = random_ratings(29, 40, 30, 0.35)
    model = PMF(rank=3, epochs=2, blocks=2).fit(spark.createDataFrame(pdf))
    items = sorted(pdf.item.unique())
    allowed = items[1::3]
    recs = model.recommend_for_all_users(4, candidates=allowed, exclude=[allowed[0]]).toPandas()
    assert set(recs.item_id) <= set(allowed[1:])
    left = pdf.groupby("user").item.apply(lambda rated: min(4, len(set(allowed[1:]) - set(rated))))
    assert recs.groupby("user_id").size().to_dict() == left[left > 0].to_dict()
    new = pd.DataFrame({"user": [1, 1, 1, 2], "item": [items[0], items[5], items[9], items[2]],
                        "rating": [5.0, 1.0, 3.5, 4.0]})
    factors, new_recs = model.fold_in_users(spark.createDataFrame(new), k=3)
    got = factors.toPandas().set_index("user_id")
    itf = model.item_factors.toPandas().set_index("item_id").loc[items]
    fixed = np.hstack([np.stack(itf.features), itf.bias.to_numpy()[:, None]])
    R = np.full((2, len(items)), np.nan)
    for r in new.itertuples():
        R[r.user - 1, items.index(r.item)] = r.rating
    m = model.meta
    want = reference.half_step(R, fixed, rank=3, lam=12.0, lam_bias=3.0, biases=True,
                               count_scaling=False, mu=m["mu"], sigma=m["sigma"])
    for user in (1, 2):
        np.testing.assert_allclose(np.r_[got.features[user], got.bias[user]], want[user - 1],
                                   atol=1e-10)
    shown = new_recs.toPandas()
    assert len(shown) == 6 and not set(shown[shown.user_id == 1].item_id) & set(new.item[:3])


def test_pmf_recommend_is_an_installed_command(capsys):
    from importlib.metadata import entry_points

    found = [e for e in entry_points(group="console_scripts") if e.name == "pmf-recommend"]
    assert found, "pmf-recommend is not installed: pip install -e . again"
    assert found[0].load()(["--help"]) == 0
    assert "--users-for-item" in capsys.readouterr().out
