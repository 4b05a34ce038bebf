"""Model strategies, one module each, and the registry that names them.

Adding a model: a new module with its payload, block kernel and a
:class:`~pmf_spark.models.base.Strategy` subclass, and one line below.
"""

from __future__ import annotations

from .base import Strategy
from .bpmf import GibbsBPMF
from .implicit import ImplicitALS
from .missing_data import MissingDataPMF
from .pmf import MapPMF

#: ``--model`` name -> strategy class (a class may pick a variant in ``create``)
REGISTRY: dict[str, type[Strategy]] = {
    "pmf": MapPMF,
    "bpmf": GibbsBPMF,
    "missing-data": MissingDataPMF,
    "implicit": ImplicitALS,
}


def strategy_for(params, ctx) -> Strategy:
    """The strategy that fits ``params`` (a :class:`~pmf_spark.config.params.PMFParams`)."""
    return REGISTRY[params.fit.model].create(params, ctx)


__all__ = ["REGISTRY", "Strategy", "strategy_for"]
