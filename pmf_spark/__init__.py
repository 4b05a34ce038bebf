"""pmf-spark: probabilistic matrix factorisation (PMF) trained by ALS on Spark.

See :mod:`pmf_spark.train.loop` for the model and the Spark design, and
:mod:`pmf_spark.ml` for the Spark ML estimator, also the notebook API
(``from pmf_spark import PMF``).
"""

from .version import __version__

__all__ = ["PMF", "PMFModel", "__version__"]


def __getattr__(name):
    # the API pulls in pyspark.sql; Python workers importing the kernels should not pay for it
    if name in ("PMF", "PMFModel"):
        from . import ml

        return getattr(ml, name)
    raise AttributeError(f"module 'pmf_spark' has no attribute {name!r}")
