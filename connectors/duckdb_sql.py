"""DuckDB over the job's Parquet output: the same tables and views as in BigQuery.

`connect(output_dir)` opens an in-memory DuckDB (TimeZone UTC) with one view per table
in models/contracts.TABLES over `<output_dir>/<table>/**/*.parquet`, typed from the
contracts (an empty view of the right type when a table has no files yet), then the
derived views of sql/views.sql (`scored_posts_unique`, `sentiment_windows_latest`,
`sentiment_windows_final`, ...) for the job's settings (`sqlfiles.ViewSettings`: window
size and period, review threshold). The file list is taken when connecting (leaving out
Beam's staging files); connect again to see newer files.

    .venv/bin/python -m connectors.duckdb_sql out "SELECT keyword, COUNT(*) FROM scored_posts GROUP BY 1"
"""
from __future__ import annotations

import glob
import os
import sys
from typing import Any, Mapping, Sequence

import duckdb

from connectors import sqlfiles
from models.contracts import TABLES, Field

DUCKDB_TYPES = {
    "STRING": "VARCHAR",
    "INT64": "BIGINT",
    "FLOAT64": "DOUBLE",
    "BOOL": "BOOLEAN",
    "TIMESTAMP": "TIMESTAMPTZ",
    "BYTES": "BLOB",
}

class OutputNotFound(FileNotFoundError):
    """The output directory does not exist (the job has not run, or a typo)."""


def duckdb_type(field: Field) -> str:
    base = DUCKDB_TYPES[field.type]
    return f"{base}[]" if field.mode == "REPEATED" else base


def typed_empty_select(table: str) -> str:
    """SELECT of zero rows with the table's contract columns and types."""
    cols = ", ".join(f"CAST(NULL AS {duckdb_type(f)}) AS {f.name}" for f in TABLES[table])
    return f"SELECT {cols} WHERE FALSE"


def parquet_glob(output_dir: str, table: str) -> str:
    return os.path.join(output_dir, table, "**", "*.parquet")


def table_files(output_dir: str, table: str) -> list[str]:
    """The finished Parquet files of one table: files being written (hidden `.tmp-*` names,
    Beam's `beam-temp-*` / `.temp-beam-*` folders) are left out."""
    root = os.path.join(output_dir, table)
    files = glob.glob(parquet_glob(output_dir, table), recursive=True)
    return sorted(f for f in files if not any(
        part.startswith(".") or part.startswith("beam-temp") for part in os.path.relpath(f, root).split(os.sep)))


def table_view_sql(output_dir: str, table: str) -> str:
    """CREATE VIEW for one table: the contract columns (in contract order, contract types)
    over its Parquet files, or an empty typed view when it has none."""
    files = table_files(output_dir, table)
    if not files:
        return f"CREATE OR REPLACE VIEW {table} AS {typed_empty_select(table)}"
    # Casting each column pins the types whatever the writer chose (e.g. timestamp units),
    # and UNION BY NAME with the empty select supplies columns older files lack.
    casts = ", ".join(f"CAST({f.name} AS {duckdb_type(f)}) AS {f.name}" for f in TABLES[table])
    listing = ", ".join(_quote(f) for f in files)
    return (f"CREATE OR REPLACE VIEW {table} AS SELECT {casts} FROM ("
            f"{typed_empty_select(table)} UNION ALL BY NAME "
            f"SELECT * FROM read_parquet([{listing}], union_by_name = true))")


def connect(output_dir: str, database: str = ":memory:",
            settings: sqlfiles.ViewSettings | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the five tables and the derived views (for a job
    run with `settings`; default: the job's defaults).

    Raises OutputNotFound when `output_dir` is not a directory.
    """
    if not os.path.isdir(output_dir):
        raise OutputNotFound(f"no output directory {output_dir!r}: run the job first (pulse run --output DIR)")
    con = duckdb.connect(database)
    con.execute("SET TimeZone = 'UTC'")
    for statement in sqlfiles.statements("duckdb_compat.sql", "duckdb"):
        con.execute(statement)
    for table in TABLES:
        con.execute(table_view_sql(output_dir, table))
    for statement in sqlfiles.view_statements("duckdb", settings=settings):
        con.execute(statement)
    return con


def query(output_dir: str, sql: str, params: Mapping[str, Any] | Sequence[Any] | None = None,
          settings: sqlfiles.ViewSettings | None = None) -> tuple[list[str], list[tuple]]:
    """Run one SQL statement over the output -> (column names, rows).

    DuckDB errors (bad SQL) propagate as duckdb.Error.
    """
    con = connect(output_dir, settings=settings)
    try:
        cursor = con.execute(sql, params) if params else con.execute(sql)
        if cursor.description is None:
            return [], []
        return [d[0] for d in cursor.description], cursor.fetchall()
    finally:
        con.close()


def run_query(output_dir: str, name: str, params: Mapping[str, Any] | None = None,
              settings: sqlfiles.ViewSettings | None = None) -> tuple[list[str], list[tuple]]:
    """Run a named query of sql/queries/ with parameter values -> (columns, rows)."""
    q = sqlfiles.load_query(name)
    return query(output_dir, q.render("duckdb"), q.bind(params), settings)


def _quote(path: str) -> str:
    return "'" + path.replace("'", "''") + "'"


if __name__ == "__main__":
    cols, rows = query(sys.argv[1], sys.argv[2])
    print(cols)
    for row in rows:
        print(row)
