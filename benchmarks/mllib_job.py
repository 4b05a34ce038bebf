"""The baseline of benchmarks/end_to_end.py: what a team would write with Spark MLlib ALS
to do the training job's work, as one spark-submit script.

    ./spark-submit.sh benchmarks/mllib_job.py --ratings ../shared/data/ml-100k/u.data \\
        --output /tmp/mllib-out

Reads a MovieLens ratings file, makes a seeded 85/15 split, fits ALS (rank 30, 20
iterations, a checkpoint directory so the lineage does not overflow the stack), reports
the test RMSE (cold predictions filled with the training mean, clipped to the rating
range), recommends the top 10 unseen items for every user and writes them and the
factors to Parquet. No validation of the input, no ranking metrics, no report: less
work than our job does.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ratings", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--rank", type=int, default=30)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--reg-param", type=float, default=0.1)
    args = ap.parse_args(argv)

    from pyspark.ml.recommendation import ALS
    from pyspark.sql import SparkSession, Window
    from pyspark.sql import functions as F

    t0 = time.perf_counter()
    spark = SparkSession.builder.appName("mllib als baseline").getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    spark.sparkContext.setCheckpointDir(tempfile.mkdtemp(prefix="mllib-ck-"))
    sep = "::" if args.ratings.endswith(".dat") else "\t"
    raw = (spark.read.option("sep", sep).csv(args.ratings)
           .select(F.col("_c0").cast("int").alias("user"), F.col("_c1").cast("int").alias("item"),
                   F.col("_c2").cast("double").alias("rating")))
    train, test = raw.randomSplit([0.85, 0.15], seed=0)
    train = train.cache()
    als = ALS(rank=args.rank, maxIter=args.iters, regParam=args.reg_param, userCol="user",
              itemCol="item", ratingCol="rating", coldStartStrategy="nan", seed=0,
              checkpointInterval=5)
    model = als.fit(train)
    stats = train.agg(F.avg("rating"), F.min("rating"), F.max("rating")).first()
    mu, lo, hi = stats[0], stats[1], stats[2]
    pred = model.transform(test)
    p = F.when(F.isnan("prediction"), F.lit(mu)).otherwise(F.col("prediction"))
    p = F.least(F.greatest(p, F.lit(lo)), F.lit(hi))
    rmse = pred.select(F.sqrt(F.avg((p - F.col("rating")) ** 2))).first()[0]
    # top-10 unseen: ask for more, drop what the user rated in training, keep 10
    most = train.groupBy("user").count().agg(F.max("count")).first()[0]
    n_items = train.select("item").distinct().count()
    recs = (model.recommendForAllUsers(min(n_items, most + 10))
            .select("user", F.posexplode("recommendations").alias("pos", "rec"))
            .select("user", F.col("rec.item").alias("item"), F.col("rec.rating").alias("score"),
                    "pos")
            .join(train.select("user", "item"), ["user", "item"], "left_anti"))
    w = Window.partitionBy("user").orderBy(F.col("score").desc(), F.col("item"))
    top = recs.withColumn("rank", F.row_number().over(w)).where("rank <= 10")
    top.write.mode("overwrite").parquet(f"{args.output}/recommendations")
    model.userFactors.write.mode("overwrite").parquet(f"{args.output}/user_factors")
    model.itemFactors.write.mode("overwrite").parquet(f"{args.output}/item_factors")
    print(f"mllib baseline: test rmse {rmse:.4f}, {time.perf_counter() - t0:.1f}s in the "
          f"driver", flush=True)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
