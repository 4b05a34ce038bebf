"""The package's version, in a module of its own so that every module can name it
without importing the package's ``__init__`` (which reaches the pyspark.ml classes)."""

__version__ = "0.1.0"
