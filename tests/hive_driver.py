"""Run under spark-submit.sh with Hive support by tests/test_hive.py (not a test module).

    hive_driver.py train PARQUET JOB_ARGS...  create shop.events from a Parquet file, then
                                              run the training job's main (its own session
                                              handling: getOrCreate, stop) and exit with its code
    hive_driver.py fail-midway JOB_ARGS...    print the shop tables, run the training job in
                                              this session with the third staged table failing,
                                              print them again (one JSON line)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pyspark.sql import DataFrameWriter, SparkSession
from pyspark.sql import functions as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))


def tables(spark) -> dict:
    out = {}
    for t in spark.catalog.listTables("shop"):
        df = spark.table(f"shop.{t.name}")
        props = {r[0]: r[1] for r in spark.sql(f"SHOW TBLPROPERTIES shop.{t.name}").collect()}
        out[t.name] = {
            "schema": df.schema.simpleString(), "rows": df.count(),
            "checksum": df.select(F.sum(F.pmod(F.xxhash64(*df.columns), F.lit(1 << 31))))
            .first()[0],
            "run": props.get("pmf_spark.run"), "type": t.tableType}
    return out


def main(argv: list[str]) -> int:
    spark = SparkSession.builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    import train_pmf

    if argv[0] == "train":
        spark.sql("CREATE DATABASE shop")
        spark.read.parquet(argv[1]).write.saveAsTable("shop.events")
        return train_pmf.main(argv[2:])
    from pmf_spark.errors import OutputError

    before = tables(spark)
    real, calls = DataFrameWriter.saveAsTable, []

    def failing(self, name, *args, **kwargs):
        calls.append(name)
        if len(calls) == 3:
            raise OutputError(f"output table {name}: no space left on device")
        return real(self, name, *args, **kwargs)

    DataFrameWriter.saveAsTable = failing  # type: ignore[method-assign]
    code = train_pmf.main(argv[1:], spark=spark)
    DataFrameWriter.saveAsTable = real  # type: ignore[method-assign]
    print("HIVE " + json.dumps({"before": before, "code": code, "staged": calls,
                                "after": tables(spark)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
