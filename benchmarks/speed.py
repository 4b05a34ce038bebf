"""Seconds per epoch: pmf-spark vs Spark MLlib ALS on the same cached DataFrame, one run.

    .venv/bin/python benchmarks/speed.py --shape ml-1m  [--rank 30] [--iters 10]
    .venv/bin/python benchmarks/speed.py --shape ml-10m --driver-memory 8g
    .venv/bin/python benchmarks/speed.py --data ../shared/data/ml-100k/u.data

What runs, in one process on one local[cores] session, on the same prepared
ratings (seeded 85/15 split, dense ids, cached):

- ``pmf-spark als-wr``: our job's ALS with MLlib's regularisation (λ scaled by each
  row's count, no biases) and λ = regParam / σ (we work on z-scored ratings);
- ``pmf-spark default``: our default rating model (PMF: unscaled λ, biases) alone, as
  MLlib trains one model;
- ``pmf-spark default + ranking model``: what the job trains by default, the rating model
  and the missing-data ranking model beside it in the same half-epoch jobs;
- ``pmf-spark numpy kernel``: the default with the numpy row kernels instead of the
  compiled (numba) ones;
- ``pmf-spark no resident``: the default without worker-resident blocks
  (``--resident-mb 0``: every half-epoch sends the packed ratings to Python);
- ``pmf-spark float32``: the default with float32 Gram matrices;
- ``mllib``: ``pyspark.ml.recommendation.ALS`` with the same rank, iterations and
  regParam. Seconds per iteration are (T(iters) - T(1)) / (iters - 1) of two fits,
  which removes its setup the way we report ours separately;
- ``numpy floor``: our batched solver in this single process, one BLAS thread;
- ``spark job floor``: one empty Spark job of a half-epoch's shape (broadcast,
  applyInPandas over one row per block, Arrow collect), the fixed cost per half-epoch.

Per epoch is the median over epochs after the first. Peak RSS: the driver JVM,
the Python driver and the largest Python worker (VmHWM). Writes
benchmarks/results/speed-<shape>.{json,md}; the BLAS each side used is recorded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, md_table, session, write_results  # noqa: E402


def _status_mb(pid: int, field: str, missing: float) -> float:
    """A memory field of /proc/PID/status (VmHWM: peak RSS, VmRSS: current) in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return missing


def vm_hwm_mb(pid: int) -> float:
    return _status_mb(pid, "VmHWM", float("nan"))


def vm_rss_mb(pid: int) -> float:
    return _status_mb(pid, "VmRSS", 0.0)


def worker_pids() -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"pyspark.daemon" in cmd or b"pyspark.worker" in cmd:
                pids.append(int(d.name))
    return pids


class WorkerSampler:
    """Largest RSS of any Python worker, sampled every half second (workers come and
    go, so their own high-water marks at the end miss the ones that exited)."""

    def __init__(self):
        import threading

        self.peak = 0.0
        self.seen = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.5):
            for pid in worker_pids():
                self.seen.add(pid)
                self.peak = max(self.peak, vm_rss_mb(pid))

    def stop(self):
        self._stop.set()
        self._thread.join()


def memory(spark, sampler) -> dict:
    jvm_pid = int(str(spark.sparkContext._jvm.java.lang.management.ManagementFactory
                      .getRuntimeMXBean().getName()).split("@")[0])
    sampler.stop()
    return {"driver_jvm_peak_mb": vm_hwm_mb(jvm_pid),
            "driver_python_peak_mb": vm_hwm_mb(os.getpid()),
            "worker_python_peak_mb": sampler.peak,
            "python_worker_processes_seen": len(sampler.seen)}


def run_ours(spark, data, params, label):
    from pmf_spark.train.loop import Trainer

    t0 = time.perf_counter()
    trainer = Trainer(spark, data, params)
    trainer.setup()
    state = trainer.fit()
    total = time.perf_counter() - t0
    per = [m.seconds for m in state.history]
    engine = trainer.engine
    out = {"setup_seconds": engine.setup_seconds, "epoch_seconds": per,
           "per_epoch": statistics.median(per[1:]) if len(per) > 1 else per[0],
           "first_epoch": per[0], "end_to_end": total,
           "test_rmse": trainer.final_metrics(state).test_rmse, "blocks": engine.blocks,
           "resident": dict(engine.resident.stats)}
    # where an epoch's time went, per epoch over the whole fit (all epochs): the
    # half-step jobs' wall time on the driver, and the Python tasks' time in all and in
    # the kernels, divided by the cores that ran them in parallel
    n, cores = len(per), spark.sparkContext.defaultParallelism
    t = engine.timing
    out["breakdown"] = {"jobs_per_epoch": t["jobs"] / n, "job_wall": t["wall_s"] / n,
                        "task_per_core": t["task_s"] / n / cores,
                        "kernel_per_core": t["kernel_s"] / n / cores,
                        "epoch_mean": sum(per) / n}
    trainer.release()
    b = out["breakdown"]
    print(f"{label:22s} {out['per_epoch']:7.2f} s/epoch  setup {out['setup_seconds']:.1f}s  "
          f"test rmse {out['test_rmse']:.4f}  resident {out['resident']}  per epoch: "
          f"{b['jobs_per_epoch']:.1f} jobs {b['job_wall']:.2f}s, tasks {b['task_per_core']:.2f}s"
          f"/core, kernels {b['kernel_per_core']:.2f}s/core", flush=True)
    return out


