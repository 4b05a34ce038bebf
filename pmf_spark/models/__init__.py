"""Model strategies, one module each, and the registry that names them.

Adding a model: a new module with its payload, block kernel and a
:class:`~pmf_spark.models.base.Strategy` subclass, and one line below.
"""

from __future__ import annotations

from .adaptive import PMFFamily
from .base import Strategy
from .bpmf import GibbsBPMF
from .implicit import ImplicitALS
from .missing_data import MissingDataPMF

#: ``--model`` name -> strategy class (a class may pick a variant in ``create``)
REGISTRY: dict[str, type[Strategy]] = {
    "pmf": PMFFamily,
    "bpmf": GibbsBPMF,
    "missing-data": MissingDataPMF,
    "implicit": ImplicitALS,
}


def strategy_for(params, ctx) -> Strategy:
    """The strategy that fits ``params`` (a :class:`~pmf_spark.config.params.PMFParams`)."""
    return REGISTRY[params.fit.model].create(params, ctx)


def capabilities(model: str | None) -> type[Strategy]:
    """The strategy class of a model name, to ask what it can do (``predicts_ratings``,
    ``ranks``, ``fits_events``, ``fold_in_as``, ...); a saved model that names none is
    PMF's (the only model of the first model.json format)."""
    return REGISTRY[model or "pmf"]


def event_model() -> str:
    """The name of the model that fits events: the one ``--feedback implicit`` and
    ``implicitPrefs=True`` train."""
    return next(name for name, cls in REGISTRY.items() if cls.fits_events)


__all__ = ["REGISTRY", "Strategy", "capabilities", "event_model", "strategy_for"]
