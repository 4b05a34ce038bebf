"""The house rules, read from the source: the package's imports go one way (no cycle, no
private name imported from another module), the Spark-free stages import no pyspark,
and the top level holds only the few modules every stage shares."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "pmf_spark"

#: what a Python worker, a Spark-free answer or a config check imports: never pyspark
#: (whole packages, and single modules of the stages that also have a Spark side)
SPARK_FREE_PACKAGES = ("pmf_spark.config", "pmf_spark.kernels", "pmf_spark.models")
SPARK_FREE_MODULES = ("pmf_spark", "pmf_spark.errors", "pmf_spark.version",
                      "pmf_spark.recommend.topk", "pmf_spark.recommend.foldin",
                      "pmf_spark.serve", "pmf_spark.serve.local", "pmf_spark.serve.answers",
                      "pmf_spark.serve.files", "pmf_spark.serve.batch",
                      "pmf_spark.outputs.modeldir")
#: what may sit beside the stage packages
TOP_LEVEL = {"api", "cli", "errors", "version"}


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return out


MODULES = _modules()


def _imports(name: str) -> list[tuple[str, str | None, int, bool]]:
    """(module imported, name taken from it or None, line, at module level) for every
    import statement in ``name``, also those inside functions."""
    path, is_pkg = MODULES[name]
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found: list[tuple[str, str | None, int, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((a.name, None, child.lineno, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    parts = base[: len(base) - (child.level - 1)]
                    mod = ".".join(parts + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                for a in child.names:
                    sub = f"{mod}.{a.name}"
                    found.append((sub, None, child.lineno, top) if sub in MODULES
                                 else (mod, a.name, child.lineno, top))
            # a class body runs at import; a function body when called, and an
            # ``if TYPE_CHECKING:`` block never
            later = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) or (
                isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test))
            visit(child, top and not later)

    visit(ast.parse(path.read_text()), True)
    return found


def _graph(top_only: bool = False) -> dict[str, set[str]]:
    return {m: {t for t, _, _, top in _imports(m) if t in MODULES and t != m
                and (top or not top_only)} for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_the_walk_sees_the_package():
    # the checks below mean something only if the walk finds the modules and their imports
    assert {"pmf_spark.train.loop", "pmf_spark.engine.spark", "pmf_spark.models.pmf",
            "pmf_spark.serve.local", "pmf_spark.ml.estimator"} <= set(MODULES)
    assert "pmf_spark.engine.layout" in _graph()["pmf_spark.models.pmf"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_have_no_cycle_also_through_imports_inside_functions():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_private_name_is_imported_from_another_module():
    taken = [f"{m}:{line} takes {name} from {t}" for m in MODULES
             for t, name, line, _ in _imports(m)
             if name and t.startswith("pmf_spark") and name.startswith("_")
             and not name.startswith("__")]
    assert not taken, "\n".join(taken)


def test_the_top_level_holds_only_the_shared_modules():
    top = {m.split(".")[1] for m, (_, is_pkg) in MODULES.items()
           if m.count(".") == 1 and not is_pkg}
    assert top == TOP_LEVEL, f"modules beside the stage packages: {sorted(top - TOP_LEVEL)}"


def _closure(start: str) -> tuple[set[str], dict[str, str]]:
    """Modules ``start`` imports at module level, transitively (with their parent
    packages, which Python runs first), and {outside package: first importer}."""
    seen: set[str] = set()
    outside: dict[str, str] = {}
    todo = [start]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parts = m.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        for t, _, _, top in _imports(m):
            if not top:
                continue
            if t in MODULES:
                todo.append(t)
            else:
                outside.setdefault(t.split(".")[0], m)
    return seen, outside


def _spark_free() -> list[str]:
    return sorted({m for m in MODULES for p in SPARK_FREE_PACKAGES
                   if m == p or m.startswith(p + ".")} | set(SPARK_FREE_MODULES))


@pytest.mark.parametrize("start", _spark_free())
def test_spark_free_parts_import_no_pyspark_by_reading(start):
    _, outside = _closure(start)
    for lib in ("pyspark", "py4j"):
        assert lib not in outside, f"{start} reaches {lib} through {outside[lib]}"


def test_spark_free_parts_import_no_pyspark_when_run():
    mods = _spark_free()
    probe = ("import importlib, sys\n"
             f"for m in {mods!r}:\n    importlib.import_module(m)\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyspark', 'py4j')))\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(mods) > 15 and proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout


# ------------------------------------------------------------ the parameter surface
#: fields deliberately without a flag of the training job (none today)
INTERNAL_FIELDS: set[tuple[str, str]] = set()


def _fields() -> set[tuple[str, str]]:
    from pmf_spark.config.params import GROUPS, JobConfig

    return ({("job", n) for n in JobConfig.__dataclass_fields__}
            | {(g, n) for g, cls in GROUPS.items() for n in cls.__dataclass_fields__})


def test_every_parameter_has_a_flag_of_the_training_job():
    sys.path.insert(0, str(ROOT / "jobs"))
    import train_pmf

    flags = {n for _, names in train_pmf.OPTION_GROUPS.values() for n in names}
    missing = sorted(f"{g}.{n}" for g, n in _fields() - INTERNAL_FIELDS if n not in flags)
    assert not missing, f"parameters without a flag in jobs/train_pmf.py OPTION_GROUPS: {missing}"
    parser = train_pmf.build_parser()
    spelled = {a.dest.split(".", 1)[1] for a in parser._actions if "." in (a.dest or "")}
    assert flags <= spelled


def test_conf_default_toml_is_exactly_the_built_in_defaults():
    """Every parameter has its documented line in conf/default.toml, with the default
    the code has: the file is what --print-config prints with no flags (below its
    header comment)."""
    from pmf_spark.config.files import to_toml
    from pmf_spark.config.params import JobConfig, PMFParams

    text = (ROOT / "conf" / "default.toml").read_text()
    body = text[text.index("[job]"):]
    assert body == to_toml(JobConfig(), PMFParams()), \
        "conf/default.toml is stale: regenerate it with jobs/train_pmf.py --print-config"
    keys = {line.lstrip("# ").split(" = ")[0] for line in body.splitlines() if " = " in line}
    assert {n for _, n in _fields()} <= keys


def test_no_class_over_200_lines_and_no_function_over_60():
    long = []
    for name, (path, _) in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            if isinstance(node, ast.ClassDef) and size > 200:
                long.append(f"{name}.{node.name}: class of {size} lines")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and size > 60:
                long.append(f"{name}.{node.name}: function of {size} lines")
    assert not long, "\n".join(long)
