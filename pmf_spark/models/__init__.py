"""Model strategies, one module each, and the registry that names them.

Adding a model: a new module with its payload, block kernel and a
:class:`~pmf_spark.models.base.Strategy` subclass, and one line below.
"""

from __future__ import annotations

from .adaptive import AdaptivePriorPMF
from .base import Strategy
from .bpmf import GibbsBPMF
from .implicit import ImplicitALS
from .missing_data import MissingDataPMF
from .pmf import MapPMF


class PMFFamily(MapPMF):
    """``--model pmf``: :class:`MapPMF` with fixed priors, :class:`AdaptivePriorPMF`
    (the same model with its prior and noise variances learned) with
    ``--priors adaptive``. The choice lives here so that neither module imports the
    other's subclass."""

    @classmethod
    def create(cls, params, ctx) -> Strategy:
        return (MapPMF if params.fit.priors == "fixed" else AdaptivePriorPMF)(params, ctx)


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


__all__ = ["REGISTRY", "Strategy", "strategy_for"]
