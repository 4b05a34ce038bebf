"""Plain-Python input and output for the Spark-free answers (:mod:`pmf_spark.serve.local`)
and the job that gives them: the small files people hand to ``jobs/recommend.py``
(a new user's ratings, new users' ratings, lists of ids) and the Parquet answers it
writes. No pyspark here; the Spark path parses rating lines with the same function
(:func:`parse_rating_lines`, run per partition), so both accept and refuse the same
lines.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa

from pmf_spark.errors import InputDataError

# --------------------------------------------------------------------------- input files
#: field separators of rating lines, tried in this order
SEPARATORS = ("::", "\t", ",", ";", "|")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_rating_lines(lines, layout: tuple[str, ...], id_type: str, lo: float, hi: float
                       ) -> tuple[pd.DataFrame, str | None]:
    """Rating lines such as ``item_id,rating`` or ``user_id,item_id,rating`` (fields
    separated by ``::``, tab, comma, semicolon or ``|``; one more field, a timestamp,
    is ignored; ``#`` comments, blank lines and header lines skipped). Both engines
    read files through this function, so they accept and refuse the same lines.

    Returns:
        (frame with the ``layout`` columns, the first problem as one sentence or
        None). A header is a line whose fields are all names, not numbers.
    """
    cols: dict[str, list] = {c: [] for c in layout}
    n = len(layout)
    for raw in lines:
        text = (raw or "").strip()
        if not text or text.startswith("#"):
            continue
        sep = next((s for s in SEPARATORS if s in text), ",")
        fields = [f.strip() for f in text.split(sep)]
        if len(fields) not in (n, n + 1):
            return _empty(layout), f"{text!r} is not '{','.join(layout)}'"
        value = fields[n - 1]
        if not _is_number(value):
            if not any(_is_number(f) for f in fields):
                continue                                     # a header line
            return _empty(layout), f"{text!r}: non-numeric rating {value!r}"
        rating = float(value)
        if not np.isfinite(rating) or not lo <= rating <= hi:
            return _empty(layout), f"{text!r}: rating {value} is outside [{lo:g}, {hi:g}]"
        for name, f in zip(layout[:-1], fields):
            if id_type == "long":
                try:
                    cols[name].append(int(f))
                except ValueError:
                    return _empty(layout), (f"{text!r}: {name} {f!r} is not an integer (this "
                                            f"model's ids are integers)")
            else:
                cols[name].append(f)
        cols[layout[-1]].append(rating)
    frame = pd.DataFrame({c: pd.Series(v, dtype=_dtype(c, id_type)) for c, v in cols.items()})
    return frame, None


def parse_partition(batches, *, id_type: str, lo: float, hi: float):
    """``mapInPandas`` over text lines (column ``value``): (user_id, item_id, rating,
    problem) rows, or one row naming the partition's first problem."""
    layout = ("user_id", "item_id", "rating")
    for pdf in batches:
        frame, problem = parse_rating_lines(pdf["value"], layout, id_type, lo, hi)
        if problem:
            yield pd.DataFrame({"user_id": [None], "item_id": [None], "rating": [None],
                                "problem": [problem]})
            return
        frame["problem"] = None
        yield frame


def _dtype(column: str, id_type: str):
    if column == "rating":
        return np.float64
    return np.int64 if id_type == "long" else object


def _empty(layout) -> pd.DataFrame:
    return pd.DataFrame({c: [] for c in layout})


def read_rating_file(path: str, layout: tuple[str, ...], id_type: str, lo: float, hi: float,
                     role: str) -> pd.DataFrame:
    """:func:`parse_rating_lines` of a local file; InputDataError naming the file and
    the first bad line, or a (user, item) rated twice, or no ratings at all."""
    try:
        with open(path, encoding="utf-8") as fh:
            frame, problem = parse_rating_lines(fh, layout, id_type, lo, hi)
    except FileNotFoundError:
        raise InputDataError(f"{role} {path}: no such file") from None
    except IsADirectoryError:
        raise InputDataError(f"{role} {path}: is a directory (give a file)") from None
    except UnicodeDecodeError as exc:
        raise InputDataError(f"{role} {path}: not UTF-8 text ({exc.reason})") from None
    if problem:
        raise InputDataError(f"{role} {path}: {problem}")
    check_ratings(frame, layout, path, role)
    return frame


def check_ratings(frame: pd.DataFrame, layout: tuple[str, ...], path: str, role: str) -> None:
    """Refuse an empty file and a pair rated twice (which rating would count?)."""
    if frame.empty:
        raise InputDataError(f"{role} {path}: no ratings")
    keys = list(layout[:-1])
    dup = frame.duplicated(keys, keep=False)
    if dup.any():
        first = frame[dup].iloc[0]
        what = " ".join(f"{k} {first[k]}" for k in keys)
        raise InputDataError(f"{role} {path}: {what} is rated more than once")


def read_id_file(path: str, id_type: str, role: str) -> list:
    """The ids of a local file, one per line ('#' comments and blank lines ignored),
    by the rules of :func:`pmf_spark.inputs.read.read_id_list`."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [ln.strip() for ln in fh]
    except FileNotFoundError:
        raise InputDataError(f"{role} {path}: no such file or directory") from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise InputDataError(f"{role} {path}: not a text file of ids ({exc})") from None
    ids: list = []
    for text in lines:
        if not text or text.startswith("#"):
            continue
        if id_type == "long":
            try:
                ids.append(int(text))
            except ValueError:
                raise InputDataError(f"{role} {path}: {text!r} is not an integer id") from None
        else:
            ids.append(text)
    return ids


# --------------------------------------------------------------------------- output
def recs_table(recs: pd.DataFrame, id_type: str) -> pa.Table:
    """RECS_COLUMNS as the Spark path writes them (sorted by user, rank)."""
    typ = pa.int64() if id_type == "long" else pa.string()
    df = recs.sort_values(["user_id", "rank"], kind="stable")
    return pa.table({"user_id": pa.array(df["user_id"].tolist(), typ),
                     "rank": pa.array(df["rank"].to_numpy(dtype=np.int32)),
                     "item_id": pa.array(df["item_id"].tolist(), typ),
                     "predicted_rating": pa.array(df["predicted_rating"].to_numpy(np.float64)),
                     "score": pa.array(df["score"].to_numpy(np.float64)),
                     "cold_start": pa.array(df["cold_start"].to_numpy(dtype=bool))})


def factors_table(folded: pd.DataFrame, id_type: str, rank: int) -> pa.Table:
    """(user_id, features, bias, n_ratings) of folded-in users, as ``user_factors``."""
    typ = pa.int64() if id_type == "long" else pa.string()
    df = folded.sort_values("user_id", kind="stable")
    feats = [None if f is None else np.asarray(f, np.float64).tolist() for f in df["features"]]
    return pa.table({"user_id": pa.array(df["user_id"].tolist(), typ),
                     "features": pa.array(feats, pa.list_(pa.float64())),
                     "bias": pa.array(df["bias"].to_numpy(np.float64)),
                     "n_ratings": pa.array(df["n_ratings"].to_numpy(np.int32))})


def is_answer_output(path: str) -> bool:
    """``path`` is absent, an empty directory, or an earlier answer written by
    :func:`write_local_output` / the Spark path (a ``_SUCCESS`` naming its model)."""
    if not os.path.exists(path):
        return True
    if not os.path.isdir(path):
        return False
    if not os.listdir(path):
        return True
    try:
        with open(os.path.join(path, "_SUCCESS"), encoding="utf-8") as fh:
            return "model" in json.load(fh)
    except (OSError, ValueError):
        return False


def write_local_output(path: str, tables: dict[str, pa.Table], marker: dict) -> None:
    """Write Parquet tables and a ``_SUCCESS`` manifest to a hidden staging directory
    beside ``path`` and move it into place: a failure leaves the previous answer."""
    import shutil
    import uuid

    import pyarrow.parquet as pq

    from pmf_spark.errors import OutputError

    final = os.path.abspath(path.rstrip("/"))
    parent, base = os.path.split(final)
    token = uuid.uuid4().hex[:12]
    staging = os.path.join(parent, f".{base}.staging-{token}")
    backup = os.path.join(parent, f".{base}.previous-{token}")
    try:
        for name, table in tables.items():
            os.makedirs(os.path.join(staging, name))
            pq.write_table(table, os.path.join(staging, name, "part-00000.parquet"))
        with open(os.path.join(staging, "_SUCCESS"), "w", encoding="utf-8") as fh:
            json.dump({"tables": {n: t.num_rows for n, t in tables.items()}, **marker}, fh)
        had_previous = os.path.exists(final)
        if had_previous:
            os.rename(final, backup)
        try:
            os.rename(staging, final)
        except OSError:
            if had_previous:
                os.rename(backup, final)
            raise
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"output {path}: {exc.strerror or exc}") from None
    if had_previous:
        shutil.rmtree(backup, ignore_errors=True)
