"""`pulse sql` and `pulse summary`: SQL over the job's Parquet output through DuckDB.

`pulse sql` runs either SQL text or the name of a query in connectors/query/queries/ (with
`--param NAME=VALUE`) over the tables and views of connectors/query/duckdb_sql:

    pulse sql "SELECT keyword, COUNT(*) AS posts FROM scored_posts GROUP BY 1" --output out
    pulse sql top_negative_posts --param window_start=2024-05-01T10:00:00Z \\
        --param window_end=2024-05-01T11:00:00Z --format json --output out
    pulse sql --list
    pulse summary --output out

The tables are read through the views of connectors/query/views.sql, which de-duplicate rows a rerun
(`pulse run --append`) or a retried write stored twice; `sentiment_windows_final`
recomputes each window from `scored_posts`, so it needs the job's `--window_size`,
`--window_period` and `--review_threshold` when the job ran with other than the defaults
(both commands take them).

User mistakes (a missing output directory, bad SQL, a bad parameter) give one line on
stderr and exit status 2 (usage) or 1 (the query failed); never a traceback. A Parquet file
that cannot be read (empty, cut short, garbage pages) is left out of its table with one
warning line on stderr per file (connectors/query/duckdb_sql), and the command goes on.
"""
from __future__ import annotations

import argparse
import base64
import csv
import datetime as dt
import json
import re
import sys
from typing import Any, Sequence, TextIO

import duckdb

from connectors.query import duckdb_sql, sqlfiles
from connectors.sinks.labels import BIDI_CONTROLS

FORMATS = ("table", "csv", "json")
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line (not the usage block)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_job_settings(parser: argparse.ArgumentParser) -> None:
    defaults = sqlfiles.ViewSettings()
    parser.add_argument("--window_size", type=int, default=defaults.window_size,
                        help="the job's --window_size, for sentiment_windows_final (default: %(default)s)")
    parser.add_argument("--window_period", type=int, default=defaults.window_period,
                        help="the job's --window_period (sliding windows), if it had one")
    parser.add_argument("--review_threshold", type=float, default=defaults.review_threshold,
                        help="the job's --review_threshold, for low_confidence (default: %(default)s)")


def _settings(args: argparse.Namespace) -> sqlfiles.ViewSettings:
    return sqlfiles.ViewSettings(args.window_size, args.window_period, args.review_threshold)


