"""Whether early stopping should be on by default: measured on validation folds carved
from training data only.

    .venv/bin/python benchmarks/early_stopping.py [--data ../shared/data/ml-100k/u.data]

For each data set the training job's seeded 85/15 split (seed 0) is made first and its
test ratings are dropped: ML-100K (when present) and the built-in synthetic data (the
job's default, 'small'). From the training ratings left, three folds hold out 15% (at
random with two seeds, and 15% of each user's ratings); the held-out part plays the
unseen test set. On each fold the default model is trained single-process with the
job's strategies and kernels (:mod:`pmf_spark.engine.local`):

- ``off``: every remaining rating trains, the last of the default epochs is kept;
- ``patience P, V%``: V% of the remaining ratings (seeded, at random) are held out as the
  early-stopping validation split, training stops after P epochs without a better
  validation RMSE and keeps the best epoch (what ``--early-stopping P
  --validation-fraction V`` does in the job).

Prints the held-out RMSE of each setting per fold, the epoch each kept, and the held-out
RMSE of every epoch of the ``off`` run (where it bottoms); writes
benchmarks/results/early-stopping.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ranking_defaults import folds  # noqa: E402

from common import machine, md_table, ml100k_dir, session, write_results  # noqa: E402

SETTINGS = [("off", 0, 0.0), ("patience 2, 5%", 2, 0.05), ("patience 3, 5%", 3, 0.05),
            ("patience 5, 5%", 5, 0.05), ("patience 3, 10%", 3, 0.10)]


def job_training_part(spark, path: str | None):
    """(u, i, rating, n_users, n_items, lo, hi) of the training job's training split of
    a ratings file, or of the built-in synthetic data with ``path`` None."""
    from pmf_spark.config.params import JobConfig
    from pmf_spark.prepare.ratings import prepare
    from pmf_spark.train.job import load_inputs

    clean, _ = load_inputs(spark, JobConfig(ratings=path))
    data = prepare(clean, None, test_fraction=0.15, split_seed=0, on_duplicate="latest")
    tbl = data.ratings.where("kind = 0").select("u", "i", "rating").toArrow()
    out = (tbl.column("u").to_numpy().astype(np.int64),
           tbl.column("i").to_numpy().astype(np.int64), tbl.column("rating").to_numpy(),
           data.n_users, data.n_items, data.rating_lo, data.rating_hi)
    data.release()
    return out


def run(params, u, i, r, kind, n_users, n_items, lo, hi):
    """(held-out RMSE of the kept model, its epoch, held-out RMSE per epoch)."""
    from pmf_spark.engine.local import LocalData, LocalEngine
    from pmf_spark.train.loop import Trainer

    data = LocalData.from_arrays(u, i, r, kind, n_users, n_items, lo, hi)
    trainer = Trainer(None, data, params, engine=LocalEngine(data))
    state = trainer.fit()
    final = trainer.final_metrics(state)
    return final.test_rmse, final.epoch, [m.test_rmse for m in state.history]


def main(argv=None) -> int:
    from pmf_spark.config.params import PMFParams

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ml100k_dir() / "u.data"))
    ap.add_argument("--quick", action="store_true", help="one fold, two settings (smoke test)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    spark = session("early stopping")
    sets = {}
    if Path(args.data).is_file():
        sets["ML-100K"] = job_training_part(spark, args.data)
    else:
        print(f"{args.data} not found: the synthetic data only (set PMF_ML100K)")
    sets["synthetic small"] = job_training_part(spark, None)
    info = machine(spark)
    spark.stop()
    settings = SETTINGS[:2] if args.quick else SETTINGS
    results, curves = [], {}
    for name, (u, i, r, n_users, n_items, lo, hi) in sets.items():
        masks = folds(u)
        if args.quick:
            masks = dict(list(masks.items())[:1])
        for fold, held in masks.items():
            pick = np.random.default_rng(11).random(u.size)
            for label, patience, fraction in settings:
                kind = np.where(held, 1, np.where(pick < fraction, 2, 0)).astype(np.int8)
                params = PMFParams().replace(early_stopping=patience)
                rmse, epoch, curve = run(params, u, i, r, kind, n_users, n_items, lo, hi)
                results.append({"data": name, "fold": fold, "setting": label,
                                "patience": patience, "validation_fraction": fraction,
                                "heldout_rmse": rmse, "epoch": epoch})
                if patience == 0:
                    curves[f"{name} / {fold}"] = curve
                print(f"{name} {fold}: {label:16s} held-out RMSE {rmse:.4f} (epoch {epoch})",
                      flush=True)
    rows = []
    for name in sets:
        off = np.mean([x["heldout_rmse"] for x in results
                       if x["data"] == name and x["patience"] == 0])
        for label, _, _ in settings:
            rs = [x for x in results if x["data"] == name and x["setting"] == label]
            mean = float(np.mean([x["heldout_rmse"] for x in rs]))
            rows.append([name, label, f"{mean:.4f}", f"{mean - off:+.4f}",
                         ", ".join(str(x["epoch"]) for x in rs)])
    curve_rows = [[key, f"{min(c):.4f} at epoch {int(np.argmin(c)) + 1}", f"{c[-1]:.4f}"]
                  for key, c in curves.items()]
    md = ("Held-out RMSE of the default model (mean over folds carved from the job's "
          "training split) with early stopping off and on:\n\n"
          + md_table(["data", "setting", "held-out RMSE", "vs off", "epochs kept per fold"],
                     rows)
          + "\n\nThe `off` runs' held-out RMSE by epoch (what early stopping could gain at "
          "best, knowing the held-out ratings):\n\n"
          + md_table(["data / fold", "lowest", "last epoch"], curve_rows))
    print(md)
    write_results("early-stopping", {"results": results, "curves": curves, "machine": info,
                                     "seconds": time.perf_counter() - t0}, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
