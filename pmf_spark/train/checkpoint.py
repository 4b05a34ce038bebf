"""Checkpoints of a training run, and resuming from the last complete one.

Every N epochs the training state -- both factor matrices (with biases), the
per-side prior precisions, the posterior variances of adaptive priors, BPMF's
kept samples, the epoch, the random-number scheme and the metrics so far -- is
written under ``--checkpoint-dir``::

    DIR/epoch-000004/user.parquet, item.parquet, ... state.json   (Parquet + JSON)
    DIR/LATEST                                                    "epoch-000004"

A checkpoint directory is written completely, then ``LATEST`` is replaced by an
atomic rename: a run killed at any moment leaves the previous checkpoint intact.
``state.json`` carries a fingerprint of the parameters and of the input, a SHA-256
of every array and one of itself; resuming with different parameters is refused, and
so is a checkpoint with a file that is missing, truncated, edited or does not match
its checksum (named in the one-line error; never loaded into uninitialised memory).
``--resume`` with fewer ``--epochs`` than the checkpoint holds is refused too. All
random draws depend only on (seed, epoch), so a resumed run repeats exactly what the
uninterrupted run would have done.
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

from pmf_spark.errors import ConfigError, InputDataError, OutputError
from pmf_spark.evaluate.metrics import EpochMetrics
from pmf_spark.models.base import TrainState
from pmf_spark.storage.hadoop import (
    delete_path,
    dumps,
    jvm_fs,
    qualify,
    read_text,
    short,
    write_text,
)

log = logging.getLogger("pmf_spark")

FORMAT_VERSION = 3
_KEEP = 2
_NAME = re.compile(r"epoch-[0-9]{6}")


def fingerprint(params, job, data) -> dict:
    """What a checkpoint must agree with to be resumed: the model, fit and ranking-model
    parameters (but the numbers of epochs, which may be raised), the input and the data. Engine
    knobs (blocks, Gram dtype, chunking, resident memory) may change between runs."""
    fit = {k: v for k, v in params.fit.to_dict().items() if k != "epochs"}
    ranking = {k: v for k, v in params.ranker.to_dict().items() if k != "ranking_epochs"}
    model = {**params.model.to_dict(), **fit, **ranking}
    inputs = {k: getattr(job, k) for k in (
        "ratings", "format", "id_type", "test", "user_col", "item_col", "rating_col",
        "timestamp_col", "sep", "rating_min", "rating_max", "on_duplicate", "synthetic",
        "split", "leave_last",
        "test_fraction", "split_seed", "validation_fraction")}
    if job.ratings_table is not None:     # only when set: older checkpoints stay resumable
        inputs["ratings_table"] = job.ratings_table
    if job.feedback != "explicit":
        inputs["feedback"], inputs["value_col"] = job.feedback, job.value_col
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
    """The (n, w) matrix in ``path``; ValueError unless every row 0..n-1 is there once
    with w values."""
    tbl = spark.read.parquet(path).toArrow()
    idx = tbl.column("idx").to_numpy()
    values = tbl.column("values").combine_chunks()
    if tbl.num_rows != n or len(np.unique(idx)) != n or (n and (idx.min() < 0 or idx.max() >= n)):
        raise ValueError(f"{tbl.num_rows} row(s), expected {n}")
    flat = values.flatten().to_numpy()
    if flat.size != n * w or values.null_count:
        raise ValueError(f"{flat.size} value(s), expected {n * w}")
    out = np.zeros((n, w))
    out[idx] = flat.reshape(n, w)
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


def _self_digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "sha256_state"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def check_resumable(ck: Checkpointer, state: TrainState, total_epochs: int) -> None:
    """Refuse a checkpoint that holds more epochs than the run is asked for."""
    if state.epoch > total_epochs:
        raise ConfigError(f"checkpoint {short(ck.dir)}: holds {state.epoch} epoch(s) but this "
                          f"run is asked for {total_epochs}; raise --epochs to at least "
                          f"{state.epoch}, or start afresh without --resume")
    if state.epoch == total_epochs:
        log.info("the checkpoint in %s already holds all %d epoch(s): nothing left to train, "
                 "writing the outputs", short(ck.dir), total_epochs)
    else:
        log.info("resuming from the checkpoint of epoch %d in %s", state.epoch, short(ck.dir))


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

    def _jpath(self, *parts: str):
        return jvm_fs(self.spark, self._path(*parts))[1]

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
        meta["sha256_state"] = _self_digest(json.loads(dumps(meta)))
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
                       if _NAME.fullmatch(str(s.getPath().getName())) and s.isDirectory()
                       and fs.exists(self._jpath(str(s.getPath().getName()), "state.json")))
        for old in names[:-_KEEP]:
            if old != keep:
                delete_path(self.spark, self._path(old))

    def _read(self, *parts: str) -> str:
        path = self._path(*parts)
        try:
            return read_text(self.spark, path)
        except InputDataError:
            raise ConfigError(f"checkpoint {short(path)}: missing (partly written or removed); "
                              f"start afresh without --resume") from None
        except UnicodeDecodeError:
            raise ConfigError(f"checkpoint {short(path)}: not text (edited or corrupt); start "
                              f"afresh without --resume") from None
        except Exception as exc:  # a directory, unreadable
            raise ConfigError(f"checkpoint {short(path)}: unreadable "
                              f"({str(exc).splitlines()[0][:120]})") from None

    def _meta(self) -> tuple[str, dict] | None:
        fs, latest = jvm_fs(self.spark, self._path("LATEST"))
        if not fs.exists(latest):
            return None
        name = self._read("LATEST").strip()
        if not _NAME.fullmatch(name):
            raise ConfigError(f"checkpoint {short(self._path('LATEST'))}: names {name[:80]!r}, "
                              f"not a checkpoint of this directory")
        where = short(self._path(name, "state.json"))
        try:
            meta = json.loads(self._read(name, "state.json"))
        except ValueError as exc:
            raise ConfigError(f"checkpoint {where}: not valid JSON ({str(exc)[:120]}); start "
                              f"afresh without --resume") from None
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            found = meta.get("format_version") if isinstance(meta, dict) else None
            raise ConfigError(f"checkpoint {where}: format {found!r}, this version reads "
                              f"{FORMAT_VERSION}; start afresh without --resume")
        if meta.get("sha256_state") != _self_digest(meta):
            raise ConfigError(f"checkpoint {where}: contents do not match its checksum (edited "
                              f"or partly written); start afresh without --resume")
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
        except Exception as exc:  # a truncated, partial or missing file
            raise ConfigError(f"checkpoint {short(path)}: unreadable or incomplete "
                              f"({str(exc).splitlines()[0][:120]}); start afresh without "
                              f"--resume") from None
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
        try:
            arrays = {k: self._array(name, k, shape, meta["sha256"][k])
                      for k, shape in meta["shapes"].items()}
            return _rebuild(arrays, meta["state"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"checkpoint {short(self._path(name, 'state.json'))}: does not "
                              f"describe a complete checkpoint (missing {exc}); start afresh "
                              f"without --resume") from None


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in list(b) + [k for k in a if k not in b]:    # parameters before data
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} in the checkpoint, {vb!r} now")
    return out
