"""pmf-spark: probabilistic matrix factorisation (PMF) trained by ALS on Spark.

See :mod:`pmf_spark.train` for the model and the Spark design.
"""

__version__ = "0.1.0"