def sql_main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = _Parser(prog="pulse sql", description="Run SQL over the job's output (DuckDB).")
    parser.add_argument("query", nargs="?", help="SQL text, or the name of a query in connectors/query/queries/")
    parser.add_argument("--output", default="out", help="the job's output directory (default: out)")
    _add_job_settings(parser)
    parser.add_argument("--format", choices=FORMATS, default="table")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a parameter of a named query (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the named queries and their parameters")
    args = parser.parse_args(argv)
    if args.list:
        print_query_list(out)
        return 0
    if not args.query:
        return _fail("pulse sql: give SQL text or a query name (pulse sql --list shows the names)", 2)
    try:
        settings = _settings(args)
        if _is_query_name(args.query):
            columns, rows, skipped = duckdb_sql.run_query_with_warnings(
                args.output, args.query, _param_pairs(args.param), settings)
        elif args.param:
            return _fail("pulse sql: --param applies to named queries only (pulse sql --list)", 2)
        else:
            columns, rows, skipped = duckdb_sql.query_with_warnings(args.output, args.query, settings=settings)
    except duckdb_sql.OutputNotFound as e:
        return _fail(f"pulse sql: {e}", 2)
    except sqlfiles.SqlError as e:
        return _fail(f"pulse sql: {e}", 2)
    except duckdb.Error as e:
        return _fail(f"pulse sql: {_first_line(e)}", 1)
    for s in skipped:
        print(f"pulse sql: warning: {s}", file=sys.stderr)
    write_result(columns, rows, args.format, out)
    return 0


def summary_main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = _Parser(prog="pulse summary", description="Per-keyword summary of the job's output.")
    parser.add_argument("--output", default="out", help="the job's output directory (default: out)")
    _add_job_settings(parser)
    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
        text, skipped = duckdb_sql.with_connection(
            args.output, lambda con: summary_text(con, args.output, settings.window_size), settings=settings)
    except (duckdb_sql.OutputNotFound, sqlfiles.SqlError) as e:
        return _fail(f"pulse summary: {e}", 2)
    except duckdb.Error as e:
        return _fail(f"pulse summary: {_first_line(e)}", 1)
    for s in skipped:
        print(f"pulse summary: warning: {s}", file=sys.stderr)
    out.write(text)
    return 0


# Drivers compare a window with the baseline its alerts were judged against: the job's default
# --alert_baseline_windows windows before it.
BASELINE_WINDOWS = 30


def summary_text(con: duckdb.DuckDBPyConnection, output_dir: str, window_size: int = 60) -> str:
    """The readable summary: per keyword posts / % negative / alerts, totals, dead letters, and
    the incidents with their drivers (all read through the de-duplicating views)."""
    def run(name, params=None):
        q = sqlfiles.load_query(name)
        cur = con.execute(q.render("duckdb"), q.bind(params)) if q.params else con.execute(q.render("duckdb"))
        return [d[0] for d in cur.description], cur.fetchall()

    _, keywords = run("keyword_summary")
    _, dead = run("dead_letters_by_reason")
    windows, = con.execute("SELECT COUNT(*) FROM sentiment_windows_latest").fetchone()
    lines = [f"sentiment-pulse summary of {output_dir}", ""]
    table_rows = []
    total_posts = total_negative = total_alerts = total_review = 0
    for kw, posts, negative, _neutral, _positive, share, mean_score, alerts, review in keywords:
        table_rows.append((kw, posts, _percent(share), _fixed(mean_score), alerts, review))
        total_posts += posts
        total_negative += negative
        total_alerts += alerts
        total_review += review
    total_share = total_negative / total_posts if total_posts else None
    table_rows.append(("TOTAL", total_posts, _percent(total_share), "", total_alerts, total_review))
    header = ("keyword", "posts", "% negative", "mean score", "alerts", "review")
    lines += format_table(header, table_rows).splitlines()
    lines += ["", f"windows (final panes): {windows}"]
    dead_total = sum(row[2] for row in dead)
    lines.append(f"dead letters: {dead_total}")
    if dead:
        lines += ["  " + line for line in format_table(
            ("stage", "reason", "messages"), [row[:3] for row in dead]).splitlines()]
    lines += incident_lines(con, run, window_size)
    return "\n".join(lines) + "\n"


def incident_lines(con: duckdb.DuckDBPyConnection, run, window_size: int, drivers: int = 5) -> list[str]:
    """Each incident (view incidents: a keyword's consecutive alerts with their '*' echoes), the
    latest first: its time span with the date, kinds, peak and size, and the terms that set it
    apart from the keyword's baseline (connectors/query/queries/drivers.sql), with the posts holding each."""
    incidents = con.execute("SELECT keyword, started_at, ended_at, kinds, peak_zscore, peak_at, alerts, status "
                            "FROM incidents ORDER BY started_at DESC, keyword").fetchall()
    if not incidents:
        return ["", "incidents: none (no alerts)"]
    baseline = BASELINE_WINDOWS * window_size
    lines = ["", f"incidents: {len(incidents)} (consecutive alerts of a keyword with their '*' echoes), "
                 "the latest first; drivers: terms that set the incident apart from the keyword's "
                 f"{baseline // 60} minutes before (posts holding each: in the incident vs before)"]
    for keyword, started, ended, kinds, peak, peak_at, alerts, status in incidents:
        start, end = (t.astimezone(dt.timezone.utc) for t in (started, ended))
        peak_at = peak_at.astimezone(dt.timezone.utc)
        lines.append(f"  {visible(keyword)}  {start:%Y-%m-%d %H:%M}-{end:%H:%M} UTC  {kinds}  peak z {peak:.1f} at "
                     f"{peak_at:%H:%M}  {alerts} alert{'s' if alerts != 1 else ''}  {status}")
        _, found = run("drivers", {"keyword": keyword, "window_start": start, "window_end": end,
                                   "baseline_seconds": baseline, "limit": drivers})
        terms = ", ".join(f"{visible(term)} ({inside} vs {before})" for term, _kind, inside, before, *_ in found)
        lines.append(f"    drivers: {terms or 'no terms'}")
    return lines


def print_query_list(out: TextIO) -> None:
    for name in sqlfiles.query_names():
        q = sqlfiles.load_query(name)
        out.write(f"{name}: {q.description}\n")
        for p in q.params:
            default = "required" if p.required else "optional" if p.default is None else f"default {p.default}"
            out.write(f"    --param {p.name}=<{p.type}>  {p.help} ({default})\n")


def write_result(columns: list[str], rows: list[tuple], fmt: str, out: TextIO) -> None:
    if fmt == "csv":
        # Newlines and tabs inside a quoted CSV field are data; every other control character is escaped.
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([visible(c, keep="\n\t") for c in columns])
        writer.writerows([[visible(v, keep="\n\t") if isinstance(v, str) else v for v in map(_text, row)]
                          for row in rows])
    elif fmt == "json":
        # json escapes C0 controls itself; DEL, C1 controls, bidi overrides and lone surrogates as \uNNNN.
        text = json.dumps([dict(zip(columns, map(_jsonable, row))) for row in rows], ensure_ascii=False, indent=1)
        out.write(_JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n")
    else:
        out.write(format_table(columns, [[_text(v) for v in row] for row in rows]) + "\n")
        out.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n")


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]], max_width: int = 60) -> str:
    """Aligned plain-text table; numbers right-aligned, long cells cut at `max_width`."""
    cells = [[_clip(str(h), max_width) for h in header]]
    cells += [[_clip("" if v is None else str(v), max_width) for v in row] for row in rows]
    numeric = [bool(rows) and all(_is_number(row[i]) for row in rows) for i in range(len(header))]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row):
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def _is_query_name(text: str) -> bool:
    return text.isidentifier() and text in sqlfiles.query_names()


