"""Stage 5, outputs: the tables a run writes (:mod:`.tables`), the output directory
replaced safely (:mod:`.commit`) under one writer at a time (:mod:`.lock`), catalog
tables (:mod:`.catalog`) and the HTML report (:mod:`.report`).
"""
