"""Top-k lists, neighbours and fold-in: the numpy kernels and block functions
(:mod:`.topk`, :mod:`.foldin`, no pyspark) and their blockwise Spark driver
(:mod:`.spark`). Used by training's results, the answers and the pyspark.ml model.
"""
