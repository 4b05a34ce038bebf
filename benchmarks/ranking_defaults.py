"""Choosing the ranking model's defaults on validation data carved from training only.

    .venv/bin/python benchmarks/ranking_defaults.py [--data ../shared/data/ml-100k/u.data]

The training job's seeded 85/15 split (seed 0) is made first and its test ratings are
dropped before anything else: every number here comes from validation folds carved
from the training ratings (15% of them at random, two seeds, and a per-user 15% fold).
On each fold it trains, single-process with the same strategies and kernels as the
job (:mod:`pmf_spark.engine.local`), the rating model (the defaults), missing-data PMF
and implicit ALS over a grid, and scores top-10 lists (training items excluded;
relevant = a held-out rating >= 4, as the job's default; with --presence, the defaults of
--feedback implicit: ratings as presence, any held-out pair relevant) next to the most-popular
list. Prints the grid and writes benchmarks/results/ranking-defaults.{json,md}.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, md_table, ml100k_dir, session, write_results  # noqa: E402


def training_ratings(path: str):
    """(u, i, rating, n_users, n_items, lo, hi) of the job's training split only."""
    from pmf_spark.inputs.read import load_ratings
    from pmf_spark.prepare.ratings import prepare

    spark = session("ranking defaults")
    data = prepare(load_ratings(spark, path), None, test_fraction=0.15, split_seed=0,
                   on_duplicate="latest")
    tbl = data.ratings.where("kind = 0").select("u", "i", "rating").toArrow()
    out = (tbl.column("u").to_numpy().astype(np.int64), tbl.column("i").to_numpy().astype(np.int64),
           tbl.column("rating").to_numpy(), data.n_users, data.n_items, data.rating_lo,
           data.rating_hi)
    data.release()
    spark.stop()
    return out


def folds(u, seed_list=(1, 2)):
    """Validation masks: 15% of the ratings at random per seed, and 15% of each user's."""
    out = {}
    for s in seed_list:
        out[f"random-{s}"] = np.random.default_rng(s).random(u.size) < 0.15
    rng = np.random.default_rng(7)
    key = rng.random(u.size)
    order = np.lexsort((key, u))
    rank_in_user = np.empty(u.size, np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(u[order])) + 1]
    counts = np.diff(np.r_[starts, u.size])
    rank_in_user[order] = np.arange(u.size) - np.repeat(starts, counts)
    n_user = np.bincount(u)[u]
    out["per-user"] = rank_in_user < np.floor(0.15 * n_user)
    return out


def ranking(scores_fn, u, i, r, val, n_users, n_items, k=10, threshold=4.0):
    """Mean precision@k and NDCG@k over users with a relevant validation rating."""
    from pmf_spark.kernels.rows import top_k

    fit = ~val
    seen = np.zeros((n_users, n_items), bool)
    seen[u[fit], i[fit]] = True
    rel = np.zeros((n_users, n_items), bool)
    good = val & (r >= threshold)
    rel[u[good], i[good]] = True
    users = np.flatnonzero(rel.any(1) & seen.any(1))
    trained_items = seen.any(0)
    tiebreak = np.arange(n_items)
    S = scores_fn(users)
    S[:, ~trained_items] = -np.inf
    S[seen[users]] = -np.inf
    rows, ranks, cols, _ = top_k(S, k, tiebreak)
    hits = rel[users[rows], cols]
    prec = np.bincount(rows, weights=hits, minlength=users.size) / k
    dcg = np.bincount(rows, weights=hits / np.log2(ranks + 1.0), minlength=users.size)
    n_rel = np.minimum(rel[users].sum(1), k)
    idcg = np.array([sum(1 / math.log2(j + 2) for j in range(n)) for n in n_rel])
    return float(prec.mean()), float((dcg / idcg).mean()), int(users.size)


def scorer(m):
    """Scores of a FactorModel for some users (the user bias does not change a ranking)."""
    return lambda us: m.U[us] @ m.V.T + m.item_bias[None, :]


def popularity(pop):
    return lambda us: np.tile(pop, (us.size, 1))


def fit(params, u, i, r, val, n_users, n_items, lo, hi):
    from pmf_spark.engine.local import LocalData, LocalEngine
    from pmf_spark.train.loop import Trainer

    kind = np.where(val, 2, 0).astype(np.int8)
    data = LocalData.from_arrays(u, i, r, kind, n_users, n_items, lo, hi)
    trainer = Trainer(None, data, params, engine=LocalEngine(data))
    state = trainer.fit()
    return trainer.model(state)


def refine_grid(lo: float) -> dict:
    """Around the coarse grid's best region (missing-data, lambda 12, r_m at the bottom of
    the scale, w_m rising to 0.2 at the edge; implicit best with a strong lambda)."""
    md = [dict(model="missing-data", rank=30, lambda_u=lam, lambda_v=lam, missing_weight=w,
               missing_rating=lo) for w, lam in itertools.product((0.15, 0.2, 0.3, 0.45),
                                                                  (8.0, 12.0, 18.0))]
    md += [dict(model="missing-data", rank=rk, lambda_u=12.0, lambda_v=12.0, missing_weight=w,
                missing_rating=lo) for rk, w in itertools.product((20, 50), (0.2, 0.3))]
    imp = [dict(model="implicit", rank=30, lambda_u=lam, lambda_v=lam, alpha=a)
           for lam, a in itertools.product((50.0, 100.0, 200.0), (2.0, 5.0, 10.0))]
    return {"missing-data": md, "implicit": imp}


