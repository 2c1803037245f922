"""DuckDB over the job's Parquet output: the same tables and views as in BigQuery.

`connect(output_dir)` opens an in-memory DuckDB (TimeZone UTC) with one view per table
in models/contracts.TABLES over `<output_dir>/<table>/**/*.parquet`, typed from the
contracts (an empty view of the right type when a table has no files yet), then the
derived views of connectors/query/views.sql (`scored_posts_unique`, `sentiment_windows_latest`,
`sentiment_windows_final`, ...) for the job's settings (`sqlfiles.ViewSettings`: window
size and period, review threshold). The file list is taken when connecting (leaving out
Beam's staging files); connect again to see newer files.

Unreadable files are left out with a warning, never a failure. Each file's Parquet footer is
read once (pyarrow) and the verdict kept by (path, size, mtime), so a dashboard that connects
every few seconds reads only the footers of new or changed files; a file that fails (empty,
cut short, not Parquet) is left out of its table's view and reported as a `SkippedFile`
(`connect_with_warnings`, `query_with_warnings` and `run_query_with_warnings` return them;
`connect`, `query` and `run_query` issue one `UnreadableFileWarning` per file instead). A file
whose footer is fine but whose data pages are garbage is only found when DuckDB reads them:
the query fails with an error naming the file ("Failed to read file ...: ZSTD Decompression
failure", "Invalid string encoding found in Parquet file ..."); `with_connection` and the
query functions then remember the file as unreadable (`note_unreadable`), reconnect without it
and run the query again. Garbage in an uncompressed numeric page that still decodes cannot be
told from data (Parquet page checksums are optional and the writers here do not write them).

The tables besides the job's five: `labels` (the review desk, connectors/sinks/labels.py) and
`job_metrics` (the launcher's counter snapshots, connectors/sinks/job_metrics.py), with the views
`labels_latest`, `label_agreement` and `job_balance` (connectors/query/views.sql).

    .venv/bin/python -m connectors.query.duckdb_sql out "SELECT keyword, COUNT(*) FROM scored_posts GROUP BY 1"
"""
from __future__ import annotations

import glob
import os
import re
import sys
import threading
import warnings
from typing import Any, Callable, Mapping, NamedTuple, Sequence, TypeVar

import duckdb

from connectors.query import sqlfiles
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
    Beam's `beam-temp-*` / `.temp-beam-*` folders) are left out. Unreadable files are not
    (see `readable_files`)."""
    root = os.path.join(output_dir, table)
    files = glob.glob(parquet_glob(output_dir, table), recursive=True)
    return sorted(f for f in files if not any(
        part.startswith(".") or part.startswith("beam-temp") for part in os.path.relpath(f, root).split(os.sep)))


# ---- unreadable files ---------------------------------------------------------------------


class SkippedFile(NamedTuple):
    """A Parquet file left out of its table because it cannot be read, and why (one line)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"skipped unreadable Parquet file {self.path}: {self.reason}"


class UnreadableFileWarning(UserWarning):
    """A Parquet file was left out of its table (the message is `str(SkippedFile)`)."""


# path -> (size, mtime_ns, reason or None): one footer read per version of a file.
_VERDICTS: dict[str, tuple[int, int, str | None]] = {}
_VERDICTS_LOCK = threading.Lock()
_GONE = object()
_LOCAL = threading.local()


def _one_line(error: BaseException | str) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def file_problem(path: str):
    """Why the Parquet file at `path` cannot be read (one line), None when its footer reads, or
    `_GONE` when the file vanished (a file replaced or deleted since it was listed is no warning).

    The verdict is cached by (path, size, mtime): an unchanged file is not read again, a
    rewritten one is.
    """
    import pyarrow.parquet as pq

    try:
        st = os.stat(path)
    except FileNotFoundError:
        return _GONE
    key = (st.st_size, st.st_mtime_ns)
    with _VERDICTS_LOCK:
        cached = _VERDICTS.get(path)
    if cached is not None and cached[:2] == key:
        return cached[2]
    if st.st_size == 0:
        reason = "empty file (0 bytes)"
    else:
        try:
            pq.read_metadata(path)
            reason = None
        except FileNotFoundError:
            return _GONE
        except Exception as e:  # noqa: BLE001  (pyarrow's OSError / ArrowInvalid: any failure is a verdict)
            reason = _one_line(e)
    with _VERDICTS_LOCK:
        _VERDICTS[path] = (*key, reason)
    return reason


