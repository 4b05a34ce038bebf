"""Implicit feedback: pmf-spark's implicit-feedback ALS vs Spark MLlib's
``ALS(implicitPrefs=True)`` on the same events, one run, one session.

    .venv/bin/python benchmarks/implicit_vs_mllib.py [--data ../shared/data/ml-100k/u.data]

The ratings are taken as mere presence (every rated pair is one event, the rating is
ignored: ``--feedback implicit``), split 85/15 by the job's seeded hash (seed 0). Both
models see the same training pairs with value 1 and are scored the same way, in
numpy from their factors: each user's top-10 of the items with training events, the
user's training items excluded, relevant = any held-out pair. Rows:

- ``pmf-spark defaults``: the job's implicit-feedback defaults (rank 30, lambda 20,
  alpha 1, 20 epochs: ``pmf_spark.config.files.IMPLICIT_DEFAULTS``);
- ``mllib defaults``: ``ALS(implicitPrefs=True, rank=30, maxIter=20)`` with its own
  defaults (regParam 0.1, alpha 1.0);
- ``mllib alpha 5``: the same with alpha 5 and the best regParam of a small grid
  (0.01, 0.1, 1) chosen on a validation fold carved from the training pairs;
- ``most popular``: the training pairs' counts.

Writes benchmarks/results/implicit-vs-mllib.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, md_table, ml100k_dir, session, write_results  # noqa: E402


def top_lists(scores: np.ndarray, seen: list[set], k: int, trained: np.ndarray) -> np.ndarray:
    s = scores.copy()
    s[:, ~trained] = -np.inf
    for u, items in enumerate(seen):
        if items:
            s[u, list(items)] = -np.inf
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def metrics(lists: np.ndarray, relevant: list[set], k: int) -> dict:
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    p, n, users = [], [], 0
    for u, rel in enumerate(relevant):
        if not rel:
            continue
        users += 1
        hits = np.array([j in rel for j in lists[u]], dtype=float)
        p.append(hits.sum() / k)
        n.append((hits * disc).sum() / disc[:min(len(rel), k)].sum())
    return {"precision": float(np.mean(p)), "ndcg": float(np.mean(n)), "users": users}


def mllib_factors(spark, train_df, n_users, n_items, rank, iters, reg, alpha, seed=0):
    from pyspark.ml.recommendation import ALS

    als = ALS(rank=rank, maxIter=iters, regParam=reg, alpha=alpha, implicitPrefs=True,
              userCol="u", itemCol="i", ratingCol="rating", seed=seed)
    t0 = time.perf_counter()
    model = als.fit(train_df)
    U = np.zeros((n_users, rank))
    V = np.zeros((n_items, rank))
    for row in model.userFactors.collect():
        U[row.id] = row.features
    for row in model.itemFactors.collect():
        V[row.id] = row.features
    return U, V, time.perf_counter() - t0


def main(argv=None) -> int:
    from pmf_spark.config.files import resolve
    from pmf_spark.inputs.read import load_ratings
    from pmf_spark.prepare.ratings import prepare
    from pmf_spark.train.loop import Trainer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ml100k_dir() / "u.data"))
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args(argv)
    spark = session("implicit vs mllib")
    # MLlib's ALS at 20 iterations overflows the JVM stack serialising its lineage unless
    # it can checkpoint (checkpointInterval 10 needs a directory)
    import tempfile

    spark.sparkContext.setCheckpointDir(tempfile.mkdtemp(prefix="implicit-vs-mllib-"))
    import logging

    logging.getLogger("pmf_spark").setLevel(logging.WARNING)
    job, params = resolve(None, {"job": {"feedback": "implicit", "ratings": args.data},
                                 "params": {}})
    clean = load_ratings(spark, args.data, feedback="implicit")
    data = prepare(clean, None, test_fraction=0.15, split_seed=0, on_duplicate="sum")
    pdf = data.ratings.select("u", "i", "rating", "is_test").toPandas()
    tr, te = pdf[~pdf.is_test], pdf[pdf.is_test]
    nu, ni = data.n_users, data.n_items
    seen: list[set] = [set() for _ in range(nu)]
    relevant: list[set] = [set() for _ in range(nu)]
    for u, i in zip(tr.u, tr.i):
        seen[u].add(i)
    for u, i in zip(te.u, te.i):
        relevant[u].add(i)
    trained = np.bincount(tr.i, minlength=ni) > 0
    rows, out = [], {}

    t0 = time.perf_counter()
    trainer = Trainer(spark, data, params)
    state = trainer.fit()
    model = trainer.model(state)
    ours_s = time.perf_counter() - t0
    U, V = model.U[:, :params.model.rank], model.V[:, :params.model.rank]
    f = params.fit
    ours_settings = (f"rank {params.model.rank}, lambda {f.lambda_u:g}, alpha {f.alpha:g}, "
                     f"{f.epochs} epochs")
    out["pmf-spark defaults"] = {**metrics(top_lists(U @ V.T, seen, args.k, trained),
                                           relevant, args.k), "fit_seconds": ours_s,
                                 "settings": ours_settings}
    trainer.release()

    train_df = data.ratings.where("kind = 0").select("u", "i", "rating").cache()
    U, V, s = mllib_factors(spark, train_df, nu, ni, 30, 20, 0.1, 1.0)
    out["mllib defaults"] = {**metrics(top_lists(U @ V.T, seen, args.k, trained), relevant,
                                       args.k), "fit_seconds": s,
                             "settings": "rank 30, regParam 0.1, alpha 1, 20 iterations"}

    # MLlib's regParam for alpha 5 chosen on a validation fold of the training pairs
    rng = np.random.default_rng(1)
    val = rng.random(len(tr)) < 0.15
    sub = spark.createDataFrame(tr[~val][["u", "i", "rating"]])
    v_seen: list[set] = [set() for _ in range(nu)]
    v_rel: list[set] = [set() for _ in range(nu)]
    for u, i in zip(tr.u[~val], tr.i[~val]):
        v_seen[u].add(i)
    for u, i in zip(tr.u[val], tr.i[val]):
        v_rel[u].add(i)
    v_trained = np.bincount(tr.i[~val], minlength=ni) > 0
    best = None
    for reg in (0.01, 0.1, 1.0):
        U, V, _ = mllib_factors(spark, sub, nu, ni, 30, 20, reg, 5.0)
        m = metrics(top_lists(U @ V.T, v_seen, args.k, v_trained), v_rel, args.k)
        print(f"mllib alpha 5 regParam {reg}: validation ndcg@{args.k} {m['ndcg']:.4f}",
              flush=True)
        if best is None or m["ndcg"] > best[1]:
            best = (reg, m["ndcg"])
    assert best is not None
    U, V, s = mllib_factors(spark, train_df, nu, ni, 30, 20, best[0], 5.0)
    out["mllib alpha 5"] = {**metrics(top_lists(U @ V.T, seen, args.k, trained), relevant,
                                      args.k), "fit_seconds": s,
                            "settings": f"rank 30, regParam {best[0]} (validation), alpha 5, "
                                        f"20 iterations"}
    pop = np.bincount(tr.i, minlength=ni).astype(float)
    out["most popular"] = {**metrics(top_lists(np.tile(pop, (nu, 1)), seen, args.k, trained),
                                     relevant, args.k), "fit_seconds": 0.0, "settings": ""}

    base = out["most popular"]
    for name, r in out.items():
        rows.append([name, r["settings"], f"{r['precision']:.4f}", f"{r['ndcg']:.4f}",
                     f"{r['precision'] / base['precision']:.2f}x",
                     f"{r['ndcg'] / base['ndcg']:.2f}x", f"{r['fit_seconds']:.1f}"])
    info = machine(spark)
    md = (f"# Implicit feedback on {Path(args.data).parent.name} as presence: pmf-spark vs "
          f"MLlib ALS(implicitPrefs=True)\n\n"
          + md_table(["model", "settings", f"precision@{args.k}", f"NDCG@{args.k}",
                      "vs popular p", "vs popular n", "fit s"], rows)
          + f"\n{data.n_users} users x {data.n_items} items, {data.n_train} training / "
            f"{data.n_test} test pairs (seeded 85/15, seed 0); relevant = any held-out pair; "
            f"{out['pmf-spark defaults']['users']} users with one. Measured {info['date']}: "
            f"{info['cpu']}, {info['cores']} cores, Spark {info['pyspark']}.\n")
    write_results("implicit-vs-mllib", {"results": out, "machine": info}, md)
    print(md)
    train_df.unpersist()
    data.release()
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
