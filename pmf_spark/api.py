"""The notebook API: ``from pmf_spark import PMF``.

    from pmf_spark import PMF
    model = PMF(rank=30).fit(ratings_df)            # columns user, item, rating
    scored = model.transform(pairs_df)              # adds "prediction"
    recs = model.recommend_for_all_users(10)        # (user_id, rank, item_id, ...)
    model.save("models/pmf")
    same = PMF.load("models/pmf")                   # same predictions

These are the Spark ML classes of :mod:`pmf_spark.ml` (an ``Estimator`` and a
``Model``): the same object fits in a notebook, a ``Pipeline`` or a
``CrossValidator``. ``fit`` validates the DataFrame like the job validates files and
runs the job's trainer; ``save`` writes the job's output layout, so a saved model is
also a model directory for ``jobs/recommend.py`` and vice versa.
"""

from __future__ import annotations

from .ml import PMF, PMFModel

__all__ = ["PMF", "PMFModel"]
