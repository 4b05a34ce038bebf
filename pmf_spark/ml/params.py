"""The Params of :class:`~pmf_spark.ml.PMF` and :class:`~pmf_spark.ml.PMFModel`, and
their mapping onto :class:`~pmf_spark.config.params.PMFParams`.

Where Spark ML's ``ALS`` has a Param with the same meaning it has the same name
(``rank``, ``maxIter``, ``userCol``, ...); the rest are pmf-spark's own, named after the
plain parameter names in camelCase (``lambda_u`` -> ``lambdaU``), with the defaults and
one-line docs of the parameter dataclasses. Every Param validates its value when it is
set (a :class:`~pmf_spark.errors.ConfigError` naming the Param); the combination is
validated once more, by the dataclasses, before any Spark job of ``fit``.

**regParam.** MLlib's explicit ALS minimises, on raw ratings and without biases,
``sum (r - u.v)^2 + regParam * (n_u |u|^2 + n_v |v|^2)``. Here ratings are z-scored
(``z = (r - mu) / sigma``); substituting ``u.v = sigma * u'.v'`` and dividing by
``sigma^2`` gives the same problem with ``lambda = regParam / sigma`` and count-scaled
regularisation. So setting ``regParam`` means: ``regScaling = "count"`` and
``lambdaU = lambdaV = regParam / sigma`` (and ``lambdaBias`` too unless it is set),
``sigma`` being the training ratings' standard deviation, known after the data is read.
Left unset (the default), the PMF priors ``lambdaU``/``lambdaV`` apply, unscaled.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from pyspark import StorageLevel
from pyspark.ml.param import Param, Params

from pmf_spark.config.checks import check_bool, check_choice, check_float, check_int
from pmf_spark.config.params import (
    CONFIDENCES,
    DUPLICATE_POLICIES,
    GRAM_DTYPES,
    LINKS,
    PRIORS,
    REG_SCALINGS,
    EngineParams,
    FitParams,
    JobConfig,
    ModelParams,
    PMFParams,
    RankingParams,
)
from pmf_spark.kernels.rows import BACKENDS

from ..errors import ConfigError
from ..models import REGISTRY, event_model

COLD_START_STRATEGIES = ("nan", "drop", "mean")


def _field(name: str):
    for cls in (ModelParams, FitParams, EngineParams, RankingParams, JobConfig):
        if name in cls.__dataclass_fields__:
            return cls.__dataclass_fields__[name]
    raise KeyError(name)


def _default(name: str):
    return _field(name).default


def _doc(name: str) -> str:
    return str(_field(name).metadata.get("doc", ""))


def _int(name: str, lo: int | None = None, hi: int | None = None) -> Callable[[Any], int]:
    def convert(value):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        check_int(name, value, lo, hi)
        return int(value)
    return convert


def _float(name: str, lo: float | None = None, lo_open: bool = False,
           hi: float | None = None) -> Callable[[Any], float]:
    def convert(value):
        check_float(name, value, lo, lo_open, hi, hi is not None)
        return float(value)
    return convert


def _bool(name: str) -> Callable[[Any], bool]:
    def convert(value):
        check_bool(name, value)
        return bool(value)
    return convert


def _choice(name: str, choices) -> Callable[[Any], str]:
    def convert(value):
        check_choice(name, value, choices)
        return str(value)
    return convert


def _column(name: str) -> Callable[[Any], str]:
    def convert(value):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{name}: expected a column name, got {value!r}")
        return value
    return convert


def _optional_column(name: str) -> Callable[[Any], str | None]:
    column = _column(name)
    return lambda value: None if value is None else column(value)


def _optional_float(name: str) -> Callable[[Any], float | None]:
    number = _float(name)
    return lambda value: None if value is None else number(value)


def _seed(value) -> int:
    # ALS seeds are any long (its default is a hash of the class name, often negative);
    # ours are non-negative: a negative seed is taken modulo 2^63, so it stays distinct
    check_int("seed", value, -(2**63), 2**63 - 1)
    return int(value) % (2**63)


def _storage_level(name: str) -> Callable[[Any], str]:
    def convert(value):
        if not isinstance(value, str) or not hasattr(StorageLevel, value):
            raise ConfigError(f"{name}: {value!r} is not a StorageLevel name (e.g. "
                              f"MEMORY_AND_DISK)")
        return value
    return convert


def _checkpoint_interval(value) -> int:
    check_int("checkpointInterval", value, -1)
    if value == 0:
        raise ConfigError("checkpointInterval: must be -1 (off) or >= 1, got 0")
    return int(value)


def _p(name: str, doc: str, convert) -> Param:
    return Param(Params._dummy(), name, doc, typeConverter=convert)


def _ours(name: str, plain: str, convert) -> Param:
    """A pmf-spark Param documented by its dataclass field."""
    return _p(name, _doc(plain), convert)


class PMFModelParams(Params):
    """Params shared by the estimator and the model (ALS's ``_ALSModelParams``)."""

    userCol = _p("userCol", "column of user ids (integers or strings; the model keeps "
                 "the type it was trained with)", _column("userCol"))
    itemCol = _p("itemCol", "column of item ids (integers or strings)", _column("itemCol"))
    predictionCol = _p("predictionCol", "prediction column name", _column("predictionCol"))
    coldStartStrategy = _p(
        "coldStartStrategy", "users or items without training ratings at prediction time: "
        "'nan' predicts NaN (as ALS), 'drop' drops those rows (as ALS), 'mean' predicts the "
        "mean plus the known side's bias and gives unknown users the most popular items",
        _choice("coldStartStrategy", COLD_START_STRATEGIES))
    blockSize = _p("blockSize", "accepted for ALS compatibility; top-k sizes its own "
                   "batches (about 32 MB of scores per task)", _int("blockSize", 1))

    def __init__(self, *args: Any):
        super().__init__(*args)
        self._setDefault(userCol="user", itemCol="item", predictionCol="prediction",
                         coldStartStrategy="mean", blockSize=4096)

    def getUserCol(self) -> str:
        return self.getOrDefault(self.userCol)

    def getItemCol(self) -> str:
        return self.getOrDefault(self.itemCol)

    def getPredictionCol(self) -> str:
        return self.getOrDefault(self.predictionCol)

    def getColdStartStrategy(self) -> str:
        return self.getOrDefault(self.coldStartStrategy)


#: pmf-spark Params -> the plain parameter they set
OURS = {
    "lambdaU": "lambda_u", "lambdaV": "lambda_v", "lambdaBias": "lambda_bias",
    "biases": "biases", "regScaling": "reg_scaling", "model": "model", "priors": "priors",
    "priorUpdateEvery": "prior_update_every", "link": "link", "clip": "clip",
    "initStd": "init_std", "samples": "samples", "burnIn": "burn_in", "thin": "thin",
    "earlyStopping": "early_stopping", "gramDtype": "gram_dtype",
    "chunkRatings": "chunk_ratings", "residentMb": "resident_mb",
    "missingWeight": "missing_weight", "missingRating": "missing_rating",
    "confidence": "confidence", "epsilon": "epsilon", "recommendBy": "recommend_by",
    "rankingRank": "ranking_rank", "rankingLambda": "ranking_lambda",
    "rankingEpochs": "ranking_epochs", "kernel": "kernel",
}
#: ALS Params with the same meaning -> the plain parameter they set
SHARED = {"rank": "rank", "maxIter": "epochs", "seed": "seed", "alpha": "alpha"}
#: plain parameter names the notebook API accepted -> Params (blocks sets both sides)
ALIASES = {**{v: k for k, v in OURS.items()}, **{v: k for k, v in SHARED.items()},
           "blocks": "numUserBlocks", "validation_fraction": "validationFraction",
           "timestamp_col": "timestampCol", "rating_col": "ratingCol",
           "user_col": "userCol", "item_col": "itemCol"}


class PMFParamsMixin(PMFModelParams):
    """The estimator's Params: ALS's names where the meaning is the same, then ours."""

    rank = _ours("rank", "rank", _int("rank", 1, 1000))
    maxIter = _p("maxIter", _doc("epochs"), _int("maxIter", 1, 100_000))
    regParam = _p("regParam", "ALS's regularisation (count-scaled, raw rating units); when "
                  "set, lambdaU = lambdaV = regParam / sigma with regScaling 'count' (see "
                  "pmf_spark.ml.params); unset: the PMF priors lambdaU/lambdaV",
                  _float("regParam", 0.0))
    ratingCol = _p("ratingCol", "column of ratings", _column("ratingCol"))
    implicitPrefs = _p("implicitPrefs", "train on implicit feedback (the 'implicit' model)",
                       _bool("implicitPrefs"))
    alpha = _ours("alpha", "alpha", _float("alpha", 0.0))
    seed = _p("seed", _doc("seed"), _seed)
    checkpointInterval = _p(
        "checkpointInterval", "accepted for ALS compatibility: the factors live on the "
        "driver between epochs, so no lineage grows and nothing needs checkpointing",
        _checkpoint_interval)
    numUserBlocks = _p("numUserBlocks", "row blocks (one count for both sides: the larger "
                       "of numUserBlocks and numItemBlocks); 0 = the cluster's default "
                       "parallelism", _int("numUserBlocks", 0, 100_000))
    numItemBlocks = _p("numItemBlocks", "see numUserBlocks", _int("numItemBlocks", 0, 100_000))
    nonnegative = _p("nonnegative", "only false: the ridge solves have no sign constraint",
                     _bool("nonnegative"))
    intermediateStorageLevel = _p(
        "intermediateStorageLevel", "accepted for ALS compatibility: the packed layout is "
        "cached MEMORY_AND_DISK and released when fit returns",
        _storage_level("intermediateStorageLevel"))
    finalStorageLevel = _p("finalStorageLevel", "accepted for ALS compatibility: the "
                           "model's factors are held on the driver",
                           _storage_level("finalStorageLevel"))
    timestampCol = _p("timestampCol", "column used to keep the latest of duplicate "
                      "(user, item) ratings; unset: duplicates are an error",
                      _optional_column("timestampCol"))
    onDuplicate = _ours("onDuplicate", "on_duplicate",
                        _choice("onDuplicate", DUPLICATE_POLICIES))
    ratingMin = _p("ratingMin", _doc("rating_min"), _optional_float("ratingMin"))
    ratingMax = _p("ratingMax", _doc("rating_max"), _optional_float("ratingMax"))
    validationFraction = _ours("validationFraction", "validation_fraction",
                               _float("validationFraction", 0.0, True, 1.0))
    lambdaU = _ours("lambdaU", "lambda_u", _float("lambdaU", 0.0))
    lambdaV = _ours("lambdaV", "lambda_v", _float("lambdaV", 0.0))
    lambdaBias = _ours("lambdaBias", "lambda_bias", _float("lambdaBias", 0.0))
    biases = _ours("biases", "biases", _bool("biases"))
    regScaling = _ours("regScaling", "reg_scaling", _choice("regScaling", REG_SCALINGS))
    model = _ours("model", "model", _choice("model", tuple(REGISTRY)))
    priors = _ours("priors", "priors", _choice("priors", PRIORS))
    priorUpdateEvery = _ours("priorUpdateEvery", "prior_update_every",
                             _int("priorUpdateEvery", 1))
    link = _ours("link", "link", _choice("link", LINKS))
    clip = _ours("clip", "clip", _bool("clip"))
    initStd = _ours("initStd", "init_std", _float("initStd", 0.0))
    samples = _ours("samples", "samples", _int("samples", 1, 100_000))
    burnIn = _ours("burnIn", "burn_in", _int("burnIn", 0, 100_000))
    thin = _ours("thin", "thin", _int("thin", 1, 100_000))
    earlyStopping = _ours("earlyStopping", "early_stopping", _int("earlyStopping", 0))
    gramDtype = _ours("gramDtype", "gram_dtype", _choice("gramDtype", GRAM_DTYPES))
    chunkRatings = _ours("chunkRatings", "chunk_ratings", _int("chunkRatings", 1000))
    residentMb = _ours("residentMb", "resident_mb", _int("residentMb", 0, 1 << 20))
    missingWeight = _ours("missingWeight", "missing_weight", _float("missingWeight", 0.0))
    missingRating = _ours("missingRating", "missing_rating", _optional_float("missingRating"))
    confidence = _ours("confidence", "confidence", _choice("confidence", CONFIDENCES))
    epsilon = _ours("epsilon", "epsilon", _float("epsilon", 0.0, True))
    recommendBy = _ours("recommendBy", "recommend_by", _choice(
        "recommendBy", ("rating",) + tuple(n for n, c in REGISTRY.items() if c.ranks)))
    rankingRank = _ours("rankingRank", "ranking_rank", _int("rankingRank", 1, 1000))
    rankingLambda = _ours("rankingLambda", "ranking_lambda", _float("rankingLambda", 0.0))
    rankingEpochs = _ours("rankingEpochs", "ranking_epochs", _int("rankingEpochs", 0, 100_000))
    kernel = _ours("kernel", "kernel", _choice("kernel", BACKENDS))

    def __init__(self, *args: Any):
        super().__init__(*args)
        self._setDefault(
            rank=_default("rank"), maxIter=_default("epochs"), ratingCol="rating",
            implicitPrefs=False, alpha=_default("alpha"), seed=_default("seed"),
            checkpointInterval=10,
            numUserBlocks=0, numItemBlocks=0, nonnegative=False,
            intermediateStorageLevel="MEMORY_AND_DISK", finalStorageLevel="MEMORY_AND_DISK",
            timestampCol=None, ratingMin=None, ratingMax=None,
            onDuplicate=_default("on_duplicate"),
            validationFraction=_default("validation_fraction"),
            **{p: _default(plain) for p, plain in OURS.items()})

    def param_names(self) -> list[str]:
        return [p.name for p in self.params]

    def set_checked(self, kwargs: dict[str, Any], where: str = "PMF(...)") -> None:
        """Set Params (and the notebook API's plain names) with helpful errors."""
        names = self.param_names()
        for key, value in kwargs.items():
            name = ALIASES.get(key, key)
            if name not in names:
                near = difflib.get_close_matches(key, names + list(ALIASES), n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise ConfigError(f"{where}: unknown parameter {key!r}{hint}")
            if value is None and name not in ("timestampCol", "ratingMin", "ratingMax",
                                              "missingRating"):
                continue
            self._set(**{name: value})
            if key == "blocks":
                self._set(numItemBlocks=value)

    def pmf_params(self, sigma: float = 1.0) -> PMFParams:
        """The parameter groups these Params describe, for training ratings with standard
        deviation ``sigma`` (which only ``regParam`` needs)."""
        get = self.getOrDefault
        if get(self.nonnegative):
            raise ConfigError("nonnegative: pmf-spark's ridge solves have no sign constraint; "
                              "only nonnegative=False is supported")
        flat = {plain: get(getattr(self, p)) for p, plain in {**OURS, **SHARED}.items()}
        flat["blocks"] = max(get(self.numUserBlocks), get(self.numItemBlocks))
        if get(self.implicitPrefs):
            events = event_model()
            if self.isSet(self.model) and not REGISTRY[get(self.model)].fits_events:
                raise ConfigError(f"implicitPrefs and model: implicitPrefs=True is the "
                                  f"{events!r} model, not {get(self.model)!r}")
            if not self.isSet(self.model):
                flat["model"] = events
            if not self.isSet(self.recommendBy):
                flat["recommend_by"] = "rating"      # as ALS: lists by its own scores
        if self.isSet(self.regParam):
            for p in ("lambdaU", "lambdaV"):
                if self.isSet(getattr(self, p)):
                    raise ConfigError(f"regParam and {p}: set one of them (regParam is "
                                      f"ALS's count-scaled lambda, {p} the PMF prior's)")
            lam = get(self.regParam) / sigma
            flat.update(lambda_u=lam, lambda_v=lam, reg_scaling="count")
            if not self.isSet(self.lambdaBias):
                flat["lambda_bias"] = lam
        return PMFParams.of(where="PMF", **flat)
