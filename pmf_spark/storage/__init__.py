"""Files on any filesystem Spark reads: Hadoop's FileSystem API through the session's
JVM (:mod:`.hadoop`) and the operations the commit needs, on Hadoop or the local
filesystem (:mod:`.ops`). Used by inputs and outputs.
"""