def mark_unreadable(path: str, reason: str) -> SkippedFile | None:
    """Remember the current version of `path` as unreadable (DuckDB failed on its data pages),
    so that the next connect leaves it out -> the SkippedFile, or None if the file is gone."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    reason = _one_line(reason)
    with _VERDICTS_LOCK:
        _VERDICTS[path] = (st.st_size, st.st_mtime_ns, reason)
    return SkippedFile(path, reason)


_NAMED_FILE = re.compile(r"""["']([^"']+?\.parquet)["']""")


def note_unreadable(error: BaseException) -> SkippedFile | None:
    """A DuckDB error that names a Parquet file it could not read (garbage data pages) -> mark
    that file unreadable (`mark_unreadable`) and return it; None for any other error. Reconnect
    and run the query again to read the table without the file."""
    for path in _NAMED_FILE.findall(str(error)):
        if os.path.isfile(path):
            return mark_unreadable(path, str(error).split(": ", 1)[-1])
    return None


def readable_files(output_dir: str, table: str) -> tuple[list[str], list[SkippedFile]]:
    """`table_files` split into the files whose Parquet footer reads and the skipped ones."""
    good, skipped = [], []
    for path in table_files(output_dir, table):
        problem = file_problem(path)
        if problem is None:
            good.append(path)
        elif problem is not _GONE:
            skipped.append(SkippedFile(path, problem))
    return good, skipped


def last_skipped() -> list[SkippedFile]:
    """The files the last `connect` / `connect_with_warnings` of this thread left out."""
    return list(getattr(_LOCAL, "skipped", []))


# ---- views ----------------------------------------------------------------------------------


def table_view_sql(output_dir: str, table: str, files: Sequence[str] | None = None) -> str:
    """CREATE VIEW for one table: the contract columns (in contract order, contract types)
    over its Parquet files (default: all of `table_files`), or an empty typed view when it has none."""
    files = table_files(output_dir, table) if files is None else list(files)
    if not files:
        return f"CREATE OR REPLACE VIEW {table} AS {typed_empty_select(table)}"
    # Casting each column pins the types whatever the writer chose (e.g. timestamp units),
    # and UNION BY NAME with the empty select supplies columns older files lack.
    casts = ", ".join(f"CAST({f.name} AS {duckdb_type(f)}) AS {f.name}" for f in TABLES[table])
    listing = ", ".join(_quote(f) for f in files)
    return (f"CREATE OR REPLACE VIEW {table} AS SELECT {casts} FROM ("
            f"{typed_empty_select(table)} UNION ALL BY NAME "
            f"SELECT * FROM read_parquet([{listing}], union_by_name = true))")


def connect_with_warnings(output_dir: str, database: str = ":memory:",
                          settings: sqlfiles.ViewSettings | None = None
                          ) -> tuple[duckdb.DuckDBPyConnection, list[SkippedFile]]:
    """An in-memory DuckDB connection with every table of models/contracts.TABLES and the
    derived views (for a job run with `settings`; default: the job's defaults), and the files
    left out because they cannot be read.

    Raises OutputNotFound when `output_dir` is not a directory.
    """
    if not os.path.isdir(output_dir):
        raise OutputNotFound(f"no output directory {output_dir!r}: run the job first (pulse run --output DIR)")
    con = duckdb.connect(database)
    skipped: list[SkippedFile] = []
    try:
        con.execute("SET TimeZone = 'UTC'")
        for statement in sqlfiles.statements("duckdb_compat.sql", "duckdb"):
            con.execute(statement)
        for table in TABLES:
            files, left_out = readable_files(output_dir, table)
            skipped += left_out
            while True:
                try:
                    con.execute(table_view_sql(output_dir, table, files))
                    break
                except duckdb.Error as e:  # a footer pyarrow reads and DuckDB does not
                    found = _named_file(e, files)
                    if found is None:
                        raise
                    files.remove(found)
                    skipped.append(mark_unreadable(found, str(e)) or SkippedFile(found, _one_line(e)))
        for statement in sqlfiles.view_statements("duckdb", settings=settings):
            con.execute(statement)
    except BaseException:
        con.close()
        raise
    _LOCAL.skipped = skipped
    return con, skipped


def connect(output_dir: str, database: str = ":memory:",
            settings: sqlfiles.ViewSettings | None = None) -> duckdb.DuckDBPyConnection:
    """`connect_with_warnings` without the list: one UnreadableFileWarning per file left out
    (`last_skipped()` gives them too).

    Raises OutputNotFound when `output_dir` is not a directory.
    """
    con, skipped = connect_with_warnings(output_dir, database, settings)
    _warn(skipped)
    return con


T = TypeVar("T")
MAX_RETRIES = 32


def with_connection(output_dir: str, fn: Callable[[duckdb.DuckDBPyConnection], T],
         settings: sqlfiles.ViewSettings | None = None) -> tuple[T, list[SkippedFile]]:
    """fn(connection) over the output -> (its result, the files left out).

    When DuckDB fails on a file's data pages (`note_unreadable`), the file is remembered as
    unreadable and fn runs again on a new connection without it. Other DuckDB errors propagate.
    """
    noted: list[SkippedFile] = []
    for _ in range(MAX_RETRIES):
        con, skipped = connect_with_warnings(output_dir, settings=settings)
        try:
            return fn(con), _merge(skipped, noted)
        except duckdb.Error as e:
            found = note_unreadable(e)
            if found is None or found.path in {n.path for n in noted}:
                raise
            noted.append(found)
        finally:
            con.close()
    raise RuntimeError(f"gave up after leaving out {len(noted)} unreadable files of {output_dir}")


def query_with_warnings(output_dir: str, sql: str, params: Mapping[str, Any] | Sequence[Any] | None = None,
                        settings: sqlfiles.ViewSettings | None = None
                        ) -> tuple[list[str], list[tuple], list[SkippedFile]]:
    """Run one SQL statement over the output -> (column names, rows, files left out).

    DuckDB errors (bad SQL) propagate as duckdb.Error.
    """
    def run(con):
        cursor = con.execute(sql, params) if params else con.execute(sql)
        if cursor.description is None:
            return [], []
        return [d[0] for d in cursor.description], cursor.fetchall()

    (columns, rows), skipped = with_connection(output_dir, run, settings)
    return columns, rows, skipped


def query(output_dir: str, sql: str, params: Mapping[str, Any] | Sequence[Any] | None = None,
          settings: sqlfiles.ViewSettings | None = None) -> tuple[list[str], list[tuple]]:
    """Run one SQL statement over the output -> (column names, rows); one UnreadableFileWarning
    per file left out.

    DuckDB errors (bad SQL) propagate as duckdb.Error.
    """
    columns, rows, skipped = query_with_warnings(output_dir, sql, params, settings)
    _warn(skipped)
    return columns, rows


def run_query_with_warnings(output_dir: str, name: str, params: Mapping[str, Any] | None = None,
                            settings: sqlfiles.ViewSettings | None = None
                            ) -> tuple[list[str], list[tuple], list[SkippedFile]]:
    """Run a named query of connectors/query/queries/ with parameter values -> (columns, rows, files left out)."""
    q = sqlfiles.load_query(name)
    return query_with_warnings(output_dir, q.render("duckdb"), q.bind(params), settings)


def run_query(output_dir: str, name: str, params: Mapping[str, Any] | None = None,
              settings: sqlfiles.ViewSettings | None = None) -> tuple[list[str], list[tuple]]:
    """Run a named query of connectors/query/queries/ with parameter values -> (columns, rows); one
    UnreadableFileWarning per file left out."""
    columns, rows, skipped = run_query_with_warnings(output_dir, name, params, settings)
    _warn(skipped)
    return columns, rows


def _named_file(error: BaseException, files: Sequence[str]) -> str | None:
    named = set(_NAMED_FILE.findall(str(error)))
    return next((f for f in files if f in named), None)


def _merge(a: list[SkippedFile], b: list[SkippedFile]) -> list[SkippedFile]:
    seen, out = set(), []
    for s in a + b:
        if s.path not in seen:
            seen.add(s.path)
            out.append(s)
    return out


def _warn(skipped: Sequence[SkippedFile]) -> None:
    for s in skipped:
        warnings.warn(UnreadableFileWarning(str(s)), stacklevel=3)


def _quote(path: str) -> str:
    return "'" + path.replace("'", "''") + "'"


if __name__ == "__main__":
    cols, rows = query(sys.argv[1], sys.argv[2])
    print(cols)
    for row in rows:
        print(row)