def run_mllib(spark, data, rank, iters, reg):
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import functions as F

    train = data.ratings.where("kind = 0").select("u", "i", "rating")
    test = data.ratings.where("is_test").select("u", "i", "rating")
    times = {}
    model = None
    for n in (1, iters):
        als = ALS(rank=rank, maxIter=n, regParam=reg, userCol="u", itemCol="i",
                  ratingCol="rating", coldStartStrategy="nan", seed=0)
        t0 = time.perf_counter()
        model = als.fit(train)
        model.userFactors.count()          # the fit is lazy at the end: force it
        times[n] = time.perf_counter() - t0
    pred = model.transform(test)
    p = F.when(F.isnan("prediction"), F.lit(data.mu)).otherwise(F.col("prediction"))
    p = F.least(F.greatest(p, F.lit(data.rating_lo)), F.lit(data.rating_hi))
    rmse = pred.select(F.sqrt(F.avg((p - F.col("rating")) ** 2))).first()[0]
    per = (times[iters] - times[1]) / max(1, iters - 1)
    out = {"per_epoch": per, "fit_seconds": times[iters], "fit_1_iter_seconds": times[1],
           "end_to_end": times[iters], "test_rmse": rmse,
           "num_blocks": spark.sparkContext.defaultParallelism}
    print(f"{'mllib':22s} {per:7.2f} s/iter   fit {times[iters]:.1f}s  test rmse {rmse:.4f}",
          flush=True)
    return out


def spark_job_floor(spark, cores, repeats=10):
    """Seconds of one Spark job of our half-epoch's shape doing no work: a broadcast,
    ``groupBy(block).applyInPandas`` over a cached frame with one tiny row per block,
    Arrow back to the driver. Every half-epoch pays at least this."""
    import pandas as pd

    frame = spark.range(cores).selectExpr("cast(id as int) as block").cache()
    frame.count()

    def echo(pdf: pd.DataFrame) -> pd.DataFrame:
        return pdf

    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        bc = spark.sparkContext.broadcast(np.zeros(1))
        frame.groupBy("block").applyInPandas(echo, "block int").toArrow()
        bc.destroy(blocking=False)
        times.append(time.perf_counter() - t0)
    frame.unpersist()
    per = statistics.median(times[1:])
    print(f"{'spark job floor':22s} {per:7.2f} s/job (an epoch runs two)", flush=True)
    return {"per_job": per, "job_seconds": times[1:]}


def numpy_floor(data, params, epochs=3, backend="numpy"):
    """One process, one BLAS thread: the same solves without Spark, by the numpy
    kernel or the compiled one (``backend='numba'``)."""
    from threadpoolctl import threadpool_limits

    from pmf_spark.kernels.rows import ridge_rows

    tbl = data.ratings.where("kind = 0").select("u", "i", "rating").toArrow()
    u = tbl.column("u").to_numpy()
    i = tbl.column("i").to_numpy()
    z = (tbl.column("rating").to_numpy() - data.mu) / data.sigma

    def csr(rows, cols, n):
        order = np.lexsort((cols, rows))
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
        return indptr, cols[order].astype(np.int32), z[order]

    U_csr, V_csr = csr(u, i, data.n_users), csr(i, u, data.n_items)
    rng = np.random.default_rng(0)
    k = params.model.rank + 1
    U = rng.normal(0, 0.1, (data.n_users, k))
    V = rng.normal(0, 0.1, (data.n_items, k))
    reg = np.full(k, params.fit.lambda_u)
    reg[-1] = params.fit.lambda_bias
    gram_dtype = params.engine.gram_dtype
    times = []
    with threadpool_limits(1):
        for _ in range(epochs):
            t0 = time.perf_counter()
            for (indptr, cols, t), fixed, out in ((U_csr, V, U), (V_csr, U, V)):
                design = np.hstack([fixed[:, :-1], np.ones((fixed.shape[0], 1))])
                sol = ridge_rows(indptr, cols, t - fixed[cols, -1], design, reg,
                                 gram_dtype=np.dtype(gram_dtype), backend=backend)
                out[:] = sol.x
            times.append(time.perf_counter() - t0)
    per = statistics.median(times)
    # the work of an epoch: every entry adds its k x k outer product to its row's Gram
    # (a symmetric half, counted in full as the kernels compute it), every row one
    # k x k Cholesky (k^3 / 3) and two triangular solves
    nnz = U_csr[1].size
    flops = 2 * (2 * nnz * k * k) + (data.n_users + data.n_items) * (k ** 3 / 3 + 2 * k * k)
    gflops = flops / per / 1e9
    print(f"{backend + ' floor (' + gram_dtype + ')':22s} {per:7.2f} s/epoch  "
          f"{gflops:.1f} GFLOP/s", flush=True)
    return {"per_epoch": per, "epoch_seconds": times, "gflops": gflops}


