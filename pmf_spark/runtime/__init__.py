"""The Spark session around a job: small typed helpers (:mod:`.sparkutil`), Ctrl-C and
SIGTERM during a run (:mod:`.interrupt`), and Spark/JVM failures a person causes as
one-line errors (:mod:`.failures`).
"""
