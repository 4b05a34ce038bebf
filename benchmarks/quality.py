"""Accuracy of every pmf-spark variant and of Spark MLlib ALS on the same splits.

    .venv/bin/python benchmarks/quality.py [--data ../shared/data/ml-100k] [--splits random,u1,...]

For each split (the training job's seeded 85/15 split, seed 0, and MovieLens
100K's canonical u1..u5) it runs, in one process on one local[2] session:

- seed: the seed document's configuration (conf/seed.toml);
- default: pmf-spark's defaults;
- tuned: the best of a random search (jobs/tune.py's machinery) on a validation
  split carved from that split's training ratings;
- diagonal: adaptive (variational) diagonal priors;
- bpmf: Bayesian PMF (rank 10, 20 burn-in, 80 samples averaged);
- mllib: pyspark.ml ALS tuned over rank x regParam on the same validation split,
  retrained on the full training ratings, cold predictions filled with the
  training mean, predictions clipped to the rating range (both help it).

Writes benchmarks/results/quality-ml100k.{json,md}. The test split is only ever
used for the final numbers.
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

VARIANTS = ("seed", "default", "tuned", "diagonal", "bpmf", "mllib")


def variant_params(name: str):
    from pmf_spark.config.files import load_config_file, resolve
    from pmf_spark.config.params import PMFParams

    if name == "seed":
        _, p = resolve(load_config_file(str(Path(__file__).resolve().parents[1] / "conf"
                                             / "seed.toml")), None)
        return p
    if name == "default":
        return PMFParams()
    if name == "diagonal":
        return PMFParams.of(priors="diagonal", rank=50, epochs=40)
    if name == "bpmf":
        return PMFParams.of(model="bpmf", rank=10, burn_in=20, samples=80)
    raise KeyError(name)


def load_split(spark, data_dir: Path, split: str):
    from pmf_spark.inputs.read import load_ratings

    if split == "random":
        train = load_ratings(spark, str(data_dir / "u.data"))
        return train, None
    train = load_ratings(spark, str(data_dir / f"{split}.base"), "movielens-100k")
    test = load_ratings(spark, str(data_dir / f"{split}.test"), "movielens-100k", role="test")
    return train, test


def tune_ours(spark, train_clean, split: str, trials: int, seed: int):
    from pmf_spark.config.params import PMFParams
    from pmf_spark.train.tuning import SearchSpace, run_search, sample_trials, training_part

    space = SearchSpace(ranks=(30, 50, 100), lambda_range=(6.0, 25.0),
                        lambda_bias_range=(1.0, 10.0))
    cands = sample_trials(space, PMFParams(), trials, seed)
    if split == "random":    # the job's test split is removed first
        train_clean = training_part(train_clean, split="random", split_seed=0,
                                    test_fraction=0.15, leave_last=1, on_duplicate="latest")
    res = run_search(spark, train_clean, cands, split_seed=0, on_duplicate="latest", folds=1,
                     validation_fraction=0.15, parallel=1, blocks=2)
    best = min(res, key=lambda r: r.mean)
    return best.params, best.mean


def mllib_fit_predict(spark, train_df, eval_df, rank, reg, mean, lo, hi, seed=0):
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import functions as F

    als = ALS(rank=rank, maxIter=20, regParam=reg, userCol="u", itemCol="i", ratingCol="rating",
              coldStartStrategy="nan", seed=seed, nonnegative=False)
    model = als.fit(train_df)
    pred = model.transform(eval_df)
    p = F.when(F.isnan("prediction"), F.lit(mean)).otherwise(F.col("prediction"))
    p = F.least(F.greatest(p, F.lit(lo)), F.lit(hi))
    return pred.select(F.sqrt(F.avg((p - F.col("rating")) ** 2))).first()[0]


def mllib_tuned(spark, data, train_clean, split: str):
    """Grid over rank x regParam on the validation split tune.py uses, then the
    best retrained on all training ratings and scored on the test split."""
    from pyspark.sql import functions as F

    from pmf_spark.prepare.ratings import prepare, split_column
    from pmf_spark.train.tuning import fold_holdouts

    keep = ~split_column(0, 0.15) if split == "random" else None
    val_data = prepare(train_clean, None, test_fraction=0.5, split_seed=0,
                       on_duplicate="latest", keep=keep,
                       holdout=fold_holdouts(1, 0, 0.15)[0])
    fit = val_data.ratings.where("kind = 0").select("u", "i", "rating")
    val = val_data.ratings.where("is_test").select("u", "i", "rating")
    mean = fit.agg(F.avg("rating")).first()[0]
    lo, hi = data.rating_lo, data.rating_hi
    grid = [(r, g) for r in (10, 20, 30) for g in (0.05, 0.1, 0.15, 0.2)]
    scores = {(r, g): mllib_fit_predict(spark, fit, val, r, g, mean, lo, hi) for r, g in grid}
    val_data.release()
    best = min(scores, key=scores.get)
    train = data.ratings.where("kind = 0").select("u", "i", "rating")
    test = data.ratings.where("is_test").select("u", "i", "rating")
    rmse = mllib_fit_predict(spark, train, test, best[0], best[1], data.mu, lo, hi)
    return rmse, {"rank": best[0], "regParam": best[1], "validation_rmse": scores[best]}


def run_split(spark, data_dir: Path, split: str, variants, trials: int) -> dict:
    from pmf_spark.prepare.ratings import prepare
    from pmf_spark.train.loop import Trainer

    train_clean, test_clean = load_split(spark, data_dir, split)
    data = prepare(train_clean, test_clean, test_fraction=0.15, split_seed=0,
                   on_duplicate="latest")
    out = {"n_train": data.n_train, "n_test": data.n_test}
    base = None
    try:
        for name in variants:
            t0 = time.perf_counter()
            info = {}
            if name == "mllib":
                rmse, info = mllib_tuned(spark, data, train_clean, split)
            else:
                if name == "tuned":
                    params, val = tune_ours(spark, train_clean, split, trials, seed=0)
                    info = {"rank": params.model.rank, "lambda_u": params.fit.lambda_u,
                            "lambda_v": params.fit.lambda_v,
                            "lambda_bias": params.fit.lambda_bias, "validation_rmse": val}
                else:
                    params = variant_params(name)
                if base is None:
                    base = Trainer(spark, data, params.replace(blocks=2))
                    base.setup()
                trainer = base.with_params(params)
                state = trainer.fit()
                rmse = trainer.final_metrics(state).test_rmse
            info["seconds"] = round(time.perf_counter() - t0, 1)
            out[name] = {"test_rmse": rmse, **info}
            print(f"{split:7s} {name:9s} test RMSE {rmse:.4f}  ({info['seconds']}s)", flush=True)
    finally:
        if base is not None:
            base.release()
        data.release()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ml100k_dir()))
    ap.add_argument("--splits", default="random,u1,u2,u3,u4,u5")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--tune-trials", type=int, default=12)
    ap.add_argument("--name", default="quality-ml100k")
    args = ap.parse_args(argv)
    spark = session("pmf-spark quality benchmark")
    import logging
    logging.getLogger("pmf_spark").setLevel(logging.WARNING)
    variants = args.variants.split(",")
    splits = args.splits.split(",")
    results = {s: run_split(spark, Path(args.data), s, variants, args.tune_trials)
               for s in splits}
    folds = [s for s in splits if s.startswith("u")]
    rows = []
    summary = {}
    for v in variants:
        row = [v]
        if "random" in results:
            row.append(f"{results['random'][v]['test_rmse']:.4f}")
        vals = [results[s][v]["test_rmse"] for s in folds]
        if vals:
            m, sd = float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
            summary[v] = {"mean": m, "sd": sd}
            row.append(f"{m:.4f} ± {sd:.4f}")
        rows.append(row)
    header = ["variant"] + (["seeded 85/15"] if "random" in results else []) + \
        ([f"{folds[0]}..{folds[-1]} mean ± sd"] if folds else [])
    info = machine(spark)
    md = ("# Accuracy on MovieLens 100K (test RMSE)\n\n" + md_table(header, rows)
          + f"\nMeasured {info['date']} on {info['cpu']} ({info['cores']} cores), "
            f"Spark {info['pyspark']}, numpy {info['numpy']}.\n")
    write_results(args.name, {"machine": info, "splits": results, "folds_summary": summary},
                  md)
    print(md)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
