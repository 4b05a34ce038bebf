"""Checkpoints of a training run, and resuming from the last complete one.

Every N epochs the training state -- both factor matrices (with biases), the
per-side prior precisions, the posterior variances of adaptive priors, BPMF's
kept samples, the epoch, the random-number scheme and the metrics so far -- is
written under ``--checkpoint-dir``::

    DIR/epoch-000004/user.parquet, item.parquet, ... state.json   (Parquet + JSON)
    DIR/LATEST                                                    "epoch-000004"

A checkpoint directory is written completely, then ``LATEST`` is replaced by an
atomic rename: a run killed at any moment leaves the previous checkpoint intact.
``state.json`` carries a fingerprint of the parameters and of the input, and a
SHA-256 of every array; resuming with different parameters is refused, and so is a
checkpoint whose files are unreadable or do not match their checksums (never loaded
half-written). All random draws depend only on (seed, epoch), so
a resumed run repeats exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re

import numpy as np
import pyarrow as pa
from pyspark.sql import SparkSession

from .errors import ConfigError, InputDataError, OutputError
from .evaluate import EpochMetrics
from .fs import delete_path, dumps, jvm_fs, path_exists, qualify, read_text, short, write_text
from .models.base import TrainState

log = logging.getLogger("pmf_spark")

FORMAT_VERSION = 2
_KEEP = 2


def fingerprint(params, job, data) -> dict:
    """What a checkpoint must agree with to be resumed: the model, fit and ranking-model
    parameters (but the numbers of epochs, which may be raised), the input and the data. Engine
    knobs (blocks, Gram dtype, chunking, resident memory) may change between runs."""
    fit = {k: v for k, v in params.fit.to_dict().items() if k != "epochs"}
    ranking = {k: v for k, v in params.ranker.to_dict().items() if k != "ranking_epochs"}
    model = {**params.model.to_dict(), **fit, **ranking}
    inputs = {k: getattr(job, k) for k in (
        "ratings", "format", "test", "user_col", "item_col", "rating_col", "timestamp_col",
        "sep", "rating_min", "rating_max", "on_duplicate", "synthetic", "split", "leave_last",
        "test_fraction", "split_seed", "validation_fraction")}
    data_sum = {k: data.summary()[k] for k in ("n_users", "n_items", "n_train", "n_test",
                                               "fingerprint")}
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


def _digest(m: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(m, dtype=np.float64).tobytes()).hexdigest()


def _state_arrays(state: TrainState, prefix: str = "") -> tuple[dict[str, np.ndarray], dict]:
    """The state's arrays by file name, and the JSON-able rest (companions' states
    nested, their arrays under ``companion<n>.``)."""
    arrays = {prefix + "user": state.user, prefix + "item": state.item}
    if state.best is not None:
        arrays.update({prefix + "best_user": state.best["user"],
                       prefix + "best_item": state.best["item"]})
    scalars, lists = {}, {}
    for key, value in state.extra.items():
        if isinstance(value, np.ndarray):
            arrays[f"{prefix}extra.{key}"] = value
        elif isinstance(value, list):
            lists[key] = len(value)
            for n, m in enumerate(value):
                arrays[f"{prefix}extra.{key}.{n:05d}"] = m
        else:
            scalars[key] = float(value)
    record = {"epoch": state.epoch, "reg_user": state.reg_user.tolist(),
              "reg_item": state.reg_item.tolist(), "noise_var": state.noise_var,
              "stale": state.stale, "extra": {"scalars": scalars, "lists": lists},
              "best_metrics": state.best["metrics"].to_dict() if state.best else None,
              "history": [m.to_dict() for m in state.history], "companions": []}
    for n, comp in enumerate(state.companions):
        sub_arrays, sub = _state_arrays(comp, f"{prefix}companion{n}.")
        arrays.update(sub_arrays)
        record["companions"].append(sub)
    return arrays, record


def _rebuild(arrays: dict[str, np.ndarray], rec: dict, prefix: str = "") -> TrainState:
    """The TrainState that :func:`_state_arrays` took apart."""
    extra: dict = dict(rec["extra"]["scalars"])
    for key, n in rec["extra"]["lists"].items():
        extra[key] = [arrays[f"{prefix}extra.{key}.{i:05d}"] for i in range(n)]
    for k, m in arrays.items():
        rest = k[len(prefix):] if k.startswith(prefix) else ""
        if rest.startswith("extra.") and rest.count(".") == 1:
            extra[rest[len("extra."):]] = m
    best = None
    if rec["best_metrics"] is not None:
        best = {"metrics": _metrics(rec["best_metrics"]), "user": arrays[prefix + "best_user"],
                "item": arrays[prefix + "best_item"]}
    return TrainState(
        user=arrays[prefix + "user"], item=arrays[prefix + "item"],
        reg_user=np.array(rec["reg_user"]), reg_item=np.array(rec["reg_item"]),
        noise_var=rec["noise_var"], epoch=rec["epoch"],
        history=[_metrics(m) for m in rec["history"]], best=best, stale=rec["stale"],
        extra=extra, companions=[_rebuild(arrays, sub, f"{prefix}companion{n}.")
                                 for n, sub in enumerate(rec["companions"])])


def _metrics(d: dict) -> EpochMetrics:
    values: dict = {k: (float("nan") if v is None else v) for k, v in d.items()}
    return EpochMetrics(**values)


class Checkpointer:
    """Writes and reads the checkpoints of one run."""

    def __init__(self, spark: SparkSession, directory: str, every: int, fp: dict):
        self.spark = spark
        self.dir = qualify(spark, directory.rstrip("/"))
        self.every = every
        self.fp = fp

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.dir, *parts)

    def _rename(self, src: str, dst: str) -> None:
        fs, jdst = jvm_fs(self.spark, dst)
        _, jsrc = jvm_fs(self.spark, src)
        if fs.exists(jdst):
            fs.delete(jdst, True)
        if not fs.rename(jsrc, jdst):
            raise OutputError(f"checkpoint-dir {short(self.dir)}: cannot move {short(src)} "
                              f"to {short(dst)}")

    def save(self, state: TrainState) -> str:
        """Write ``state`` as the latest checkpoint; returns its name."""
        name = f"epoch-{state.epoch:06d}"
        final = self._path(name)
        staging = self._path(f".{name}.staging")
        delete_path(self.spark, staging)
        arrays, record = _state_arrays(state)
        for key, m in arrays.items():
            m2 = m.reshape(m.shape[0], -1) if m.ndim != 2 else m
            _matrix_frame(self.spark, m2).coalesce(1).write.parquet(
                posixpath.join(staging, f"{key}.parquet"))
        meta = {
            "format_version": FORMAT_VERSION,
            "epoch": state.epoch,
            "fingerprint": self.fp,
            "shapes": {k: list(m.shape) for k, m in arrays.items()},
            "sha256": {k: _digest(m) for k, m in arrays.items()},
            "state": record,
            "rng": {"scheme": "numpy default_rng(seed) for the initial factors, "
                              "default_rng([seed, epoch]) for each epoch that draws",
                    "seed": self.fp["model"]["seed"], "next_epoch": state.epoch + 1},
        }
        write_text(self.spark, posixpath.join(staging, "state.json"), dumps(meta))
        self._rename(staging, final)
        # LATEST is replaced by a rename, so it always names a complete checkpoint
        tmp = self._path(".LATEST.tmp")
        write_text(self.spark, tmp, name + "\n")
        self._rename(tmp, self._path("LATEST"))
        self._prune(name)
        log.info("checkpoint written: epoch %d -> %s", state.epoch, final)
        return name

    def _prune(self, keep: str) -> None:
        fs, jdir = jvm_fs(self.spark, self.dir)
        names = sorted(str(s.getPath().getName()) for s in fs.listStatus(jdir)
                       if str(s.getPath().getName()).startswith("epoch-"))
        for old in names[:-_KEEP]:
            if old != keep:
                delete_path(self.spark, self._path(old))

    def _meta(self) -> tuple[str, dict] | None:
        if not path_exists(self.spark, self._path("LATEST")):
            return None
        name = read_text(self.spark, self._path("LATEST")).strip()
        if not re.fullmatch(r"epoch-[0-9]{6}", name):
            raise ConfigError(f"checkpoint {short(self._path('LATEST'))}: names {name[:80]!r}, "
                              f"not a checkpoint of this directory")
        where = short(self._path(name, "state.json"))
        try:
            meta = json.loads(read_text(self.spark, self._path(name, "state.json")))
        except (ValueError, InputDataError) as exc:
            raise ConfigError(f"checkpoint {where}: unreadable ({str(exc)[:120]})") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise ConfigError(f"checkpoint {where}: format {meta.get('format_version')!r}, "
                              f"this version reads {FORMAT_VERSION}; start afresh without "
                              f"--resume")
        diffs = _differences(meta["fingerprint"], self.fp)
        if diffs:
            raise ConfigError(f"checkpoint {short(self.dir)} was written for other parameters "
                              f"or input ({'; '.join(diffs[:3])}); resume with the same "
                              f"settings, or start afresh without --resume")
        return name, meta

    def _array(self, name: str, key: str, shape, digest: str) -> np.ndarray:
        path = self._path(name, f"{key}.parquet")
        try:
            m = _read_matrix(self.spark, path, shape[0], int(np.prod(shape[1:], dtype=int)))
        except Exception as exc:  # a truncated or missing file
            raise ConfigError(f"checkpoint {short(path)}: unreadable "
                              f"({str(exc).splitlines()[0][:120]})") from None
        m = m.reshape(shape)
        if _digest(m) != digest:
            raise ConfigError(f"checkpoint {short(path)}: contents do not match its checksum "
                              f"(edited or partly written); start afresh without --resume")
        return m

    def load_latest(self) -> TrainState | None:
        """The latest complete checkpoint as a TrainState, or None when there is none.

        Raises ConfigError when it was written for other parameters or input, or when
        any of its files is unreadable or does not match its checksum.
        """
        found = self._meta()
        if found is None:
            return None
        name, meta = found
        arrays = {k: self._array(name, k, shape, meta["sha256"][k])
                  for k, shape in meta["shapes"].items()}
        return _rebuild(arrays, meta["state"])


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in list(b) + [k for k in a if k not in b]:    # parameters before data
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} in the checkpoint, {vb!r} now")
    return out
