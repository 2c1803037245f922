"""Unreadable Parquet files are left out of their table with a warning, never a failure
(connectors/query/duckdb_sql.py, `pulse sql`, `pulse summary`): a zero-byte file, a file cut in half,
and a file whose footer reads but whose data pages are garbage; the rest of the table is read.

    .venv/bin/pytest tests/test_corrupt_parquet.py -q
"""
import io
import os
import warnings

import duckdb
import pyarrow.parquet as pq
import pytest

from connectors.query import duckdb_sql
from connectors.sinks.parquet import to_table
from models.contracts import SCORED_POSTS, TABLES
from pipelines.cli import sql as sql_cli
from tests.test_sql import POSTS, post, ts, write_table

pytestmark = pytest.mark.integration


def cut_in_half(path):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def spoil_data_pages(path, column="text"):
    """Overwrite the middle of `column`'s compressed pages, leaving the footer intact."""
    meta = pq.read_metadata(path)
    index = meta.schema.names.index(column)
    chunk = meta.row_group(0).column(index)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(open(path, "rb").read())
    for i in range(start + chunk.total_compressed_size // 3, start + 2 * chunk.total_compressed_size // 3):
        data[i] = (i * 37 + 11) & 0xFF
    with open(path, "wb") as f:
        f.write(bytes(data))


def big_posts(prefix, n=200):
    """Posts with long, varied texts: compressed pages big enough to spoil in the middle."""
    return [dict(post(f"{prefix}{i}", "acme", ts(10, 5), "neutral", 0.0, 0.9),
                 text=" ".join(f"word{(i * 7919 + j * 104729) % 100003}" for j in range(40))) for i in range(n)]


@pytest.fixture
def spoiled_output(tmp_path):
    """scored_posts: the good POSTS in two files, plus a zero-byte file, a file cut in half and a
    file with garbage data pages (each of the last two holding posts of their own)."""
    out = str(tmp_path / "out")
    write_table(out, "scored_posts", POSTS)
    folder = os.path.join(out, "scored_posts", "2024-05-01")
    os.makedirs(folder)
    paths = {name: os.path.join(folder, f"{name}.parquet") for name in ("empty", "cut", "garbage")}
    open(paths["empty"], "wb").close()
    pq.write_table(to_table(big_posts("c", 50), SCORED_POSTS), paths["cut"], compression="zstd")
    cut_in_half(paths["cut"])
    pq.write_table(to_table(big_posts("g"), SCORED_POSTS), paths["garbage"], compression="zstd",
                   use_dictionary=False)
    spoil_data_pages(paths["garbage"])
    write_table(out, "dead_letters", [])  # no file: a typed empty table
    return out, paths


def test_the_spoiled_files_are_what_they_claim(spoiled_output):
    _, paths = spoiled_output
    pq.read_metadata(paths["garbage"])  # the footer reads...
    with pytest.raises(duckdb.Error, match="garbage.parquet"):  # ...the text pages do not
        duckdb.sql(f"SELECT sum(length(text)) FROM read_parquet('{paths['garbage']}')").fetchall()
    for name in ("empty", "cut"):
        with pytest.raises(Exception):
            pq.read_metadata(paths[name])


def test_files_whose_footer_fails_are_left_out_with_their_reason(spoiled_output):
    out, paths = spoiled_output
    con, skipped = duckdb_sql.connect_with_warnings(out)
    assert sorted(skipped) == sorted([
        duckdb_sql.SkippedFile(paths["empty"], "empty file (0 bytes)"),
        duckdb_sql.SkippedFile(paths["cut"], skipped[[s.path for s in skipped].index(paths["cut"])].reason)])
    assert "magic bytes" in dict(skipped)[paths["cut"]]
    assert all("\n" not in s.reason for s in skipped)
    # The rest of the table is read; the garbage file's footer is fine, so its rows count.
    assert con.execute("SELECT COUNT(*) FROM scored_posts").fetchone()[0] == len(POSTS) + 200
    assert con.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0] == 0
    assert duckdb_sql.last_skipped() == skipped
    con.close()


def test_connect_warns_once_per_skipped_file(spoiled_output):
    out, paths = spoiled_output
    with pytest.warns(duckdb_sql.UnreadableFileWarning) as caught:
        duckdb_sql.connect(out).close()
    messages = sorted(str(w.message) for w in caught if w.category is duckdb_sql.UnreadableFileWarning)
    assert len(messages) == 2
    assert messages[0].startswith(f"skipped unreadable Parquet file {paths['cut']}: ")
    assert messages[1] == f"skipped unreadable Parquet file {paths['empty']}: empty file (0 bytes)"


