"""The package layout: data flows one way and nothing imports upward.

    commands (pipelines.cli, dashboard, bench)
      -> job graph (pipelines.*)
        -> connectors.monitoring
          -> transforms | connectors.{sources,sinks,query,feeds} (and connectors.emulator)
            -> models

A module may import its own layer and the layers below it; transforms and the connectors'
edge packages share a layer but never import each other. Every import counts, the ones
inside functions too. Also: every package has a docstring (what lives there, what it may
import), and the modules of the old flat layout are gone (one import path per thing).

    .venv/bin/pytest tests/test_layout.py -q
"""
from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOP_PACKAGES = ("pipelines", "transforms", "connectors", "models", "dashboard", "bench")

# The ranks, written once: (module prefix, rank, group). The longest matching prefix decides.
# Higher ranks may import lower ones; within a rank, only the same group.
LAYERS = (
    ("pipelines.cli", 5, "commands"),
    ("dashboard", 5, "commands"),
    ("bench", 5, "commands"),
    ("pipelines", 4, "job graph"),
    ("connectors.monitoring", 3, "monitoring"),
    ("transforms", 2, "transforms"),
    ("connectors", 2, "connectors"),  # sources, sinks, query, feeds, emulator
    ("models", 1, "models"),
)

# The flat layout before issue 19: none of these may come back, not even as a shim.
OLD_MODULES = tuple(f"connectors/{m}.py" for m in (
    "pubsub", "pubsub_direct", "replay", "sample_stream", "model_watch", "parquet", "bigquery", "job_metrics",
    "labels", "publisher", "rate_limit", "x_api", "x_stream", "checkpoint", "duckdb_sql", "sqlfiles",
    "accuracy_watch")) + tuple(f"pipelines/{m}.py" for m in (
        "cli", "ingest", "publish", "sql_cli", "direct_runner_metrics", "direct_runner_side_inputs",
        "direct_runner_specs", "direct_runner_state", "direct_runner_triggers")) + ("sql",)
OLD_NAME = re.compile(
    r"\bconnectors\.(pubsub|pubsub_direct|replay|sample_stream|model_watch|parquet|bigquery|job_metrics|labels"
    r"|publisher|rate_limit|x_api|x_stream|checkpoint|duckdb_sql|sqlfiles|accuracy_watch)\b"
    r"|\bpipelines\.(ingest|publish|sql_cli|direct_runner_\w+)\b")


def layer(module: str) -> tuple[int, str] | None:
    """'connectors.sources.pubsub' -> (2, 'connectors'); None for a module outside the project."""
    for prefix, rank, group in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return rank, group
    return None


def upward(importer: str, imported: str) -> bool:
    """Whether `importer` importing `imported` breaks the layering rule."""
    source, target = layer(importer), layer(imported)
    if source is None or target is None:
        return False
    return target[0] > source[0] or (target[0] == source[0] and target[1] != source[1])


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for top in TOP_PACKAGES for p in sorted((ROOT / top).rglob("*.py"))
            if "__pycache__" not in p.parts}


def imports_of(path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
    """The project modules a file imports, anywhere in it (`from pkg import mod` names the module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
    return {m for m in out if layer(m) is not None}


def violations() -> list[str]:
    modules = project_modules()
    return sorted(f"{importer} imports {imported}" for importer, path in modules.items()
                  for imported in imports_of(path, modules) if upward(importer, imported))


def test_nothing_imports_upward():
    assert violations() == []


def test_every_project_module_has_a_layer():
    assert [m for m in project_modules() if layer(m) is None] == []


@pytest.mark.parametrize("importer, imported", [
    ("models.handlers", "transforms.inference"),
    ("models.registry", "connectors.sources.model_watch"),
    ("connectors.sources.pubsub", "transforms.parse"),
    ("transforms.parse", "connectors.sources.pubsub"),
    ("connectors.sinks.parquet", "pipelines.options"),
    ("connectors.query.duckdb_sql", "connectors.monitoring.accuracy_watch"),
    ("connectors.monitoring.accuracy_watch", "pipelines.sentiment_pipeline"),
    ("pipelines.sentiment_pipeline", "pipelines.cli.sql"),
    ("pipelines.options", "dashboard.data"),
    ("transforms.inference", "bench.live"),
])
def test_the_rule_flags_an_upward_import(importer, imported):
    assert upward(importer, imported)


@pytest.mark.parametrize("importer, imported", [
    ("pipelines.cli.sql", "connectors.query.duckdb_sql"),
    ("dashboard.data", "connectors.monitoring.accuracy_watch"),
    ("pipelines.sentiment_pipeline", "transforms.inference"),
    ("connectors.monitoring.accuracy_watch", "connectors.sinks.parquet"),
    ("connectors.sinks.bigquery", "connectors.query.sqlfiles"),
    ("transforms.parse", "models.contracts"),
])
def test_the_rule_allows_a_downward_import(importer, imported):
    assert not upward(importer, imported)


def test_every_package_says_what_lives_there():
    packages = sorted(p.parent.relative_to(ROOT).as_posix() for top in TOP_PACKAGES
                      for p in (ROOT / top).rglob("__init__.py"))
    assert "connectors/query" in packages and "pipelines/direct_runner" in packages
    missing = [p for p in packages
               if not (ast.get_docstring(ast.parse((ROOT / p / "__init__.py").read_text(encoding="utf-8"))) or "")
               .strip()]
    assert missing == []


def test_the_old_flat_modules_are_gone():
    assert [old for old in OLD_MODULES if (ROOT / old).exists()] == []


def test_no_code_names_an_old_module_path():
    files = [p for top in (*TOP_PACKAGES, "tests", "deploy") for p in (ROOT / top).rglob("*")
             if p.suffix in (".py", ".mk", ".yaml", ".sql") and "__pycache__" not in p.parts]
    files += [ROOT / name for name in ("Makefile", "Dockerfile", "setup.py", ".dockerignore")]
    stale = [f"{p.relative_to(ROOT)}: {m[0]}" for p in files if p.is_file() and p != pathlib.Path(__file__).resolve()
             for m in OLD_NAME.finditer(p.read_text(encoding="utf-8"))]
    assert stale == []
