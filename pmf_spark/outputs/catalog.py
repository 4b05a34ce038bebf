"""Publishing a run's tables as managed tables of the session's catalog (Hive
metastore, or Delta/Iceberg where the cluster has them): staged, then swapped in."""

from __future__ import annotations

import logging

from pyspark.sql import SparkSession

from pmf_spark.outputs.modeldir import ALL_TABLES

log = logging.getLogger("pmf_spark")

TABLE_PROPERTY = "pmf_spark.output"


def _quoted(name: str) -> str:
    return ".".join(f"`{part}`" for part in name.split("."))


class CatalogTables:
    """A run's tables published as managed tables of the session's catalog, named
    ``prefix + table``. All are first written as staging tables (a failure drops them
    and leaves the previous tables as they were); then each is swapped in by two
    renames (previous -> backup, staging -> final) and the backups are dropped. A
    reader sees the previous table or the new one, complete, never a partial one (a
    query that resolves the name between the two renames of one table finds no
    table). Tables carry the property ``pmf_spark.output``; a table of that name
    without it is refused before training."""

    def __init__(self, spark: SparkSession, prefix: str):
        import uuid

        self.spark, self.prefix = spark, prefix
        self.token = uuid.uuid4().hex[:8]
        self.staged: list[str] = []
        self.partitioned: dict[str, str] = {}

    def name(self, table: str, suffix: str = "") -> str:
        return f"{self.prefix}{table}{suffix}"

    def _exists(self, name: str) -> bool:
        return bool(self.spark.catalog.tableExists(name))

    def _ours(self, name: str) -> bool:
        props = {r[0]: r[1] for r in self.spark.sql(f"SHOW TBLPROPERTIES {_quoted(name)}")
                 .collect()}
        return TABLE_PROPERTY in props

    def check(self, input_table: str | None = None) -> None:
        """Before training: the database exists, no target is someone else's table
        or the input."""
        from pmf_spark.errors import ConfigError

        db = self.prefix.rsplit(".", 1)[0] if "." in self.prefix else None
        if db is not None and not self.spark.catalog.databaseExists(db):
            raise ConfigError(f"output-table-prefix {self.prefix}: no database {db!r} in the "
                              f"session catalog (create it, or check the catalog settings)")
        for t in ALL_TABLES:
            name = self.name(t)
            if input_table is not None and name.lower() == input_table.lower():
                raise ConfigError(f"output-table-prefix {self.prefix}: {name} is the input "
                                  f"table; choose another prefix")
            if self._exists(name) and not self._ours(name):
                raise ConfigError(f"output-table-prefix {self.prefix}: table {name} exists and "
                                  f"was not written by pmf-spark; refusing to replace it")

    def stage(self, path_of, tables: dict[str, int], partitions: dict) -> None:
        """Copy each table of the (staging) output directory -- ``path_of(table)`` is
        where it is -- into a staging table."""
        try:
            for t in tables:
                staged = self.name(t, f"__staging_{self.token}")
                w = self.spark.read.parquet(path_of(t)).write.mode("errorifexists")
                if t in partitions:
                    w = w.partitionBy(partitions[t]["column"])
                    self.partitioned[self.name(t)] = partitions[t]["column"]
                self.staged.append(staged)
                w.saveAsTable(staged)
                self.spark.sql(f"ALTER TABLE {_quoted(staged)} SET TBLPROPERTIES "
                               f"('{TABLE_PROPERTY}' = 'train_pmf', "
                               f"'pmf_spark.run' = '{self.token}')")
                log.info("staged table %s (%d rows)", staged, tables[t])
        except BaseException:
            self.abort()
            raise

    def swap(self) -> None:
        """Rename the staging tables into place; drop the previous tables."""
        from pmf_spark.errors import OutputError

        moved: list[list] = []          # [final, backup or None, swapped in]
        try:
            for staged in self.staged:
                final = staged.rsplit("__staging_", 1)[0]
                backup = None
                if self._exists(final):
                    backup = f"{final}__previous_{self.token}"
                    self._rename(final, backup)
                moved.append([final, backup, False])
                self._rename(staged, final)
                moved[-1][2] = True
                if final in self.partitioned:
                    self._relocate_partitions(final)
        except Exception as exc:
            for final, backup, swapped in reversed(moved):
                if swapped:
                    self.spark.sql(f"DROP TABLE IF EXISTS {_quoted(final)}")
                if backup is not None:
                    self._rename(backup, final)
            self.abort()
            raise OutputError(f"output tables {self.prefix}*: swap failed, the previous tables "
                              f"are back ({str(exc).splitlines()[0][:200]})") from None
        produced = {m[0] for m in moved}
        for t in ALL_TABLES:
            name = self.name(t)
            if name not in produced and self._exists(name) and self._ours(name):
                self.spark.sql(f"DROP TABLE {_quoted(name)}")    # a previous run's extra
        for _, backup, _ in moved:
            if backup is not None:
                self.spark.sql(f"DROP TABLE IF EXISTS {_quoted(backup)}")
        log.info("published %d table(s) as %s*", len(moved), self.prefix)

    def _rename(self, old: str, new: str) -> None:
        self.spark.sql(f"ALTER TABLE {_quoted(old)} RENAME TO {_quoted(new)}")

    def _location(self, name: str, spec: str = "") -> str:
        rows = self.spark.sql(f"DESCRIBE FORMATTED {_quoted(name)} {spec}").collect()
        return [r[1] for r in rows if r[0] == "Location"][0].rstrip("/")

    def _relocate_partitions(self, name: str) -> None:
        """Point the partitions of a renamed table at its new directory: the Hive
        metastore does that itself, Spark's in-memory catalog does not."""
        base = self._location(name)
        parts = [r[0] for r in self.spark.sql(f"SHOW PARTITIONS {_quoted(name)}").collect()]
        for part in parts:
            col, value = part.split("=", 1)
            spec = f"PARTITION (`{col}` = {int(value)})"
            if self._location(name, spec) != f"{base}/{part}":
                self.spark.sql(f"ALTER TABLE {_quoted(name)} {spec} SET LOCATION "
                               f"'{base}/{part}'")

    def abort(self) -> None:
        for staged in self.staged:
            try:
                self.spark.sql(f"DROP TABLE IF EXISTS {_quoted(staged)}")
            except Exception:  # best effort: never hide the original failure
                pass
        self.staged = []
