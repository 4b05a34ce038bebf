"""Hyperparameter search on Spark, on validation data carved from the training split.

The test split is removed before anything else reads the ratings (``prepare``'s
``keep``), so no trial, fold or statistic can see it. Validation is either one
held-out share of the training ratings or k folds (a seeded hash of (user, item)
picks each rating's fold). Every fold is indexed and packed once; the trials then
share that layout. Trials are a seeded random search (Bergstra & Bengio 2012):
rank from a list, λ_u, λ_v and λ_bias log-uniform in a range, prior mode from a
list; trial 0 is the base configuration. Trials run in a thread pool when the
cluster has room for more than one training at a time.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from .errors import ConfigError
from .params import PMFParams
from .prepare import prepare
from .splits import HASH_BUCKETS as _HASH_BUCKETS
from .splits import split_column
from .train import Trainer
from .validate import CleanRatings

log = logging.getLogger("pmf_spark")

_FOLD_SALT = 104729


@dataclass(frozen=True)
class SearchSpace:
    """Where the random search looks."""

    ranks: tuple[int, ...] = (10, 20, 30, 50, 80)
    lambda_range: tuple[float, float] = (1.0, 100.0)
    lambda_bias_range: tuple[float, float] = (1.0, 100.0)
    priors: tuple[str, ...] = ("fixed",)

    def __post_init__(self):
        if not self.ranks or min(self.ranks) < 1:
            raise ConfigError(f"ranks: need positive integers, got {self.ranks}")
        for name in ("lambda_range", "lambda_bias_range"):
            lo, hi = getattr(self, name)
            if not (0 < lo <= hi and math.isfinite(hi)):
                raise ConfigError(f"{name}: need 0 < low <= high, got {lo}, {hi}")
        for p in self.priors:
            if p not in ("fixed", "spherical", "diagonal"):
                raise ConfigError(f"priors: {p!r} is not one of fixed, spherical, diagonal")


def sample_trials(space: SearchSpace, base: PMFParams, n: int, seed: int) -> list[PMFParams]:
    """Trial 0 is ``base``; the others draw from ``space`` with a seeded RNG."""
    rng = np.random.default_rng(seed)

    def logu(lo, hi):
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))

    trials = [base]
    while len(trials) < n:
        trials.append(base.replace(
            rank=int(rng.choice(space.ranks)),
            lambda_u=round(logu(*space.lambda_range), 4),
            lambda_v=round(logu(*space.lambda_range), 4),
            lambda_bias=round(logu(*space.lambda_bias_range), 4),
            priors=str(rng.choice(space.priors))))
    return trials


def fold_holdouts(folds: int, seed: int, validation_fraction: float) -> list[F.Column]:
    """One boolean column per fold marking its validation ratings."""
    if folds == 1:
        return [split_column(seed + _FOLD_SALT, validation_fraction)]
    h = F.pmod(F.xxhash64(F.col("user"), F.col("item"), F.lit(int(seed + _FOLD_SALT))),
               F.lit(_HASH_BUCKETS))
    fold = F.pmod(h, F.lit(folds))
    return [fold == F.lit(f) for f in range(folds)]


@dataclass
class TrialResult:
    trial: int
    params: PMFParams
    fold_rmse: list
    seconds: float

    @property
    def mean(self) -> float:
        return float(np.mean(self.fold_rmse))

    @property
    def sd(self) -> float:
        return float(np.std(self.fold_rmse, ddof=1)) if len(self.fold_rmse) > 1 else 0.0

    def row(self) -> dict:
        m, f = self.params.model, self.params.fit
        return {"trial": self.trial, "rank": m.rank, "lambda_u": f.lambda_u,
                "lambda_v": f.lambda_v, "lambda_bias": f.lambda_bias, "priors": f.priors,
                "reg_scaling": f.reg_scaling, "epochs": f.epochs,
                "val_rmse": self.mean, "val_rmse_sd": self.sd,
                "fold_rmse": [float(x) for x in self.fold_rmse], "seconds": self.seconds}


def run_search(spark: SparkSession, ratings: CleanRatings, trials: list[PMFParams], *,
               test_fraction: float | None, split_seed: int, on_duplicate: str, folds: int,
               validation_fraction: float, parallel: int, blocks: int) -> list[TrialResult]:
    """Train every trial on every fold; returns results in trial order.

    Args:
        test_fraction: the training job's random test split, removed first; None when
            the test split is a separate file (then ``ratings`` holds training only).
    """
    keep = None if test_fraction is None else ~split_column(split_seed, test_fraction)
    results = [TrialResult(i, p, [], 0.0) for i, p in enumerate(trials)]
    for f, holdout in enumerate(fold_holdouts(folds, split_seed, validation_fraction)):
        data = prepare(ratings, None, test_fraction=0.5, split_seed=split_seed,
                       on_duplicate=on_duplicate, keep=keep, holdout=holdout)
        log.info("fold %d/%d: %d training and %d validation ratings", f + 1, folds,
                 data.n_train, data.n_test)
        base = Trainer(spark, data, trials[0].replace(blocks=blocks))
        base.setup()

        def run(i: int, base: Trainer = base):
            t0 = time.perf_counter()
            trainer = base.with_params(trials[i])
            state = trainer.fit()
            rmse = trainer.final_metrics(state).test_rmse
            return i, rmse, time.perf_counter() - t0

        try:
            with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
                for i, rmse, secs in pool.map(run, range(len(trials))):
                    r = results[i]
                    r.fold_rmse.append(rmse)
                    r.seconds += secs
                    p = r.params.fit
                    log.info("fold %d/%d trial %3d: rank %3d  lambda_u %8.3f  lambda_v %8.3f  "
                             "lambda_bias %8.3f  priors %-9s  validation rmse %.4f  (%.1fs)",
                             f + 1, folds, i, r.params.model.rank, p.lambda_u, p.lambda_v,
                             p.lambda_bias, p.priors, rmse, secs)
        finally:
            base.release()
            data.release()
    return results
