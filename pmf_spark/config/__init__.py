"""Stage 0, configuration: typed, validated parameter groups (:mod:`.params`), the
checks and dict round trip they share (:mod:`.checks`), and the TOML job files with the
effective configuration (:mod:`.files`). No pyspark.
"""
