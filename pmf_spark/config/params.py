"""Typed, validated parameters in groups, and the job's configuration.

- :class:`ModelParams`: what a saved model needs to be read (rank, biases, read-out).
- :class:`FitParams`: how it is fitted (model, epochs, λ, priors, samples, seeds).
- :class:`EngineParams`: how the engine runs (blocks, Gram dtype, kernels, chunking,
  resident memory). Engine knobs never change what is fitted beyond float rounding, so
  they enter neither the checkpoint fingerprint nor the ``model``/``fit`` sections of
  ``model.json``.
- :class:`RankingParams`: the ranking model trained beside the rating model.

:class:`PMFParams` holds one of each. Flags, TOML keys and the Python API use the
fields' plain names (``rank``, ``lambda_u``, ``blocks``, ...), which are unique across
the groups: :meth:`PMFParams.of` builds the groups from such flat keywords.
:class:`JobConfig` configures the job around the model (input, split, outputs).

Every group is a frozen dataclass that validates each field once, in
``__post_init__``, with an error naming the field, and round-trips through plain dicts.
(A little over 400 lines: every field carries its one-line documentation, which is the
job's --help and conf/default.toml; splitting the groups apart would scatter that table.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pmf_spark.config.checks import (
    COLD_START,
    CONFIDENCES,
    DUPLICATE_POLICIES,
    FEEDBACK,
    FORMATS,
    GRAM_DTYPES,
    ID_TYPES,
    LINKS,
    PRIORS,
    REG_SCALINGS,
    SPLITS,
    SYNTHETIC_SHAPES,
    Params,
    check_bool,
    check_choice,
    check_float,
    check_int,
    doc,
    unknown,
)
from pmf_spark.errors import ConfigError

_TABLE_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+){0,2}")


@dataclass(frozen=True)
class ModelParams(Params):
    """What a saved model needs to be read: its shape and its read-out."""

    rank: int = doc("number of latent dimensions d", default=30)
    biases: bool = doc("learn user and item biases jointly with the factors", default=True)
    link: str = doc("'linear': mu + sigma * (u.v + biases); 'sigmoid': min + (max-min) * "
                     "sigmoid(u.v + biases), the seed's read-out", default="linear")
    clip: bool = doc("clip linear predictions to the training rating range", default=True)

    def __post_init__(self):
        check_int("rank", self.rank, 1, 1000)
        check_bool("biases", self.biases)
        check_choice("link", self.link, LINKS)
        check_bool("clip", self.clip)

    @property
    def k(self) -> int:
        """Unknowns per row: the factors plus one bias when biases are on."""
        return self.rank + (1 if self.biases else 0)


@dataclass(frozen=True)
class FitParams(Params):
    """How the model is fitted. λ values are in z-score units."""

    model: str = doc("'pmf' (MAP by ALS), 'bpmf' (Bayesian PMF by Gibbs sampling), "
                      "'missing-data' (PMF with unobserved cells as weak low ratings, for "
                      "ranking) or 'implicit' (implicit-feedback ALS)", default="pmf")
    epochs: int = doc("ALS epochs (one epoch solves users, then items)", default=20)
    lambda_u: float = doc("user factor prior precision ratio sigma^2/sigma_U^2 (unscaled, "
                           "as in PMF)", default=12.0)
    lambda_v: float = doc("item factor prior precision ratio sigma^2/sigma_V^2 (unscaled, "
                           "as in PMF)", default=12.0)
    lambda_bias: float = doc("prior precision ratio of the user and item biases", default=3.0)
    reg_scaling: str = doc("'none': fixed lambda (PMF); 'count': lambda * n_ratings of the row "
                            "(ALS-WR, Spark MLlib)", default="none")
    init_std: float = doc("std of the Gaussian initial factors; 0 = the prior's, 1/sqrt(lambda)",
                           default=0.0)
    seed: int = doc("seed of the initial factors (and of BPMF's draws)", default=0)
    priors: str = doc("'fixed' lambdas, or re-estimate them every prior_update_every epochs: "
                       "'spherical' (one prior variance per side) or 'diagonal' (one per "
                       "dimension)", default="fixed")
    prior_update_every: int = doc("epochs between adaptive prior updates", default=1)
    # off by default: on folds carved from ML-100K's training split the validation share
    # it holds out cost more held-out RMSE (+0.003) than stopping saved (the best epoch of
    # a run without it was at most 0.0005 better than its last); on the built-in data it
    # gained 0.0013 (benchmarks/early_stopping.py)
    early_stopping: int = doc("stop after this many epochs without a better validation RMSE "
                               "and keep the best epoch; 0 = off", default=0)
    samples: int = doc("BPMF: Gibbs samples averaged after the burn-in", default=80)
    burn_in: int = doc("BPMF: Gibbs iterations discarded first", default=20)
    thin: int = doc("BPMF: keep every thin-th sample for the saved averaged model", default=1)
    missing_weight: float = doc("missing-data PMF: weight w_m of every unobserved cell",
                                 default=0.2)
    missing_rating: float | None = doc("missing-data PMF: the rating r_m imputed to "
                                        "unobserved cells; default the scale's lowest",
                                        default=None)
    alpha: float = doc("implicit ALS: confidence 1 + alpha * g(value) of observed cells",
                        default=5.0)
    confidence: str = doc("implicit ALS: g is 'linear' (the value), 'log' "
                           "(log(1 + value / epsilon)) or 'presence' (1: every observed "
                           "pair alike)", default="linear")
    epsilon: float = doc("implicit ALS: epsilon of the 'log' confidence", default=1.0)

    def __post_init__(self):
        from pmf_spark.models import REGISTRY

        check_choice("model", self.model, tuple(REGISTRY))
        check_int("epochs", self.epochs, 1, 100_000)
        check_float("lambda_u", self.lambda_u, 0.0)
        check_float("lambda_v", self.lambda_v, 0.0)
        check_float("lambda_bias", self.lambda_bias, 0.0)
        check_choice("reg_scaling", self.reg_scaling, REG_SCALINGS)
        check_float("init_std", self.init_std, 0.0)
        check_int("seed", self.seed, 0, 2**63 - 1)
        check_choice("priors", self.priors, PRIORS)
        check_int("prior_update_every", self.prior_update_every, 1)
        check_int("early_stopping", self.early_stopping, 0)
        check_int("samples", self.samples, 1, 100_000)
        check_int("burn_in", self.burn_in, 0, 100_000)
        check_int("thin", self.thin, 1, 100_000)
        check_float("missing_weight", self.missing_weight, 0.0, False, 1.0, True)
        if self.missing_rating is not None:
            check_float("missing_rating", self.missing_rating)
        check_float("alpha", self.alpha, 0.0)
        check_choice("confidence", self.confidence, CONFIDENCES)
        check_float("epsilon", self.epsilon, 0.0, True)
        if self.priors != "fixed" and self.reg_scaling != "none":
            raise ConfigError("priors: adaptive priors need reg_scaling 'none' (a count-scaled "
                              "lambda is not one prior variance)")
        REGISTRY[self.model].check(self)


@dataclass(frozen=True)
class EngineParams(Params):
    """How the engine runs: never changes what is fitted beyond float rounding."""

    blocks: int = doc("row blocks per side; 0 = the cluster's default parallelism", default=0)
    gram_dtype: str = doc("dtype of the Gram matrices: float64, or float32 (solve stays float64)",
                           default="float64")
    chunk_ratings: int = doc("most ratings packed into one row of the cached block layout",
                              default=1_000_000)
    resident_mb: int = doc("MB of decoded blocks each Python worker keeps between epochs, so "
                            "later epochs skip re-sending them; 0 = off", default=1024)
    kernel: str = doc("row kernels: 'auto' (compiled with numba where it loads, else numpy), "
                       "'numba' (stop if it cannot load) or 'numpy'", default="auto")

    def __post_init__(self):
        from pmf_spark.kernels.rows import BACKENDS

        check_int("blocks", self.blocks, 0, 100_000)
        check_choice("kernel", self.kernel, BACKENDS)
        check_choice("gram_dtype", self.gram_dtype, GRAM_DTYPES)
        check_int("chunk_ratings", self.chunk_ratings, 1000)
        check_int("resident_mb", self.resident_mb, 0, 1 << 20)


@dataclass(frozen=True)
class RankingParams(Params):
    """The model that orders the top-k lists. A model fitted to ratings predicts them
    well but ranks poorly (ratings are missing not at random), so by default a ranking
    model is trained beside it, in the same half-step jobs, on the same ratings; its
    own hyperparameters (missing_weight, missing_rating, alpha, confidence) are the
    [fit] ones of the same names."""

    recommend_by: str = doc("'rating': rank by the rating model's predictions; or train a "
                             "ranking model beside it and rank by that: 'missing-data' or "
                             "'implicit'", default="missing-data")
    ranking_rank: int = doc("latent dimensions of the ranking model", default=30)
    ranking_lambda: float = doc("prior precision (z units) of the ranking model's factors",
                                 default=12.0)
    ranking_epochs: int = doc("epochs of the ranking model; 0 = the rating model's",
                               default=0)

    def __post_init__(self):
        from pmf_spark.models import REGISTRY

        ranking = tuple(n for n, cls in REGISTRY.items() if cls.ranks)
        check_choice("recommend_by", self.recommend_by, ("rating",) + ranking)
        check_int("ranking_rank", self.ranking_rank, 1, 1000)
        check_float("ranking_lambda", self.ranking_lambda, 0.0)
        check_int("ranking_epochs", self.ranking_epochs, 0, 100_000)


GROUPS: dict[str, type[Params]] = {"model": ModelParams, "fit": FitParams,
                                    "engine": EngineParams, "ranker": RankingParams}


def group_of(name: str) -> str | None:
    """Which group ('model', 'fit', 'engine') a flat parameter name belongs to."""
    for group, cls in GROUPS.items():
        if name in cls.field_names():
            return group
    return None


@dataclass(frozen=True)
class PMFParams:
    """The parameter groups of one run: the model, its fit, the engine, and the ranking
    model trained beside it."""

    model: ModelParams = field(default_factory=ModelParams)
    fit: FitParams = field(default_factory=FitParams)
    engine: EngineParams = field(default_factory=EngineParams)
    ranker: RankingParams = field(default_factory=RankingParams)

    def __post_init__(self):
        from pmf_spark.models import REGISTRY

        # a model may fix part of its shape (implicit ALS has no biases)
        object.__setattr__(self, "model", REGISTRY[self.fit.model].normalize_model(self.model))

    @classmethod
    def of(cls, where: str = "", **flat) -> PMFParams:
        """The groups from flat keywords (``rank=8, lambda_u=3, blocks=2``)."""
        parts: dict[str, dict[str, Any]] = {g: {} for g in GROUPS}
        for key, value in flat.items():
            group = group_of(key)
            if group is None:
                raise unknown(key, flat_names(), where)
            parts[group][key] = value
        return cls(**{g: GROUPS[g](**v) for g, v in parts.items()})  # type: ignore[arg-type]

    def flat(self) -> dict[str, Any]:
        """Every parameter by its plain name."""
        return {k: v for g in GROUPS for k, v in getattr(self, g).to_dict().items()}

    def companion(self) -> PMFParams | None:
        """The ranking model trained beside this one, or None when the lists are ranked
        by this model itself (``recommend_by`` 'rating', or this model is the ranker)."""
        from pmf_spark.models import capabilities

        rp, f = self.ranker, self.fit
        if rp.recommend_by in ("rating", f.model):
            return None
        events = capabilities(rp.recommend_by).fits_events   # rated pairs taken as events
        return PMFParams.of(
            model=rp.recommend_by, rank=rp.ranking_rank, lambda_u=rp.ranking_lambda,
            lambda_v=rp.ranking_lambda, lambda_bias=f.lambda_bias,
            epochs=rp.ranking_epochs or f.epochs, seed=f.seed, missing_weight=f.missing_weight,
            missing_rating=f.missing_rating, alpha=f.alpha,
            confidence="presence" if events else f.confidence,
            epsilon=f.epsilon, recommend_by="rating", **self.engine.to_dict())

    def replace(self, **flat) -> PMFParams:
        """A copy with some parameters changed, by plain name."""
        return PMFParams.of(**{**self.flat(), **flat})

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {g: getattr(self, g).to_dict() for g in GROUPS}

    @classmethod
    def from_dict(cls, values: dict[str, dict[str, Any]]) -> PMFParams:
        return cls(**{g: GROUPS[g].from_dict(values.get(g, {}), where=f"[{g}]")
                      for g in GROUPS})

    @property
    def k(self) -> int:
        return self.model.k


def flat_names() -> list[str]:
    return [n for cls in GROUPS.values() for n in cls.field_names()]


@dataclass(frozen=True)
class JobConfig(Params):
    """Where the ratings come from, how they are split, where outputs go."""

    ratings: str | None = doc("ratings file or directory; none = built-in synthetic data",
                               default=None)
    ratings_table: str | None = doc("ratings as a table of the session's catalog (db.table: "
                                    "Hive metastore, Delta, Iceberg, ...) instead of a file",
                                    default=None)
    format: str = doc("input format: auto (from the file name), movielens-100k, movielens-dat, "
                       "movielens-csv, csv, parquet", default="auto")
    id_type: str = doc("ids as written: 'auto' (integers where the format or the column type "
                        "says so: MovieLens files, integer Parquet columns, CSV columns whose "
                        "every id is a plain integer, no leading zero; otherwise strings, "
                        "exactly as written), 'string', or 'integer' (parse them)",
                        default="auto")
    feedback: str = doc("'explicit' ratings, or 'implicit' feedback: (user, item) events "
                         "such as plays, clicks or purchases, each pair's value the sum of "
                         "--value-col (or the number of its rows); trains implicit-feedback "
                         "ALS, judged by ranking metrics only", default="explicit")
    value_col: str | None = doc("implicit feedback: the column of counts or weights (>= 0, "
                                 "summed per pair); default: every row counts 1 (a rating "
                                 "column is then ignored)", default=None)
    test: str | None = doc("a given test split in the same format (no random split then)",
                            default=None)
    user_col: str | None = doc("user id column (csv/parquet; default by format)", default=None)
    item_col: str | None = doc("item id column (csv/parquet; default by format)", default=None)
    rating_col: str | None = doc("rating column (csv/parquet; default by format)", default=None)
    timestamp_col: str | None = doc("timestamp column used to keep the latest duplicate "
                                          "(csv/parquet; default by format)",
                                     default=None)
    sep: str | None = doc("field separator for csv; default: the one of , tab ; | that "
                          "occurs most on the first line", default=None)
    rating_min: float | None = doc("lowest valid rating; default by format or the data's minimum",
                                    default=None)
    rating_max: float | None = doc("highest valid rating; default by format or the data's maximum",
                                    default=None)
    on_duplicate: str = doc("duplicate (user, item) pairs: 'latest' keeps the newest by "
                             "timestamp, 'error' refuses, 'sum' adds their values (what "
                             "implicit feedback always does unless 'error')",
                             default="latest")
    synthetic: str = doc("shape of the built-in data when no ratings are given: small, "
                          "ml-1m, ml-10m, 30m, netflix (100 M ratings)", default="small")
    split: str = doc("how the test split is made: 'random' (a seeded hash of user and item), "
                      "'user-fraction' (the test fraction of each user's ratings), "
                      "'temporal' (the latest test fraction of all ratings) or "
                      "'leave-last-n' (each user's last --leave-last ratings)",
                      default="random")
    leave_last: int = doc("ratings per user held out by --split leave-last-n", default=1)
    test_fraction: float = doc("fraction of ratings held out for testing", default=0.15)
    split_seed: int = doc("seed of the train/test split", default=0)
    validation_fraction: float = doc("share of the training ratings held out for early "
                                      "stopping (only with early_stopping)", default=0.05)
    output: str = doc("output directory (replaced atomically on success)", default="out/pmf")
    output_files: int = doc("Parquet files per factor table; 0 = by size", default=0)
    output_partitions: int = doc("write recommendations/ partitioned into this many "
                                 "user-id hash buckets (column user_bucket, see "
                                 "docs/outputs.md); 0 = one unpartitioned table", default=0)
    output_table_prefix: str | None = doc(
        "also publish every output table as a managed catalog table named PREFIX + table "
        "(db.pmf_ -> db.pmf_user_factors, ...), all replaced together when complete",
        default=None)
    top_k: int = doc("recommendations per user written to recommendations/; 0 = none",
                      default=10)
    min_item_ratings: int = doc("recommend only items with at least this many training ratings",
                                 default=1)
    eval_k: str = doc("cut-offs k of the ranking metrics, comma-separated (the lists are made "
                       "as long as the largest; --top-k of them are written)", default="5,10,20")
    exclude_items: str | None = doc("file of item ids (one per line) never to recommend",
                                     default=None)
    candidates: str | None = doc("file of item ids (one per line): recommend only these "
                                  "(an allow-list, on top of the exclusions)", default=None)
    relevance_threshold: float | None = doc(
        "a test rating at or above this is relevant (ranking metrics); default: 3/4 of the "
        "way up the rating scale (4 on 1-5, 8 on 2-10)", default=None)
    cold_start: str = doc("users without training ratings: 'popular' gives them the most "
                           "popular items (flagged), 'drop' leaves them out", default="popular")
    similar_items: int = doc("k nearest items by cosine written to item_neighbors/; 0 = none",
                              default=0)
    users_per_item: int = doc("top users per item (first by the model that orders the "
                               "lists, never one who rated it) written to item_users/; 0 = none",
                               default=0)
    users_per_item_items: str | None = doc("file of item ids: item_users/ for these items "
                                            "only (default: every trained item)", default=None)
    similar_users: int = doc("k nearest users by cosine written to user_neighbors/; 0 = none",
                              default=0)
    warm_start: str | None = doc("a previous model directory: ids in both start from its "
                                  "factors, new ids from the prior mean", default=None)
    report: bool = doc("write report.html with learning curves, error plots and ranking "
                        "metrics", default=True)
    checkpoint_dir: str | None = doc("write checkpoints of the training state here", default=None)
    checkpoint_every: int = doc("epochs between checkpoints (with checkpoint_dir)", default=5)
    resume: bool = doc("continue from the last complete checkpoint in checkpoint_dir",
                        default=False)

    def __post_init__(self):
        check_choice("format", self.format, FORMATS)
        check_choice("id_type", self.id_type, ID_TYPES)
        check_choice("synthetic", self.synthetic, SYNTHETIC_SHAPES)
        check_choice("on_duplicate", self.on_duplicate, DUPLICATE_POLICIES)
        self._check_feedback()
        check_choice("split", self.split, SPLITS)
        check_int("leave_last", self.leave_last, 1, 100_000)
        check_float("test_fraction", self.test_fraction, 0.0, True, 1.0, True)
        check_int("split_seed", self.split_seed, 0, 2**31 - 1)
        check_float("validation_fraction", self.validation_fraction, 0.0, True, 1.0, True)
        check_int("output_files", self.output_files, 0, 10_000)
        check_int("output_partitions", self.output_partitions, 0, 100_000)
        check_int("top_k", self.top_k, 0, 10_000)
        check_int("min_item_ratings", self.min_item_ratings, 0)
        check_choice("cold_start", self.cold_start, COLD_START)
        if not isinstance(self.eval_k, str) or not re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*",
                                                               self.eval_k):
            raise ConfigError(f"eval_k: expected comma-separated positive integers, got "
                              f"{self.eval_k!r}")
        if not all(1 <= k <= 10_000 for k in self.eval_ks):
            raise ConfigError(f"eval_k: each k must be in 1..10000, got {self.eval_k!r}")
        check_int("similar_items", self.similar_items, 0, 10_000)
        check_int("users_per_item", self.users_per_item, 0, 100_000)
        check_int("similar_users", self.similar_users, 0, 10_000)
        check_int("checkpoint_every", self.checkpoint_every, 1)
        check_bool("resume", self.resume)
        check_bool("report", self.report)
        if self.resume and not self.checkpoint_dir:
            raise ConfigError("resume: needs --checkpoint-dir, where the checkpoints are")
        for name in ("rating_min", "rating_max", "relevance_threshold"):
            v = getattr(self, name)
            if v is not None:
                check_float(name, v)
        if (self.rating_min is not None and self.rating_max is not None
                and self.rating_min >= self.rating_max):
            raise ConfigError(f"rating_min ({self.rating_min}) must be below rating_max "
                              f"({self.rating_max})")
        self._check_names()

    def _check_feedback(self) -> None:
        """What explicit ratings and implicit events each allow (and 'sum' as the
        events' default duplicate policy)."""
        check_choice("feedback", self.feedback, FEEDBACK)
        if self.feedback == "explicit":
            if self.value_col is not None:
                raise ConfigError("value_col: only with --feedback implicit (ratings are read "
                                  "from --rating-col)")
            if self.on_duplicate == "sum":
                raise ConfigError("on_duplicate: 'sum' adds implicit feedback (--feedback "
                                  "implicit); ratings keep the 'latest' or refuse ('error')")
        else:
            if self.on_duplicate == "latest":     # the default: events add up
                object.__setattr__(self, "on_duplicate", "sum")
            for name in ("rating_min", "rating_max"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"{name}: implicit feedback has no rating scale "
                                      f"(values are counts or weights >= 0)")

    def _check_names(self) -> None:
        """Paths, column and table names: non-empty strings, given together where one
        needs the other."""
        for name in ("ratings", "ratings_table", "output_table_prefix", "test", "user_col",
                     "item_col", "rating_col", "value_col", "timestamp_col", "sep", "exclude_items",
                     "candidates", "users_per_item_items", "warm_start", "checkpoint_dir"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or v == ""):
                raise ConfigError(f"{name}: expected a non-empty string, got {v!r}")
        if not isinstance(self.output, str) or not self.output:
            raise ConfigError(f"output: expected a directory path, got {self.output!r}")
        if self.users_per_item_items is not None and self.users_per_item == 0:
            raise ConfigError("users_per_item_items: needs --users-per-item K as well")
        if self.ratings is not None and self.ratings_table is not None:
            raise ConfigError("ratings_table: give either --ratings (a file) or "
                              "--ratings-table (a catalog table), not both")
        if self.test is not None and self.ratings is None and self.ratings_table is None:
            raise ConfigError("test: a given test split needs --ratings as well")
        for name in ("ratings_table", "output_table_prefix"):
            v = getattr(self, name)
            if v is not None and not _TABLE_NAME.fullmatch(v):
                raise ConfigError(f"{name}: {v!r} is not a table name like db.table (letters, "
                                  f"digits and _, parts separated by dots)")

    @property
    def eval_ks(self) -> tuple[int, ...]:
        """The ranking metrics' cut-offs, ascending."""
        return tuple(sorted({int(x) for x in self.eval_k.split(",")}))
