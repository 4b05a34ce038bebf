"""The spark-submit entry points (installed as ``pmf_spark_jobs`` for the
``pmf-recommend`` command)."""
