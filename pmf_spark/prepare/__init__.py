"""Stage 2, prepare: raw ids to dense indices as a saved vocabulary (:mod:`.indexing`),
the train/test splits (:mod:`.splits`), and validated ratings to the indexed, split
training data (:mod:`.ratings`).
"""
