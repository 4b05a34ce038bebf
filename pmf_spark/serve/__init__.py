"""Stage 6, serving: answers from a trained model. Without Spark (pyarrow + numpy):
:class:`LocalModel` (:mod:`.local`) over the answers both engines give (:mod:`.answers`)
and plain-Python files (:mod:`.files`); through Spark: the model read back as
DataFrames (:mod:`.saved`). No pyspark on the Spark-free side.

    from pmf_spark.serve import LocalModel
    model = LocalModel("out/ml100k")
    model.recommend(18, k=10)
"""

from .local import (
    ITEM_USERS_COLUMNS,
    RECS_COLUMNS,
    LocalModel,
    ModelAnswers,
    Side,
    model_sections,
    relevance_threshold,
)

__all__ = ["LocalModel", "ModelAnswers", "RECS_COLUMNS", "ITEM_USERS_COLUMNS", "Side",
           "model_sections", "relevance_threshold"]