def test_garbage_data_pages_are_left_out_when_a_query_reads_them(spoiled_output):
    out, paths = spoiled_output
    columns, rows, skipped = duckdb_sql.query_with_warnings(
        out, "SELECT post_id, length(text) FROM scored_posts ORDER BY post_id")
    assert [r[0] for r in rows] == sorted(p["post_id"] for p in POSTS)
    garbage = [s for s in skipped if s.path == paths["garbage"]]
    assert len(garbage) == 1 and len(skipped) == 3
    assert "ZSTD" in garbage[0].reason or "Failed to read" in garbage[0].reason
    # Remembered: the next connection leaves it out from the start, before any query.
    con, skipped = duckdb_sql.connect_with_warnings(out)
    assert paths["garbage"] in {s.path for s in skipped}
    assert con.execute("SELECT COUNT(*) FROM scored_posts").fetchone()[0] == len(POSTS)
    con.close()


def test_footers_are_read_once_per_version_of_a_file(spoiled_output, monkeypatch):
    out, paths = spoiled_output
    duckdb_sql.connect_with_warnings(out)[0].close()
    reads = []
    real = pq.read_metadata
    monkeypatch.setattr(pq, "read_metadata", lambda path, *a, **k: reads.append(path) or real(path, *a, **k))
    duckdb_sql.connect_with_warnings(out)[0].close()
    assert reads == []  # nothing changed: no footer read again
    # The cut file is written again in full: a new size and time, so it is read once more, and now counts.
    pq.write_table(to_table(big_posts("c", 50), SCORED_POSTS), paths["cut"])
    con, skipped = duckdb_sql.connect_with_warnings(out)
    assert reads == [paths["cut"]]
    assert {s.path for s in skipped} == {paths["empty"]}
    assert con.execute("SELECT COUNT(*) FROM scored_posts WHERE post_id LIKE 'c%'").fetchone()[0] == 50
    con.close()


def test_a_table_whose_every_file_is_unreadable_is_empty_with_its_columns(tmp_path):
    folder = tmp_path / "alerts" / "2024-05-01"
    folder.mkdir(parents=True)
    (folder / "a.parquet").write_bytes(b"")
    (folder / "b.parquet").write_bytes(b"PAR1 not really")
    con, skipped = duckdb_sql.connect_with_warnings(str(tmp_path))
    assert len(skipped) == 2
    assert con.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == 0
    assert [r[0] for r in con.execute("DESCRIBE alerts").fetchall()] == [f.name for f in TABLES["alerts"]]
    con.close()


def test_a_file_gone_since_it_was_listed_is_no_warning(tmp_path):
    assert duckdb_sql.file_problem(str(tmp_path / "gone.parquet")) is duckdb_sql._GONE


def cli(main, argv, capsys):
    out = io.StringIO()
    status = main(argv, out=out)
    return status, out.getvalue(), capsys.readouterr().err


def test_pulse_sql_prints_one_warning_line_per_skipped_file(spoiled_output, capsys):
    out, paths = spoiled_output
    status, stdout, err = cli(sql_cli.sql_main, [
        "SELECT COUNT(*) AS n, MAX(length(text)) > 0 AS texts FROM scored_posts", "--output", out,
        "--format", "csv"], capsys)
    assert status == 0 and stdout.splitlines() == ["n,texts", f"{len(POSTS)},True"]
    lines = err.splitlines()
    assert len(lines) == 3 and "Traceback" not in err
    assert all(line.startswith("pulse sql: warning: skipped unreadable Parquet file ") for line in lines)
    assert {p for p in paths.values() if any(p + ":" in line for line in lines)} == set(paths.values())
    # A named query too.
    status, stdout, err = cli(sql_cli.sql_main, ["keyword_summary", "--output", out, "--format", "csv"], capsys)
    assert status == 0 and stdout.splitlines()[1].startswith("acme,")
    assert len(err.splitlines()) >= 2 and all("warning: skipped unreadable" in line for line in err.splitlines())


def test_pulse_summary_prints_one_warning_line_per_skipped_file(spoiled_output, capsys):
    out, paths = spoiled_output
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the summary reports skipped files itself, as lines
        status, stdout, err = cli(sql_cli.summary_main, ["--output", out], capsys)
    assert status == 0 and "sentiment-pulse summary" in stdout
    lines = err.splitlines()
    assert {line.split("Parquet file ", 1)[1].split(": ", 1)[0] for line in lines} >= {paths["empty"], paths["cut"]}
    assert all(line.startswith("pulse summary: warning: skipped unreadable Parquet file ") for line in lines)
