"""The checks and the dict round trip every parameter dataclass shares: one-line
descriptions kept in field metadata, validators that name the field in their error,
unknown keys answered with the nearest valid one."""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import field, fields
from typing import Any

from pmf_spark.errors import ConfigError

#: the choices of the enumerated parameters
FORMATS = ("auto", "movielens-100k", "movielens-dat", "movielens-csv", "csv", "parquet")
ID_TYPES = ("auto", "string", "integer")
SYNTHETIC_SHAPES = ("small", "ml-1m", "ml-10m", "30m", "netflix")
LINKS = ("linear", "sigmoid")
REG_SCALINGS = ("none", "count")
GRAM_DTYPES = ("float64", "float32")
DUPLICATE_POLICIES = ("latest", "error", "sum")
FEEDBACK = ("explicit", "implicit")
COLD_START = ("popular", "drop")
PRIORS = ("fixed", "spherical", "diagonal")
CONFIDENCES = ("linear", "log", "presence")
SPLITS = ("random", "user-fraction", "temporal", "leave-last-n")


def doc(text: str, **kw):
    """A dataclass field with a one-line description kept in its metadata."""
    return field(metadata={"doc": text}, **kw)


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(str, choices))}")


def check_int(name: str, value, lo: int | None = None, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if lo is not None and value < lo:
        raise ConfigError(f"{name}: must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise ConfigError(f"{name}: must be <= {hi}, got {value}")


def check_float(name: str, value, lo: float | None = None, lo_open: bool = False,
                 hi: float | None = None, hi_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name}: must be finite, got {value}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ConfigError(f"{name}: must be {'>' if lo_open else '>='} {lo}, got {value}")
    if hi is not None and (value >= hi if hi_open else value > hi):
        raise ConfigError(f"{name}: must be {'<' if hi_open else '<='} {hi}, got {value}")


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: expected true or false, got {value!r}")


def unknown(key: str, names: list[str], where: str) -> ConfigError:
    near = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    loc = f" in {where}" if where else ""
    return ConfigError(f"unknown key {key!r}{loc}{hint}")


class Params:
    """Dict round trip and helpful unknown-key errors for the dataclasses below."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = ""):
        names = cls.field_names()
        for key in values:
            if key not in names:
                raise unknown(key, names, where)
        return cls(**values)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]
