"""Load the shared SQL in `connectors/query/` for one dialect, with its parameters.

The SQL is BigQuery standard SQL. One dialect switch, `render(text, dialect, dataset)`,
makes it run on DuckDB as well; it changes exactly two things:

* `${dataset}.table` names the dataset: `` `project`.`dataset` `` on BigQuery, DuckDB's
  `main` schema locally;
* `@name` query parameters become `$name` on DuckDB.
* raw strings `r'...'` (regular expressions) become plain strings on DuckDB, which keeps
  backslashes in them as they are.

BigQuery functions DuckDB lacks (SAFE_DIVIDE, DIV, UNIX_SECONDS, TIMESTAMP_SECONDS,
GENERATE_ARRAY) are defined as DuckDB macros in `connectors/query/duckdb_compat.sql`, so the query text
needs no other change.

The views (connectors/query/views.sql) also depend on settings of the job that wrote the tables: the
window size and period and the review threshold (`sentiment_windows_final` recomputes each
window from `scored_posts`). They appear as `${window_seconds}`, `${window_period_seconds}`
and `${review_threshold}` and are filled in, for both dialects, from `ViewSettings` (the
job's defaults unless told otherwise) when the views are created.

A query file starts with `--` comment lines: a description, then one line per parameter,
`-- @param NAME TYPE [= DEFAULT] [: help]` (TYPE a BigQuery type; DEFAULT NULL means optional).

    .venv/bin/python -m connectors.query.sqlfiles keyword_summary --dialect bigquery --dataset my-proj:pulse
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.resources
import re
import sys
from typing import Any, Mapping

DIALECTS = ("bigquery", "duckdb")
DUCKDB_SCHEMA = "main"

_PARAM_LINE = re.compile(
    r"^--\s*@param\s+(?P<name>\w+)\s+(?P<type>\w+)(?:\s*=\s*(?P<default>[^:]+?))?\s*(?::\s*(?P<help>.*))?$"
)
# `@name` outside string literals; BigQuery's `@@system_variables` are left alone.
_PARAM_REF = re.compile(r"(?<![@\w])@(\w+)")
_DATASET_REF = "${dataset}"
_VARIABLE_REF = re.compile(r"\$\{(\w+)\}")
# BigQuery's raw string r'...' (regular expressions): DuckDB's plain '...' keeps backslashes as they are.
_RAW_STRING = re.compile(r"(?<![\w'])[rR]'")
_MISSING = object()


class SqlError(ValueError):
    """A user mistake with a query: unknown name, missing or malformed parameter."""


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    type: str  # BigQuery type name: STRING, INT64, FLOAT64, BOOL, TIMESTAMP
    default: Any = _MISSING
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is _MISSING


@dataclasses.dataclass(frozen=True)
class Query:
    name: str
    description: str
    params: tuple[Param, ...]
    text: str  # BigQuery SQL with `${dataset}.` table prefixes and `@name` parameters

    def render(self, dialect: str, dataset: str | None = None) -> str:
        return render(self.text, dialect, dataset)

    def bind(self, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Parameter values (strings from a command line, or Python values) -> typed values,
        defaults filled in; raises SqlError naming the parameter that is wrong or missing."""
        values = dict(values or {})
        unknown = sorted(set(values) - {p.name for p in self.params})
        if unknown:
            known = ", ".join(p.name for p in self.params) or "none"
            raise SqlError(f"query {self.name!r} has no parameter {unknown[0]!r} (parameters: {known})")
        bound = {}
        for p in self.params:
            if p.name in values:
                bound[p.name] = convert(p, values[p.name])
            elif p.required:
                raise SqlError(f"query {self.name!r} needs --param {p.name}=<{p.type}> ({p.help or 'no default'})")
            else:
                bound[p.name] = p.default
        return bound


@dataclasses.dataclass(frozen=True)
class ViewSettings:
    """The settings of the job behind the tables that the views need (`pulse run`'s flags of
    the same names and defaults): window length, sliding period (None: fixed windows) and the
    confidence under which a post counts as low_confidence."""

    window_size: int = 60
    window_period: int | None = None
    review_threshold: float = 0.5

    def __post_init__(self):
        size, period = self.window_size, self.window_period
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise SqlError(f"window size must be a positive whole number of seconds, got {size!r}")
        if period is not None and (isinstance(period, bool) or not isinstance(period, int)
                                   or not 0 < period <= size or size % period):
            raise SqlError(f"window period must be a whole number of seconds that divides the window size "
                           f"{size}, got {period!r}")
        threshold = self.review_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise SqlError(f"review threshold must lie in [0, 1], got {threshold!r}")

    def variables(self) -> dict[str, str]:
        """`${name}` -> SQL literal, the same text for BigQuery and DuckDB."""
        # A float literal with an exponent is FLOAT64 on BigQuery and DOUBLE on DuckDB (which
        # reads 0.6 as a DECIMAL); repr() round-trips the value exactly.
        threshold = repr(float(self.review_threshold))
        return {
            "window_seconds": str(self.window_size),
            "window_period_seconds": str(self.window_period or self.window_size),
            "review_threshold": threshold if "e" in threshold else threshold + "e0",
        }


def sql_root():
    """The installed `connectors/query/` folder (a Traversable)."""
    return importlib.resources.files("connectors.query")


