"""Stage 4, the Spark half-epoch: the packed block layout and its worker-resident
store (:mod:`.layout`), the block functions ``applyInPandas`` runs (:mod:`.blocks`), the
Spark engine (:mod:`.spark`) and a single-process engine with the same interface
(:mod:`.local`). The engine knows no model: strategies in :mod:`pmf_spark.models` say
what to broadcast and which kernel runs.
"""
