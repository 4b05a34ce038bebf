"""Metrics: the per-epoch line, a fixed model's errors and ranking metrics at k
(:mod:`.metrics`), and ranking metrics computed where the lists are (:mod:`.ranking`).
"""
