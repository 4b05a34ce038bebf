"""Checkpoints of a training run, and resuming from the last complete one.

Every N epochs the training state -- both factor matrices (with biases), the
per-side prior precisions, the posterior variances of adaptive priors, BPMF's
kept samples, the epoch, the random-number scheme and the metrics so far -- is
written under ``--checkpoint-dir``::

    DIR/epoch-000004/user.parquet, item.parquet, ... state.json   (Parquet + JSON)
    DIR/LATEST                                                    "epoch-000004"

A checkpoint directory is written completely, then ``LATEST`` is replaced by an
atomic rename: a run killed at any moment leaves the previous checkpoint intact.
``state.json`` carries a fingerprint of the parameters and of the input; resuming
with different ones is refused. All random draws depend only on (seed, epoch), so
a resumed run repeats exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import json
import logging
import posixpath

import numpy as np
import pyarrow as pa
from pyspark.sql import SparkSession

from .errors import ConfigError
from .io import _jvm_fs, delete_path, path_exists, qualify, read_text, write_text

log = logging.getLogger("pmf_spark")

FORMAT_VERSION = 1
_KEEP = 2


def fingerprint(params, job, data) -> dict:
    """What a checkpoint must agree with to be resumed."""
    from .params import PMFParams

    model = {k: v for k, v in params.to_dict().items() if k not in ("epochs", "blocks")}
    inputs = {k: getattr(job, k) for k in (
        "ratings", "format", "test", "user_col", "item_col", "rating_col", "timestamp_col",
        "sep", "rating_min", "rating_max", "on_duplicate", "synthetic", "test_fraction",
        "split_seed", "validation_fraction")}
    data_sum = {k: data.summary()[k] for k in ("n_users", "n_items", "n_train", "n_test",
                                               "fingerprint")}
    assert isinstance(params, PMFParams)
    return {"model": model, "input": inputs, "data": data_sum}


def _matrix_frame(spark: SparkSession, m: np.ndarray):
    n, w = m.shape
    offsets = pa.array(np.arange(0, n * w + 1, w, dtype=np.int32))
    values = pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(m).reshape(-1)))
    return spark.createDataFrame(pa.table({"idx": pa.array(np.arange(n, dtype=np.int32)),
                                           "values": values}))


def _read_matrix(spark: SparkSession, path: str, n: int, w: int) -> np.ndarray:
    tbl = spark.read.parquet(path).toArrow()
    out = np.empty((n, w))
    idx = tbl.column("idx").to_numpy()
    out[idx] = tbl.column("values").combine_chunks().flatten().to_numpy().reshape(-1, w)
    return out


class Checkpointer:
    """Writes and reads the checkpoints of one run."""

    def __init__(self, spark: SparkSession, directory: str, every: int, fp: dict):
        self.spark = spark
        self.dir = qualify(spark, directory.rstrip("/"))
        self.every = every
        self.fp = fp

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.dir, *parts)

    def save(self, state) -> str:
        """Write ``state`` as the latest checkpoint; returns its name."""
        name = f"epoch-{state.epoch:06d}"
        final = self._path(name)
        staging = self._path(f".{name}.staging")
        delete_path(self.spark, staging)
        arrays = {"user": state.user, "item": state.item}
        if state.user_var is not None:
            arrays.update(user_var=state.user_var, item_var=state.item_var)
        for s, (u, v) in enumerate(state.samples):
            arrays[f"sample-{s:05d}-user"] = u
            arrays[f"sample-{s:05d}-item"] = v
        if state.best is not None:
            arrays.update(best_user=state.best["user"], best_item=state.best["item"])
        for key, m in arrays.items():
            _matrix_frame(self.spark, m).coalesce(1).write.parquet(
                posixpath.join(staging, f"{key}.parquet"))
        meta = {
            "format_version": FORMAT_VERSION,
            "epoch": state.epoch,
            "fingerprint": self.fp,
            "shapes": {k: list(m.shape) for k, m in arrays.items()},
            "reg_user": state.reg_user.tolist(), "reg_item": state.reg_item.tolist(),
            "noise_var": state.noise_var, "alpha": state.alpha, "stale": state.stale,
            "samples": len(state.samples),
            "best_metrics": state.best["metrics"].to_dict() if state.best else None,
            "history": [m.to_dict() for m in state.history],
            "rng": {"scheme": "numpy default_rng(seed) for the initial factors, "
                              "default_rng([seed, epoch]) for each BPMF epoch",
                    "seed": self.fp["model"]["seed"], "next_epoch": state.epoch + 1},
        }
        write_text(self.spark, posixpath.join(staging, "state.json"),
                   json.dumps(meta, indent=1, default=float))
        fs, jfinal = _jvm_fs(self.spark, final)
        if fs.exists(jfinal):
            fs.delete(jfinal, True)
        _, jstaging = _jvm_fs(self.spark, staging)
        if not fs.rename(jstaging, jfinal):
            raise OSError(f"cannot move checkpoint {staging} to {final}")
        # LATEST is replaced by a rename, so it always names a complete checkpoint
        tmp = self._path(".LATEST.tmp")
        write_text(self.spark, tmp, name + "\n")
        _, jlatest = _jvm_fs(self.spark, self._path("LATEST"))
        _, jtmp = _jvm_fs(self.spark, tmp)
        if fs.exists(jlatest):
            fs.delete(jlatest, False)
        if not fs.rename(jtmp, jlatest):
            raise OSError(f"cannot update {self._path('LATEST')}")
        self._prune(name)
        log.info("checkpoint written: epoch %d -> %s", state.epoch, final)
        return name

    def _prune(self, keep: str) -> None:
        fs, jdir = _jvm_fs(self.spark, self.dir)
        names = sorted(str(s.getPath().getName()) for s in fs.listStatus(jdir)
                       if str(s.getPath().getName()).startswith("epoch-"))
        for old in names[:-_KEEP]:
            if old != keep:
                delete_path(self.spark, self._path(old))

    def load_latest(self, make_metrics):
        """The latest complete checkpoint as (epoch, fields for TrainState), or None.

        Raises ConfigError when it was written for other parameters or input.
        """
        if not path_exists(self.spark, self._path("LATEST")):
            return None
        name = read_text(self.spark, self._path("LATEST")).strip()
        meta = json.loads(read_text(self.spark, self._path(name, "state.json")))
        if meta.get("format_version") != FORMAT_VERSION:
            raise ConfigError(f"checkpoint {self._path(name)}: unknown format "
                              f"{meta.get('format_version')!r}")
        diffs = _differences(meta["fingerprint"], self.fp)
        if diffs:
            raise ConfigError(f"checkpoint {self.dir} was written for other parameters or "
                              f"input ({'; '.join(diffs[:3])}); resume with the same settings, "
                              f"or start afresh without --resume")
        arrays = {k: _read_matrix(self.spark, self._path(name, f"{k}.parquet"), *shape)
                  for k, shape in meta["shapes"].items()}
        samples = [(arrays[f"sample-{s:05d}-user"], arrays[f"sample-{s:05d}-item"])
                   for s in range(meta["samples"])]
        best = None
        if meta["best_metrics"] is not None:
            best = {"metrics": make_metrics(meta["best_metrics"]), "user": arrays["best_user"],
                    "item": arrays["best_item"]}
        fields = dict(user=arrays["user"], item=arrays["item"],
                      reg_user=np.array(meta["reg_user"]), reg_item=np.array(meta["reg_item"]),
                      user_var=arrays.get("user_var"), item_var=arrays.get("item_var"),
                      epoch=meta["epoch"], noise_var=meta["noise_var"], alpha=meta["alpha"],
                      history=[make_metrics(m) for m in meta["history"]], samples=samples,
                      best=best, stale=meta["stale"])
        return meta["epoch"], fields


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in list(b) + [k for k in a if k not in b]:    # parameters before data
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} in the checkpoint, {vb!r} now")
    return out