def main(argv=None) -> int:
    from pmf_spark.config.params import PMFParams

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ml100k_dir() / "u.data"))
    ap.add_argument("--quick", action="store_true", help="a small grid (smoke test)")
    ap.add_argument("--grid", default="refine", choices=("wide", "refine"),
                    help="wide: the first coarse grid; refine: around its best region")
    ap.add_argument("--presence", action="store_true",
                    help="the defaults of --feedback implicit: the ratings as mere presence, "
                         "every held-out pair relevant, implicit ALS only")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    u, i, r, n_users, n_items, lo, hi = training_ratings(args.data)
    fold_masks = folds(u)
    grids = refine_grid(lo) if args.grid == "refine" and not args.quick else {
        "missing-data": [dict(model="missing-data", rank=rk, lambda_u=lam, lambda_v=lam,
                              missing_weight=w, missing_rating=rm)
                         for rk, lam, w, rm in itertools.product(
                             (30, 64) if not args.quick else (30,),
                             (3.0, 12.0, 30.0) if not args.quick else (12.0,),
                             (0.02, 0.05, 0.1, 0.2) if not args.quick else (0.1,),
                             (lo, lo + 1.0))],
        "implicit": [dict(model="implicit", rank=rk, lambda_u=lam, lambda_v=lam, alpha=a)
                     for rk, lam, a in itertools.product(
                         (30, 64) if not args.quick else (30,),
                         (1.0, 10.0, 50.0) if not args.quick else (10.0,),
                         (1.0, 5.0, 20.0) if not args.quick else (5.0,))],
    }
    threshold = 4.0
    if args.presence:
        threshold = -math.inf
        grids = {"implicit": [dict(model="implicit", rank=rk, lambda_u=lam, lambda_v=lam,
                                   alpha=a)
                              for rk, lam, a in itertools.product(
                                  (30, 64), (5.0, 10.0, 20.0, 50.0), (1.0, 2.0, 5.0, 10.0))]
                    # the best region of that grid has the smallest alpha: below it
                    + [dict(model="implicit", rank=30, lambda_u=lam, lambda_v=lam, alpha=a)
                       for lam, a in itertools.product((10.0, 20.0, 30.0), (0.25, 0.5))]
                    + [dict(model="implicit", rank=30, lambda_u=30.0, lambda_v=30.0,
                            alpha=1.0)]}
        if args.quick:
            grids = {"implicit": grids["implicit"][:1]}
    rows, results = [], []
    for fold, val in fold_masks.items():
        pop = np.bincount(i[~val], minlength=n_items).astype(float)
        p, n, users = ranking(popularity(pop), u, i, r, val, n_users, n_items,
                              threshold=threshold)
        results.append({"fold": fold, "model": "popular", "precision": p, "ndcg": n,
                        "users": users})
        m = fit(PMFParams(), u, i, r, val, n_users, n_items, lo, hi)
        p, n, _ = ranking(scorer(m), u, i, r, val, n_users, n_items, threshold=threshold)
        results.append({"fold": fold, "model": "rating (defaults)", "precision": p, "ndcg": n})
        print(f"{fold}: popular {results[-2]['precision']:.4f}/{results[-2]['ndcg']:.4f}  "
              f"rating {p:.4f}/{n:.4f}", flush=True)
        for name, grid in grids.items():
            for kw in grid:
                vals = np.ones_like(r) if name == "implicit" else r
                m = fit(PMFParams.of(**kw), u, i, vals, val, n_users, n_items, lo, hi)
                p, n, _ = ranking(scorer(m), u, i, r, val, n_users, n_items,
                                  threshold=threshold)
                results.append({"fold": fold, "model": name, **kw, "precision": p, "ndcg": n})
                print(f"{fold}: {kw}  p@10 {p:.4f}  ndcg@10 {n:.4f}", flush=True)
    # mean over folds per configuration
    by_cfg: dict = {}
    for res in results:
        key = tuple((k, v) for k, v in res.items()
                    if k not in ("fold", "precision", "ndcg", "users"))
        by_cfg.setdefault(key, []).append(res)
    for key, rs in by_cfg.items():
        pops = [x for x in results if x["model"] == "popular" and x["fold"] in
                {y["fold"] for y in rs}]
        p = np.mean([x["precision"] for x in rs])
        n = np.mean([x["ndcg"] for x in rs])
        rows.append([", ".join(f"{k}={v}" for k, v in key), f"{p:.4f}", f"{n:.4f}",
                     f"{p / np.mean([x['precision'] for x in pops]):.2f}x",
                     f"{n / np.mean([x['ndcg'] for x in pops]):.2f}x"])
    rows.sort(key=lambda row: -float(row[2]))
    info = machine()
    what = (" (ratings as presence, every held-out pair relevant)" if args.presence
            else "")
    md = (f"# Ranking models on validation folds of ML-100K's training split{what}\n\n"
          + md_table(["configuration", "precision@10", "NDCG@10", "vs popular p", "vs popular n"],
                     rows)
          + f"\nFolds: {', '.join(fold_masks)}; {time.perf_counter() - t0:.0f} s. "
            f"Measured {info['date']} on {info['cpu']}.\n")
    write_results("ranking-defaults" + ("-presence" if args.presence else ""),
                  {"results": results, "machine": info}, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
