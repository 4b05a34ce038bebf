"""Row math, no pyspark: the numpy row kernels and read-out (:mod:`.rows`), their
compiled (numba) twins (:mod:`.compiled`), which of the two runs (:mod:`.backends`), and
the small dense reference ALS the Spark path is tested against (:mod:`.reference`).
"""