def render(text: str, dialect: str, dataset: str | None = None,
           variables: Mapping[str, str] | None = None) -> str:
    """The one dialect switch: BigQuery SQL from `connectors/query/` -> SQL for `dialect`.

    `dataset` is `project:dataset`, `project.dataset` or `dataset` (BigQuery only; the
    job's default project is used when the project is left out). `variables` fill in the
    other `${name}`s (SQL literals, e.g. ViewSettings.variables()); one left unfilled is an
    SqlError.
    """
    if dialect == "duckdb":
        text = _PARAM_REF.sub(r"$\1", text.replace(_DATASET_REF, DUCKDB_SCHEMA))
        text = _RAW_STRING.sub("'", text)
    elif dialect == "bigquery":
        if not dataset:
            raise SqlError("BigQuery SQL needs a dataset (PROJECT:DATASET or DATASET)")
        text = text.replace(_DATASET_REF, quote_dataset(dataset))
    else:
        raise SqlError(f"unknown SQL dialect {dialect!r}; expected one of {', '.join(DIALECTS)}")
    variables = variables or {}

    def fill(match: re.Match) -> str:
        if match[1] not in variables:
            raise SqlError(f"the SQL uses ${{{match[1]}}}, which has no value")
        return str(variables[match[1]])
    return _VARIABLE_REF.sub(fill, text)


def quote_dataset(dataset: str) -> str:
    """'my-proj:pulse' -> '`my-proj`.`pulse`' (hyphenated project ids need the quotes)."""
    parts = [part for part in re.split(r"[:.]", dataset) if part]
    if not 1 <= len(parts) <= 2 or not all(re.fullmatch(r"[\w-]+", part) for part in parts):
        raise SqlError(f"not a BigQuery dataset: {dataset!r}; expected PROJECT:DATASET or DATASET")
    return ".".join(f"`{part}`" for part in parts)


def parse_query(name: str, source: str) -> Query:
    """A query file's text -> Query (description and parameters from its leading comments)."""
    description, params = [], []
    for line in source.splitlines():
        if not line.startswith("--"):
            break
        match = _PARAM_LINE.match(line.strip())
        if match:
            p = Param(match["name"], match["type"].upper(), help=(match["help"] or "").strip())
            if match["default"] is not None:
                raw = match["default"].strip()
                p = dataclasses.replace(p, default=None if raw.upper() == "NULL" else convert(p, raw))
            params.append(p)
        elif not params:
            description.append(line[2:].strip())
    return Query(name, " ".join(d for d in description if d), tuple(params), source)


def query_names() -> list[str]:
    return sorted(f.name[:-4] for f in sql_root().joinpath("queries").iterdir() if f.name.endswith(".sql"))


def load_query(name: str) -> Query:
    """`connectors/query/queries/<name>.sql` -> Query; SqlError listing the known names if there is none."""
    path = sql_root().joinpath("queries", f"{name}.sql")
    if not re.fullmatch(r"\w+", name) or not path.is_file():
        raise SqlError(f"no query named {name!r}; known queries: {', '.join(query_names())}")
    return parse_query(name, path.read_text(encoding="utf-8"))


def statements(filename: str, dialect: str, dataset: str | None = None,
               variables: Mapping[str, str] | None = None) -> list[str]:
    """The `;`-separated statements of `connectors/query/<filename>` rendered for `dialect` (whole-line
    `--` comments dropped first, so they may contain `;`)."""
    source = sql_root().joinpath(filename).read_text(encoding="utf-8")
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("--"))
    return [chunk.strip() for chunk in render(code, dialect, dataset, variables).split(";") if chunk.strip()]


def view_statements(dialect: str, dataset: str | None = None,
                    settings: ViewSettings | None = None) -> list[str]:
    """`CREATE OR REPLACE VIEW` statements of connectors/query/views.sql for `dialect`, for a job run
    with `settings` (default: the job's defaults)."""
    return statements("views.sql", dialect, dataset, (settings or ViewSettings()).variables())


def view_names() -> list[str]:
    text = sql_root().joinpath("views.sql").read_text(encoding="utf-8")
    return re.findall(r"VIEW\s+\$\{dataset\}\.(\w+)", text)


def convert(param: Param, value: Any) -> Any:
    """A parameter value (a Python value, or a string from the command line) -> the Python
    value of the parameter's type; SqlError on a malformed value."""
    if value is None or (isinstance(value, str) and value.upper() == "NULL"):
        return None
    try:
        if param.type == "STRING":
            return str(value)
        if param.type == "INT64":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if param.type == "FLOAT64":
            return float(value)
        if param.type == "BOOL":
            if isinstance(value, str):
                return {"true": True, "false": False}[value.lower()]
            return bool(value)
        if param.type == "TIMESTAMP":
            return parse_timestamp(value)
    except (ValueError, KeyError, TypeError):
        raise SqlError(f"parameter {param.name!r}: {value!r} is not a {param.type}") from None
    raise SqlError(f"parameter {param.name!r} has unsupported type {param.type}")


def parse_timestamp(value: Any) -> dt.datetime:
    """RFC 3339 text or a datetime -> timezone-aware UTC datetime (naive input is read as UTC)."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if not isinstance(value, dt.datetime):
        raise TypeError(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


def main(argv: list[str] | None = None) -> int:
    """Print a query (or, with no name, the views) rendered for a dialect."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", nargs="?", help=f"one of: {', '.join(query_names())}")
    parser.add_argument("--dialect", choices=DIALECTS, default="duckdb")
    parser.add_argument("--dataset", help="PROJECT:DATASET (BigQuery)")
    parser.add_argument("--window_size", type=int, default=60, help="views: the job's window length (s)")
    parser.add_argument("--window_period", type=int, default=None, help="views: the job's sliding period (s)")
    parser.add_argument("--review_threshold", type=float, default=0.5, help="views: the job's review threshold")
    args = parser.parse_args(argv)
    try:
        if args.name:
            print(load_query(args.name).render(args.dialect, args.dataset))
        else:
            settings = ViewSettings(args.window_size, args.window_period, args.review_threshold)
            print(";\n\n".join(view_statements(args.dialect, args.dataset, settings)) + ";")
    except SqlError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
