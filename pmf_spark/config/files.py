"""Job configuration files (TOML) and the effective configuration.

Precedence, lowest first: the dataclass defaults, the ``--config`` file, the
command-line flags. A file has up to five tables: ``[job]`` (:class:`JobConfig`),
``[model]``, ``[fit]``, ``[engine]`` and ``[ranker]`` (the groups of :class:`PMFParams`). Files
written before the groups existed kept every parameter under ``[model]``; that still
works, since every parameter's name is unique. Unknown tables or keys, and keys in
the wrong new table, are errors that name the key and the table it belongs to.
"""

from __future__ import annotations

import difflib
import tomllib
from typing import Any

from pmf_spark.config.params import GROUPS, JobConfig, PMFParams, flat_names, group_of
from pmf_spark.errors import ConfigError

TABLES = ("job", "model", "fit", "engine", "ranker")


def _check_table(path: str, section: str, values: dict) -> None:
    if section == "job":
        names = JobConfig.field_names()
    elif section == "model":
        names = flat_names()              # legacy files keep fit and engine keys here too
    else:
        names = GROUPS[section].field_names()
    for key in values:
        if key in names:
            continue
        home = group_of(key)
        if home is not None:
            raise ConfigError(f"config {path}: {key!r} belongs in [{home}], not [{section}]")
        near = difflib.get_close_matches(key, names, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"config {path}: unknown key {key!r} in [{section}]{hint}")


_KINDS = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}
_KIND_NAMES = {"bool": "true or false", "int": "an integer", "float": "a number",
               "str": "a string"}


def _field_kind(section: str, key: str) -> str:
    cls: Any = JobConfig if section == "job" else GROUPS[group_of(key) or "model"]
    return str(cls.__dataclass_fields__[key].type).split("|")[0].strip()


def _check_types(path: str, section: str, values: dict) -> None:
    """Each value has its key's type (TOML's integers serve as floats)."""
    for key, value in values.items():
        kind = _field_kind(section, key)
        ok = isinstance(value, _KINDS.get(kind, (object,)))
        if kind != "bool" and isinstance(value, bool):
            ok = False
        if not ok:
            shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
            raise ConfigError(f"config {path}: [{section}] {key} = {shown[:60]}: expected "
                              f"{_KIND_NAMES.get(kind, kind)}")


def _read_toml(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        return tomllib.loads(raw.decode("utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(f"config {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"config {path}: is a directory, not a TOML file") from None
    except PermissionError:
        raise ConfigError(f"config {path}: not readable (permission denied)") from None
    except OSError as exc:
        raise ConfigError(f"config {path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {path}: not UTF-8 text ({exc.reason} at byte "
                          f"{exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path}: not valid TOML ({exc})") from None


def load_config_file(path: str) -> dict[str, dict[str, Any]]:
    """The tables of a TOML job configuration: ``{"job": {...}, "params": {...}}``
    with every model, fit and engine parameter under ``params`` by its plain name
    (and ``"where"``: the file and each key's table, for error messages)."""
    data = _read_toml(path)
    out: dict[str, dict[str, Any]] = {"job": {}, "params": {},
                                      "where": {"path": path, "tables": {}}}
    for section, values in data.items():
        if section not in TABLES:
            near = difflib.get_close_matches(section, list(TABLES), n=1)
            hint = f" (did you mean [{near[0]}]?)" if near else ""
            raise ConfigError(f"config {path}: unknown table [{section}]{hint}; "
                              f"expected {', '.join(f'[{t}]' for t in TABLES)}")
        if not isinstance(values, dict):
            raise ConfigError(f"config {path}: {section} must be a table")
        _check_table(path, section, values)
        _check_types(path, section, values)
        out["job" if section == "job" else "params"].update(values)
        out["where"]["tables"].update({k: section for k in values})
    return out


def resolve(file_values: dict[str, dict[str, Any]] | None,
            flags: dict[str, dict[str, Any]] | None) -> tuple[JobConfig, PMFParams]:
    """Defaults < file < flags, validated into the dataclasses. Both layers are
    ``{"job": {...}, "params": {...}}``."""
    merged: dict[str, dict[str, Any]] = {"job": {}, "params": {}}
    for layer in (file_values or {}, flags or {}):
        for section, values in layer.items():
            if section in merged:
                merged[section].update(values)
    try:
        job = JobConfig.from_dict(merged["job"], where="[job]")
        given = merged["params"]
        if job.feedback == "implicit":
            given = implicit_params(given)
        params = PMFParams.of(where="the configuration", **given)
    except ConfigError as exc:
        raise _from_file(exc, file_values, flags) from None
    return job, params


#: implicit-feedback ALS's settings unless given: the best of a grid on validation folds
#: carved from ML-100K's training split taken as presence, every held-out pair relevant
#: (benchmarks/ranking_defaults.py --presence; flat within 2% for lambda 20-50, alpha
#: 0.5-5 along the ridge lambda ~ 10 alpha)
IMPLICIT_DEFAULTS = {"rank": 30, "lambda_u": 20.0, "lambda_v": 20.0, "alpha": 1.0}


def implicit_params(given: dict[str, Any]) -> dict[str, Any]:
    """The flat parameters of a run on implicit feedback: the model that fits events
    (implicit-feedback ALS, its own defaults where not given) ordering its own lists; a
    model of rating values is refused, since there are no ratings to fit."""
    from pmf_spark.models import REGISTRY, event_model

    events = event_model()
    model = given.get("model", events)
    if not (model in REGISTRY and REGISTRY[model].fits_events):
        raise ConfigError(f"model: --feedback implicit trains implicit-feedback ALS "
                          f"({events!r}); {model!r} needs ratings (--feedback explicit)")
    by = given.get("recommend_by", model)
    if by not in (model, "rating"):
        raise ConfigError(f"recommend_by: with --feedback implicit the lists come from "
                          f"implicit-feedback ALS itself; {by!r} needs ratings")
    return {**IMPLICIT_DEFAULTS, **given, "model": model, "recommend_by": model}


def _from_file(exc: ConfigError, file_values, flags) -> ConfigError:
    """``exc`` naming the config file and table when the key it is about came from
    the file (and no flag overrode it)."""
    where = (file_values or {}).get("where")
    key = str(exc).split(":", 1)[0]
    if not where or key not in where["tables"]:
        return exc
    if any(key in values for values in (flags or {}).values()):
        return exc
    return ConfigError(f"config {where['path']}: [{where['tables'][key]}] {exc}")


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def _table(section: str, obj) -> list[str]:
    lines = [f"[{section}]"]
    for f in obj.__dataclass_fields__.values():
        value = getattr(obj, f.name)
        doc = f.metadata.get("doc", "")
        if value is None:
            lines.append(f"# {f.name} = (unset)  # {doc}")
        else:
            lines.append(f"{f.name} = {_toml_value(value)}  # {doc}")
    return lines + [""]


def to_toml(job: JobConfig | None, params: PMFParams) -> str:
    """The effective configuration as a TOML file the job accepts back (without the
    ``[job]`` table when ``job`` is None: a file of model settings only)."""
    lines = _table("job", job) if job is not None else []
    for section in GROUPS:
        lines += _table(section, getattr(params, section))
    return "\n".join(lines)
