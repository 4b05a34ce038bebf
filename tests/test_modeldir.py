"""The model directory has one owner (:mod:`pmf_spark.outputs.modeldir`): a model
written by each writer (the training job, ``PMFModel.save``) is read the same way by
each reader (the Spark-free answers, the Spark answers, ``PMFModel.load``, fold-in,
warm start), and no other module spells the directory's names."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import numpy as np
import pytest

from pmf_spark.config.params import JobConfig, PMFParams
from pmf_spark.ml import PMFModel
from pmf_spark.outputs import modeldir
from pmf_spark.serve import LocalModel
from pmf_spark.serve.saved import SavedModel
from pmf_spark.train import job as pipeline

from helpers import random_ratings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def written(spark, tmp_path_factory):
    """One model through each writer: the job's directory and PMFModel.save of it."""
    base = tmp_path_factory.mktemp("modeldir")
    pdf = random_ratings(31, 80, 50, 0.3)
    pdf.to_csv(base / "ratings.csv", index=False)
    cfg = JobConfig(ratings=str(base / "ratings.csv"), output=str(base / "job"), top_k=5,
                    report=False, id_type="integer")
    res = pipeline.run_training(spark, cfg, PMFParams.of(rank=4, epochs=4, blocks=2,
                                                         ranking_rank=3, ranking_epochs=3))
    res.trainer.release()
    res.data.release()
    PMFModel.load(str(base / "job")).write().save(str(base / "saved"))
    return base, pdf


@pytest.mark.spark
def test_each_writer_s_directory_reads_the_same_through_each_reader(spark, written, caplog):
    base, pdf = written
    users = [int(u) for u in pdf.user.unique()[:3]] + [123456789]     # and one unknown
    items = pdf.item.unique()[:4].tolist()
    answers = {}
    for which in ("job", "saved"):
        path = str(base / which)
        names = {p.name for p in (base / which).iterdir()}
        assert {modeldir.META, *modeldir.FACTOR_TABLES.values(), *modeldir.VOCAB_TABLES.values(),
                modeldir.TRAIN_RATINGS, modeldir.TEST_RATINGS,
                *(modeldir.factors_table(s, ranking=True) for s in modeldir.SIDES)} <= names
        local, saved = LocalModel(path), SavedModel(spark, path)
        loaded = PMFModel.load(path)
        assert local.ranker is not None and saved.ranker is not None
        for u in users:
            a, b = local.recommend(u, 5), saved.recommend(u, 5)
            assert a.item_id.tolist() == b.item_id.tolist()
            np.testing.assert_array_equal(a.score.to_numpy(), b.score.to_numpy())
            answers.setdefault(u, []).append(a)
        folds = [m.fold_in(items, [5, 4, 1, 3]) for m in (local, saved)]
        np.testing.assert_array_equal(folds[0][0], folds[1][0])
        answers.setdefault("fold", []).append(folds[0][0])
        # PMFModel.load predicts what the factors LocalModel read say
        pairs = spark.createDataFrame([(users[0], int(items[0]))],
                                      [loaded.getUserCol(), loaded.getItemCol()])
        got = loaded.transform(pairs).first()["prediction"]
        f, b, _ = local.user_row(users[0])
        at = local.item_idx([items[0]])[0]
        z = float(f @ local.items.F[at] + b + local.items.bias[at])
        assert got == pytest.approx(float(local.readout.to_rating(np.array([z]))[0]), abs=1e-9)
        if which == "job":      # test_warmstart.py starts from the job's directory
            continue
        # warm start reads PMFModel.save's directory too: a retraining starts from it
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="pmf_spark"):
            cfg = JobConfig(ratings=str(base / "ratings.csv"), output=str(base / f"w-{which}"),
                            top_k=0, report=False, id_type="integer", warm_start=path)
            res = pipeline.run_training(spark, cfg, PMFParams.of(rank=4, epochs=1, blocks=2,
                                                                 ranking_rank=3))
            res.trainer.release()
            res.data.release()
        text = caplog.text
        assert f"warm start from {path}: 80 of 80 user(s)" in text
        assert "the missing-data ranking model starts from its factors too" in text
    # both writers wrote the same model
    for key, pair in answers.items():
        if key == "fold":
            np.testing.assert_allclose(pair[0], pair[1], rtol=0, atol=1e-12)
        else:
            assert pair[0].item_id.tolist() == pair[1].item_id.tolist()


def _literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


#: the same word meaning something else: ALS's column of a user's list (Spark ML's name)
NOT_A_TABLE = {("pmf_spark/ml/recs.py", "recommendations")}


def test_no_module_but_the_owner_spells_the_directory_s_names():
    names = {modeldir.META, modeldir.METRICS_JSON, modeldir.METRICS_CSV,
             *modeldir.ALL_TABLES}
    owner = ROOT / "pmf_spark" / "outputs" / "modeldir.py"
    found = [f"{p.relative_to(ROOT)}:{line} {value!r}"
             for p in sorted([*(ROOT / "pmf_spark").rglob("*.py"), *(ROOT / "jobs").glob("*.py")])
             if p != owner for line, value in _literals(p)
             if (value in names or value.strip("/") in names)
             and (str(p.relative_to(ROOT)), value) not in NOT_A_TABLE]
    assert not found, "model-directory names spelled outside outputs/modeldir.py:\n" + \
        "\n".join(found)
