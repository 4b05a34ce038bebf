"""Stage 3, training: the loop written once for every model (:mod:`.loop`), the job's
steps from loading to writing (:mod:`.job`), the checks before expensive steps
(:mod:`.preflight`), checkpoints and resuming (:mod:`.checkpoint`), warm starts
(:mod:`.warmstart`), what a run computes after training (:mod:`.results`) and the
hyperparameter search (:mod:`.tuning`).
"""
