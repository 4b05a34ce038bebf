"""Stage 1, inputs: which files a path names (:mod:`.paths`), reading MovieLens, CSV
and Parquet ratings through Spark (:mod:`.read`), the one-pass validation
(:mod:`.validate`), the built-in synthetic data (:mod:`.synthetic`) and item titles
(:mod:`.titles`).
"""