def dgemm_rate(n: int = 2000, repeats: int = 3) -> float:
    """One thread's matrix-multiply rate here, GFLOP/s: the machine's compute ceiling
    the kernels are measured against."""
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).normal(size=(n, n))
    best = float("inf")
    with threadpool_limits(1):
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="ml-1m", help="synthetic shape: small, ml-1m, ml-10m")
    ap.add_argument("--data", help="a ratings file instead (format from its name)")
    ap.add_argument("--rank", type=int, default=30)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--reg-param", type=float, default=0.1, help="MLlib regParam")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=0, help="pmf-spark blocks (0 = cores)")
    ap.add_argument("--driver-memory", default="6g")
    ap.add_argument("--skip", default="", help="comma-separated runs to skip")
    ap.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                    help="extra Spark properties for the session")
    ap.add_argument("--name")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))

    conf = dict(kv.split("=", 1) for kv in args.conf)
    spark = session("pmf-spark speed benchmark", args.cores, args.driver_memory, conf)
    sampler = WorkerSampler()
    import logging

    logging.getLogger("pmf_spark").setLevel(logging.WARNING)
    from pmf_spark.config.params import JobConfig, PMFParams
    from pmf_spark.inputs.read import load_ratings
    from pmf_spark.prepare.ratings import prepare
    from pmf_spark.train.job import load_inputs

    t0 = time.perf_counter()
    if args.data:
        clean = load_ratings(spark, args.data)
        label = f"{Path(args.data).parent.name}/{Path(args.data).name}"
    else:
        clean, _ = load_inputs(spark, JobConfig(synthetic=args.shape))
        label = args.shape
    data = prepare(clean, None, test_fraction=0.15, split_seed=0, on_duplicate="latest")
    prep = time.perf_counter() - t0
    print(f"{label}: {data.n_users} users x {data.n_items} items, {data.n_train} train / "
          f"{data.n_test} test ratings; prepared in {prep:.1f}s", flush=True)

    # like for like with MLlib: the rating model alone (the job's default also trains the
    # ranking model beside it, in the same half-epoch jobs: the "+ ranking model" row)
    base = PMFParams.of(rank=args.rank, epochs=args.iters, blocks=args.blocks,
                        recommend_by="rating")
    # warm up (JIT, page cache, Python workers) so run order does not bias the table
    run_ours(spark, data, base.replace(epochs=2), "warm-up (not reported)")
    runs = {}
    if "als-wr" not in skip:
        lam = args.reg_param / data.sigma
        runs["pmf-spark als-wr"] = run_ours(spark, data, base.replace(
            reg_scaling="count", biases=False, lambda_u=lam, lambda_v=lam), "pmf-spark als-wr")
    if "default" not in skip:
        runs["pmf-spark default"] = run_ours(spark, data, base, "pmf-spark default")
    if "with-ranker" not in skip:
        runs["pmf-spark default + ranking model"] = run_ours(
            spark, data, base.replace(recommend_by=PMFParams().ranker.recommend_by),
            "pmf-spark default + ranking model")
    if "numpy-kernel" not in skip:
        runs["pmf-spark numpy kernel"] = run_ours(spark, data, base.replace(kernel="numpy"),
                                                  "pmf-spark numpy kernel")
    if "no-resident" not in skip:
        runs["pmf-spark no resident"] = run_ours(spark, data, base.replace(resident_mb=0),
                                                 "pmf-spark no resident")
    if "float32" not in skip:
        runs["pmf-spark float32"] = run_ours(spark, data, base.replace(gram_dtype="float32"),
                                             "pmf-spark float32")
    if "mllib" not in skip:
        runs["mllib"] = run_mllib(spark, data, args.rank, args.iters, args.reg_param)
    floors = {}
    if "floor" not in skip:
        floors["numpy float64"] = numpy_floor(data, base)
        floors["numpy float32"] = numpy_floor(data, base.replace(gram_dtype="float32"))
        floors["numba float64"] = numpy_floor(data, base, backend="numba")
        floors["numba float32"] = numpy_floor(data, base.replace(gram_dtype="float32"),
                                              backend="numba")
    dgemm = dgemm_rate() if floors else None
    job_floor = spark_job_floor(spark, args.cores) if "job-floor" not in skip else None
    mem = memory(spark, sampler)
    info = machine(spark)
    ml = runs.get("mllib", {}).get("per_epoch")
    rows = []
    for name, r in runs.items():
        kind = "numpy" if "numpy" in name else "numba"
        floor = floors.get(f"{kind} float32" if "float32" in name else f"{kind} float64",
                           {}).get("per_epoch")
        b = r.get("breakdown")
        rows.append([name, f"{r['per_epoch']:.2f}",
                     "1.00x" if name == "mllib" else f"{r['per_epoch'] / ml:.2f}x" if ml else "",
                     f"{r['per_epoch'] / floor:.2f}x" if floor and name != "mllib" else "",
                     f"{b['job_wall']:.2f} / {b['task_per_core']:.2f} / "
                     f"{b['kernel_per_core']:.2f}" if b else "",
                     f"{r.get('setup_seconds', r.get('fit_1_iter_seconds', 0)):.1f}",
                     f"{r['end_to_end']:.1f}", f"{r['test_rmse']:.4f}"])
    for name, f in floors.items():
        share = f" ({f['gflops']:.1f} GFLOP/s, {f['gflops'] / dgemm:.0%} of dgemm)" \
            if dgemm else ""
        rows.append([f"{name} floor{share}", f"{f['per_epoch']:.2f}", "", "1.00x", "", "", "",
                     ""])
    md = (f"# Seconds per epoch on {label} (rank {args.rank}, {args.iters} iterations, "
          f"local[{args.cores}])\n\n"
          + md_table(["run", "s/epoch", "vs MLlib", "vs one-process floor (same kernel)",
                      "per epoch: jobs / tasks per core / kernels per core (s)",
                      "setup s", "end-to-end s", "test RMSE"], rows)
          + f"\nMeasured {info['date']}: {info['cpu']}, {info['cores']} cores, Spark "
            f"{info['pyspark']}, numpy {info['numpy']} ({info['numpy_blas']}), MLlib BLAS "
            f"{info['jvm_blas'].get('blas')}, LAPACK {info['jvm_blas'].get('lapack')}, "
            f"threads {info['threads']}. Peak RSS: driver JVM "
            f"{mem['driver_jvm_peak_mb']:.0f} MB, Python driver "
            f"{mem['driver_python_peak_mb']:.0f} MB, largest Python worker "
            f"{mem['worker_python_peak_mb']:.0f} MB."
          + " Per epoch: the half-step Spark jobs' wall time on the driver, and the Python "
            "tasks' seconds in all and inside the row kernels, summed and divided by the "
            "cores (mean over all epochs, the first included)."
          + (f" A one-thread dgemm runs at {dgemm:.1f} GFLOP/s here; the floors' GFLOP/s "
             f"count an epoch's Gram accumulation and Cholesky solves." if dgemm else "")
          + (f" One empty Spark job of a half-epoch's shape (broadcast, applyInPandas, "
             f"Arrow collect) takes {job_floor['per_job']:.2f} s; an epoch runs two."
             if job_floor else "") + "\n")
    name = args.name or f"speed-{Path(args.data).parent.name if args.data else label}"
    write_results(name, {"data": label, "rank": args.rank, "iters": args.iters, "conf": conf,
                         "reg_param": args.reg_param, "prepare_seconds": prep,
                         "n_users": data.n_users, "n_items": data.n_items,
                         "n_train": data.n_train, "n_test": data.n_test,
                         "runs": runs, "numpy_floor": floors, "spark_job_floor": job_floor,
                         "dgemm_gflops_one_thread": dgemm,
                         "memory": mem,
                         "machine": info}, md)
    print(md)
    data.release()
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
