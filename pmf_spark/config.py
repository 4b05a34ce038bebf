"""Job configuration files (TOML) and the effective configuration.

Precedence, lowest first: the dataclass defaults, the ``--config`` file, the
command-line flags. A file has two tables, ``[job]`` (:class:`JobConfig`) and
``[model]`` (:class:`PMFParams`); unknown tables or keys are errors that name
the key and suggest the nearest valid one.
"""

from __future__ import annotations

import difflib
import tomllib
from typing import Any

from .errors import ConfigError
from .params import JobConfig, PMFParams

SECTIONS = {"job": JobConfig, "model": PMFParams}


def load_config_file(path: str) -> dict[str, dict[str, Any]]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config {path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path}: not valid TOML ({exc})") from None
    out: dict[str, dict[str, Any]] = {}
    for section, values in data.items():
        if section not in SECTIONS:
            near = difflib.get_close_matches(section, list(SECTIONS), n=1)
            hint = f" (did you mean [{near[0]}]?)" if near else ""
            raise ConfigError(f"config {path}: unknown table [{section}]{hint}; "
                              f"expected [job] and [model]")
        if not isinstance(values, dict):
            raise ConfigError(f"config {path}: {section} must be a table")
        names = SECTIONS[section].field_names()
        for key in values:
            if key not in names:
                near = difflib.get_close_matches(key, names, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise ConfigError(f"config {path}: unknown key {key!r} in [{section}]{hint}")
        out[section] = dict(values)
    return out


def resolve(file_values: dict[str, dict[str, Any]] | None,
            flags: dict[str, dict[str, Any]] | None) -> tuple[JobConfig, PMFParams]:
    """Defaults < file < flags, validated into the dataclasses."""
    merged = {s: {} for s in SECTIONS}
    for layer in (file_values or {}, flags or {}):
        for section, values in layer.items():
            merged[section].update(values)
    job = JobConfig.from_dict(merged["job"], where="[job]")
    model = PMFParams.from_dict(merged["model"], where="[model]")
    return job, model


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def to_toml(job: JobConfig, model: PMFParams) -> str:
    """The effective configuration as a TOML file the job accepts back."""
    lines = []
    for section, obj in (("job", job), ("model", model)):
        lines.append(f"[{section}]")
        for f in obj.__dataclass_fields__.values():
            value = getattr(obj, f.name)
            doc = f.metadata.get("doc", "")
            if value is None:
                lines.append(f"# {f.name} = (unset)  # {doc}")
            else:
                lines.append(f"{f.name} = {_toml_value(value)}  # {doc}")
        lines.append("")
    return "\n".join(lines)
