"""Small typed helpers over PySpark: the session's JVM, job descriptions, one row."""

from __future__ import annotations

from typing import Any

from pyspark.sql import DataFrame, Row, SparkSession


def jvm(spark: SparkSession) -> Any:
    """The py4j view of the driver JVM."""
    return spark.sparkContext._jvm


def describe(spark: SparkSession | None, text: str | None) -> None:
    """Name the following Spark jobs in the UI (None clears the name); nothing without
    a session (the single-process engine)."""
    if spark is not None:
        spark.sparkContext.setJobDescription(text)  # type: ignore[arg-type]


def first(df: DataFrame) -> Row:
    """The first row of a frame that always has one (an aggregation without grouping)."""
    row = df.first()
    if row is None:  # pragma: no cover - an ungrouped aggregation always has one row
        raise RuntimeError("expected one row")
    return row
