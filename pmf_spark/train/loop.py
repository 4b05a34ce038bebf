"""The training loop, written once for every model: initialisation, epochs, early
stopping, the checkpoint hook and the per-epoch callback.

An epoch is two half-steps, users then items. For each, the model strategy
(:mod:`pmf_spark.models`) says what to broadcast and which kernel solves a chunk of
rows; the engine (:mod:`pmf_spark.engine.spark`) runs that as one Spark job over the cached
block layout and collects the solved rows; the strategy takes them into the state.
The item half-step also returns the epoch's training, test and validation error sums,
so metrics cost no extra pass. After the epoch the strategy updates what lives on the
driver (priors, noise, samples), the loop refuses non-finite factors, logs one line
and calls the callback. The model's math is in each strategy's module docstring
(:mod:`pmf_spark.models.pmf` for the default MAP PMF).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from math import nan as NAN

import numpy as np
from pyspark.sql import SparkSession

from pmf_spark.config.params import PMFParams
from pmf_spark.engine.spark import Engine
from pmf_spark.errors import TrainingDiverged
from pmf_spark.evaluate.metrics import EpochMetrics, epoch_metrics, evaluate_model
from pmf_spark.kernels.rows import ReadOut
from pmf_spark.models import strategy_for
from pmf_spark.models.base import SIDES, FactorModel, Strategy, TrainContext, TrainState
from pmf_spark.prepare.ratings import PreparedData
from pmf_spark.runtime.sparkutil import describe

log = logging.getLogger("pmf_spark")


def readout_of(data: PreparedData, params: PMFParams) -> ReadOut:
    """The read-out of a model trained on ``data``."""
    return ReadOut(mu=data.mu, sigma=data.sigma, lo=data.rating_lo, hi=data.rating_hi,
                   link=params.model.link, clip=params.model.clip)


def check_finite(state: TrainState, epoch: int, ranking_model: str | None) -> None:
    """Refuse to go on from non-finite factors (``ranking_model``: the name of the model
    trained beside, when it is that one's state)."""
    if np.isfinite(state.user).all() and np.isfinite(state.item).all():
        return
    which = f" (the {ranking_model} ranking model)" if ranking_model else ""
    lam = "--ranking-lambda" if ranking_model else "--lambda-u/--lambda-v"
    raise TrainingDiverged(
        f"training diverged at epoch {epoch}{which}: the factors became non-finite, most "
        f"often because the priors are too weak for the data (raise {lam})")


def track_best(state: TrainState, m: EpochMetrics) -> None:
    """Early stopping's bookkeeping: keep the epoch with the best validation RMSE."""
    if not np.isfinite(m.val_rmse):
        return
    if state.best is None or m.val_rmse < state.best["metrics"].val_rmse:
        state.best = {"metrics": m, "user": state.user.copy(), "item": state.item.copy()}
        state.stale = 0
    else:
        state.stale += 1


class Trainer:
    """Fits one model -- and the ranking model beside it, when the parameters ask for one
    (:meth:`~pmf_spark.config.params.PMFParams.companion`) -- on prepared data. Both models'
    rows are solved in the same half-step jobs over the same packed blocks, so the
    per-job cost is paid once. Nothing here creates a SparkSession.

    Args:
        spark: the active session (None with a single-process engine).
        data: indexed ratings and statistics (:func:`pmf_spark.prepare.ratings.prepare`).
        params: the model's parameters.
        callback: called with each epoch's :class:`EpochMetrics` after logging;
            returning ``False`` stops training early.
        engine: an engine whose layout this trainer shares (tuning trials do);
            by default a new one, packed at :meth:`setup`.
    """

    def __init__(self, spark: SparkSession | None, data, params: PMFParams,
                 callback: Callable[[EpochMetrics], object] | None = None,
                 engine=None):
        self.params = params
        self.callback = callback
        if engine is None:
            assert spark is not None, "a Spark engine needs a session"
            engine = Engine(spark, data, params.engine)
        self.engine = engine
        self._strategy: Strategy | None = None
        self._companion: Strategy | None = None

    @property
    def data(self) -> PreparedData:
        return self.engine.data

    @property
    def strategy(self) -> Strategy:
        if self._strategy is None:
            self.setup()
        assert self._strategy is not None
        return self._strategy

    @property
    def companion(self) -> Strategy | None:
        """The ranking model's strategy, or None."""
        if self._strategy is None:
            self.setup()
        return self._companion

    def with_params(self, params: PMFParams, callback=None) -> Trainer:
        """A trainer for other model/fit parameters sharing this one's packed layout."""
        return Trainer(self.engine.spark, self.data, params, callback, engine=self.engine)

    def _context(self, params: PMFParams) -> TrainContext:
        e = self.engine
        return TrainContext(n_users=self.data.n_users, n_items=self.data.n_items,
                            user_counts=e.counts["user"], item_counts=e.counts["item"],
                            readout=readout_of(self.data, params),
                            gram_dtype=params.engine.gram_dtype,
                            kernel=params.engine.kernel)

    def setup(self) -> None:
        if not self.engine.packed:
            self.engine.pack()
        self._strategy = strategy_for(self.params, self._context(self.params))
        comp = self.params.companion()
        self._companion = strategy_for(comp, self._context(comp)) if comp else None

    @property
    def total_epochs(self) -> int:
        c = self.companion
        return max(self.strategy.total_epochs(), c.total_epochs() if c else 0)

    def initial_state(self) -> TrainState:
        state = self.strategy.init_state()
        if self.companion is not None:
            state.companions = [self.companion.init_state()]
        return state

    # ---------------------------------------------------------------- epochs
    def half_step(self, state: TrainState, solving: str, epoch: int = 1, rng=None,
                  metrics: bool = False) -> dict:
        """Solve one side of this model (only) against the other; its statistics."""
        tasks = self.strategy.tasks(state, solving, epoch, rng)
        results = self.engine.half_step(solving, tasks, metrics=metrics)
        self.strategy.absorb(state, solving, results)
        return results[0].stats

    def _parts(self, state: TrainState) -> list[tuple[Strategy, TrainState]]:
        """The models that still have epochs to run, with their states."""
        parts = [(self.strategy, state)]
        if self.companion is not None and state.companions:
            parts.append((self.companion, state.companions[0]))
        return [(s, st) for s, st in parts if st.epoch < s.total_epochs()]

    def _joint_half_step(self, parts, solving: str, epoch: int, rngs) -> list[dict]:
        """One Spark job solving ``solving`` for every model in ``parts``."""
        tasks = [s.tasks(st, solving, epoch, rng) for (s, st), rng in zip(parts, rngs)]
        results = self.engine.half_step(solving, [t for ts in tasks for t in ts],
                                        metrics=solving == "item")
        sums, at = [], 0
        for (s, st), ts in zip(parts, tasks):
            s.absorb(st, solving, results[at:at + len(ts)])
            sums.append(results[at].stats)
            at += len(ts)
        return sums

    def run_epoch(self, state: TrainState) -> EpochMetrics:
        spark = self.engine.spark
        t0 = time.perf_counter()
        parts = self._parts(state)
        epochs = [st.epoch + 1 for _, st in parts]
        rngs = [s.epoch_rng(e) for (s, _), e in zip(parts, epochs)]
        sums: list[dict] = []
        for solving in SIDES:
            describe(spark, f"epoch {epochs[0]}/{self.total_epochs}: {solving} half-step")
            sums = self._joint_half_step(parts, solving, epochs[0], rngs)
        describe(spark, None)
        out = []
        for (s, st), e, rng, sm in zip(parts, epochs, rngs, sums):
            out.append(self._finish_epoch(s, st, e, rng, sm, time.perf_counter() - t0))
        return out[0]

    def _finish_epoch(self, s: Strategy, state: TrainState, e: int, rng, sums: dict,
                      seconds: float) -> EpochMetrics:
        check_finite(state, e, None if s is self._strategy else s.name)
        s.after_epoch(state, sums, e, rng)
        rank = s.model.rank
        m = epoch_metrics(e, sums, objective=s.objective(state, sums["sse_z"]),
                          seconds=seconds,
                          lambdas=(float(np.mean(state.reg_user[:rank])),
                                   float(np.mean(state.reg_item[:rank]))),
                          noise_var=state.noise_var)
        if not s.predicts_ratings:      # scores are preferences: RMSE does not apply
            m = dataclasses.replace(m, train_rmse=NAN, train_mae=NAN, test_rmse=NAN,
                                    test_mae=NAN, val_rmse=NAN, val_mae=NAN)
        state.epoch = e
        state.history.append(m)
        if s is self._strategy and self.params.fit.early_stopping:
            track_best(state, m)
        return m

    def fit(self, state: TrainState | None = None,
            after_epoch: Callable[[TrainState], None] | None = None) -> TrainState:
        """Run the remaining epochs; returns the final state (for early stopping it
        holds the best epoch; for BPMF the kept samples). ``after_epoch`` sees the
        state after every epoch (checkpoints use it)."""
        if self._strategy is None:
            self.setup()
        state = state or self.initial_state()
        patience = self.params.fit.early_stopping
        while self._parts(state):
            m = self.run_epoch(state)
            stop = self.callback is not None and self.callback(m) is False
            if after_epoch is not None:
                after_epoch(state)
            if stop:
                break
            if patience and state.stale >= patience and state.best is not None:
                log.info("early stopping after epoch %d: no better validation RMSE for %d "
                         "epoch(s); keeping epoch %d", m.epoch, state.stale,
                         state.best["metrics"].epoch)
                break
        return state

    # ---------------------------------------------------------------- results
    def ranking_model(self, state: TrainState) -> FactorModel | None:
        """The ranking model trained beside this one, or None."""
        if self.companion is None or not state.companions:
            return None
        return self.companion.factor_model(state.companions[0])

    def model(self, state: TrainState) -> FactorModel:
        """The trained model: the best epoch's with early stopping, else the last."""
        if self.params.fit.early_stopping and state.best is not None:
            return self.strategy.factor_model(state, state.best["user"], state.best["item"])
        return self.strategy.factor_model(state)

    def final_metrics(self, state: TrainState) -> EpochMetrics:
        """The metrics the run reports: the last epoch's, the best epoch's with early
        stopping, or those of the averaged prediction for BPMF."""
        if self.params.fit.early_stopping and state.best is not None:
            return state.best["metrics"]
        if self.strategy.reports_averaged_model(state):
            return evaluate_model(self.engine, self.model(state), state.history[-1],
                                  state.epoch)
        return state.history[-1]

    @property
    def counts(self) -> dict[str, np.ndarray]:
        """Training ratings per row, int64 (n,), by side."""
        if self._strategy is None:
            self.setup()
        return self.engine.counts

    def release(self) -> None:
        self.engine.release()