def _param_pairs(pairs: list[str]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise sqlfiles.SqlError(f"--param needs NAME=VALUE, got {pair!r}")
        values[name.strip()] = value
    return values


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else type(error).__name__


def _fail(message: str, status: int) -> int:
    print(message, file=sys.stderr)
    return status


def _text(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, float):
        return round(value, 6)
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _percent(share: float | None) -> str:
    return "" if share is None else f"{100 * share:.1f}%"


def _fixed(value: float | None) -> str:
    return "" if value is None else f"{value:+.3f}"


def visible(text: str, keep: str = "") -> str:
    """`text` with every character a terminal would act on written as an escape: control
    characters (NUL, ESC, a carriage return ...) as \\xNN, bidirectional overrides and lone
    UTF-16 surrogates as \\uNNNN; the characters in `keep` stay as they are."""
    if text.isprintable() and not BIDI_CONTROLS.intersection(text):
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch in keep:
            out.append(ch)
        elif code < 0x20 or 0x7F <= code <= 0x9F:
            out.append(f"\\x{code:02x}")
        elif ch in BIDI_CONTROLS or 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _clip(text: str, width: int) -> str:
    text = visible(text.replace("\n", " "))
    return text if len(text) <= width else text[: width - 1] + "…"


def _is_number(text: Any) -> bool:
    if text is None or text == "" or isinstance(text, (int, float)):
        return True
    try:
        float(str(text).rstrip("%"))
        return True
    except ValueError:
        return False


if __name__ == "__main__":
    if sys.argv[1:2] == ["summary"]:
        sys.exit(summary_main(sys.argv[2:]))
    sys.exit(sql_main(sys.argv[1:]))
