"""Every view and query in sql/ on DuckDB, over Parquet files written here with pyarrow in
the contract schema (connectors/duckdb_sql, connectors/sqlfiles, pipelines/sql_cli).

    .venv/bin/pytest tests/test_sql.py -q
"""
import csv
import datetime as dt
import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors import duckdb_sql, sqlfiles
from models.contracts import TABLES
from pipelines import sql_cli

pytestmark = pytest.mark.integration

UTC = dt.timezone.utc
ARROW_TYPES = {
    "STRING": pa.string(), "INT64": pa.int64(), "FLOAT64": pa.float64(), "BOOL": pa.bool_(),
    "TIMESTAMP": pa.timestamp("us", tz="UTC"), "BYTES": pa.binary(),
}


def ts(hh, mm, ss=0):
    return dt.datetime(2024, 5, 1, hh, mm, ss, tzinfo=UTC)


def arrow_schema(table):
    return pa.schema([
        pa.field(f.name, pa.list_(ARROW_TYPES[f.type]) if f.mode == "REPEATED" else ARROW_TYPES[f.type],
                 nullable=f.mode != "REQUIRED")
        for f in TABLES[table]])


def write_table(output_dir, table, rows, parts=2):
    """Rows (contract dicts) -> `parts` Parquet files in sub-folders, as a sharded sink writes them."""
    schema = arrow_schema(table)
    for i in range(parts):
        chunk = rows[i::parts]
        if chunk:
            folder = os.path.join(output_dir, table, f"shard-{i}")
            os.makedirs(folder, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(chunk, schema=schema), os.path.join(folder, f"part-{i}.parquet"))


def post(post_id, keyword, created_at, label, score, confidence, oov=1, version="v1", lang="en"):
    return {
        "post_id": post_id, "keyword": keyword, "lang": lang, "author_id": "a" + post_id,
        "created_at": created_at, "text": f"text of {post_id}", "clean_text": f"text of {post_id}",
        "label": label, "score": score, "stars": None, "confidence": confidence,
        "token_count": 10, "oov_count": oov, "model_version": version, "processed_at": ts(12, 0),
    }


POSTS = [
    post("p1", "acme", ts(10, 0, 10), "negative", -0.9, 0.9),
    post("p2", "acme", ts(10, 0, 20), "negative", -0.5, 0.7),
    post("p3", "acme", ts(10, 0, 50), "positive", 0.8, 0.95),
    post("p4", "acme", ts(10, 30), "negative", -0.3, 0.5),
    post("p5", "acme", ts(11, 5), "negative", -0.7, 0.8),
    post("p6", "acme", ts(11, 10), "neutral", 0.0, 0.4, oov=3),
    post("g1", "globex", ts(10, 0, 30), "positive", 0.6, 0.9),
    post("g2", "globex", ts(10, 20), "positive", 0.9, 0.99),
]


def window(start, keyword, lang, pane_index, timing, posts, negative, positive, emitted):
    return {
        "window_start": start, "window_end": start + dt.timedelta(seconds=60), "keyword": keyword,
        "lang": lang, "posts": posts, "positive": positive, "neutral": posts - negative - positive,
        "negative": negative, "mean_score": 0.0, "mean_confidence": 0.8, "low_confidence": 0,
        "oov_rate": 0.1, "pane_index": pane_index, "pane_timing": timing, "model_version": "v1",
        "emitted_at": emitted,
    }


WINDOWS = [
    window(ts(10, 0), "acme", "*", 0, "EARLY", 1, 1, 0, ts(10, 0, 15)),
    window(ts(10, 0), "acme", "*", 1, "ON_TIME", 3, 2, 1, ts(10, 1)),
    window(ts(10, 0), "acme", "en", 0, "ON_TIME", 3, 2, 1, ts(10, 1)),
    window(ts(10, 0), "globex", "*", 0, "ON_TIME", 1, 0, 1, ts(10, 1)),
    # Disagrees with scored_posts (which holds one post in this window): window_consistency finds it.
    window(ts(10, 20), "globex", "*", 0, "ON_TIME", 2, 0, 2, ts(10, 21)),
]


def alert(start, keyword, kind, value, emitted):
    return {
        "window_start": start, "window_end": start + dt.timedelta(seconds=60), "keyword": keyword,
        "kind": kind, "value": value, "baseline": 0.2, "zscore": 3.5,
        "sample_post_ids": ["p1", "p2"], "emitted_at": emitted,
    }


ALERTS = [
    alert(ts(10, 0), "acme", "negative_surge", 0.5, ts(10, 1)),
    alert(ts(10, 0), "acme", "negative_surge", 0.6667, ts(10, 5)),  # re-emitted by a late pane
    alert(ts(11, 5), "acme", "volume_spike", 4.0, ts(11, 6)),
]

DEAD = [
    {"stage": "parse", "reason": "invalid_json", "payload": b"{not json", "attributes": "{}", "received_at": ts(10, 1)},
    {"stage": "parse", "reason": "invalid_json", "payload": b"\xff", "attributes": None, "received_at": ts(10, 2)},
    {"stage": "clean", "reason": "empty_text", "payload": b'{"id": "9"}', "attributes": "{}", "received_at": ts(10, 3)},
]


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("out") / ".hidden-parent" / "out")  # a dot-folder above is fine
    write_table(out, "scored_posts", POSTS)
    write_table(out, "sentiment_windows", WINDOWS)
    write_table(out, "alerts", ALERTS)
    write_table(out, "review_queue", [p for p in POSTS if p["confidence"] < 0.6], parts=1)
    write_table(out, "dead_letters", DEAD)
    # A file a Beam sink is still staging must not be read.
    os.makedirs(os.path.join(out, "scored_posts", ".temp-beam-123"))
    with open(os.path.join(out, "scored_posts", ".temp-beam-123", "x.parquet"), "wb") as f:
        f.write(b"partial")
    with open(os.path.join(out, "scored_posts", "shard-0", ".tmp-0a1b.parquet"), "wb") as f:
        f.write(b"partial")
    return out


def run(output_dir, name, **params):
    columns, rows = duckdb_sql.run_query(output_dir, name, params)
    return [dict(zip(columns, row)) for row in rows]


def test_tables_read_back_all_rows_with_contract_types(output_dir):
    con = duckdb_sql.connect(output_dir)
    for table, rows in [("scored_posts", POSTS), ("alerts", ALERTS), ("dead_letters", DEAD)]:
        assert con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == len(rows)
        described = con.execute(f"DESCRIBE {table}").fetchall()
        assert [(r[0], r[1]) for r in described] == [
            (f.name, duckdb_sql.duckdb_type(f).replace("TIMESTAMPTZ", "TIMESTAMP WITH TIME ZONE"))
            for f in TABLES[table]]
    payloads = sorted(r[0] for r in con.execute("SELECT payload FROM dead_letters").fetchall())
    assert payloads == sorted(d["payload"] for d in DEAD)
    assert con.execute("SELECT created_at FROM scored_posts WHERE post_id = 'p1'").fetchone()[0] == ts(10, 0, 10)
    assert con.execute("SELECT current_setting('TimeZone')").fetchone()[0] == "UTC"


def test_empty_output_gives_typed_empty_views(tmp_path):
    write_table(str(tmp_path), "scored_posts", POSTS[:1])
    con = duckdb_sql.connect(str(tmp_path))
    for table in TABLES:
        types = [r[1] for r in con.execute(f"DESCRIBE {table}").fetchall()]
        assert len(types) == len(TABLES[table])
    assert con.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == 0
    assert dict((r[0], r[1]) for r in con.execute("DESCRIBE alerts").fetchall())["sample_post_ids"] == "VARCHAR[]"
    assert con.execute("SELECT COUNT(*) FROM sentiment_windows_latest").fetchone()[0] == 0
    assert run(str(tmp_path), "keyword_summary") == [{
        "keyword": "acme", "posts": 1, "negative": 1, "neutral": 0, "positive": 0,
        "negative_share": 1.0, "mean_score": -0.9, "alerts": 0, "review": 0}]
    assert run(str(tmp_path), "dead_letters_by_reason") == []


def test_missing_output_dir_is_a_clear_error(tmp_path):
    with pytest.raises(duckdb_sql.OutputNotFound, match="no output directory"):
        duckdb_sql.connect(str(tmp_path / "nope"))


def test_sentiment_windows_latest_keeps_last_pane(output_dir):
    _, rows = duckdb_sql.query(output_dir, "SELECT keyword, lang, pane_index, pane_timing, posts "
                                           "FROM sentiment_windows_latest ORDER BY window_start, keyword, lang")
    assert rows == [("acme", "*", 1, "ON_TIME", 3), ("acme", "en", 0, "ON_TIME", 3),
                    ("globex", "*", 0, "ON_TIME", 1), ("globex", "*", 0, "ON_TIME", 2)]


def test_negative_share_hourly(output_dir):
    rows = run(output_dir, "negative_share_hourly")
    assert [(r["keyword"], r["hour_start"], r["posts"], r["negative"], r["negative_share"]) for r in rows] == [
        ("acme", ts(10, 0), 4, 3, 0.75), ("globex", ts(10, 0), 2, 0, 0.0), ("acme", ts(11, 0), 2, 1, 0.5)]
    assert [r["hour_start"] for r in run(output_dir, "negative_share_hourly", since="2024-05-01T11:00:00Z",
                                         keyword="acme")] == [ts(11, 0)]


def test_top_negative_posts(output_dir):
    rows = run(output_dir, "top_negative_posts", window_start=ts(10, 0), window_end=ts(11, 0),
               keyword="acme", limit=2)
    assert [(r["post_id"], r["score"]) for r in rows] == [("p1", -0.9), ("p2", -0.5)]
    rows = run(output_dir, "top_negative_posts", window_start="2024-05-01T10:00:00Z",
               window_end="2024-05-01T12:00:00+00:00")
    assert [r["post_id"] for r in rows] == ["p1", "p5", "p2", "p4"]


def test_alert_history_one_row_per_alert_newest_first(output_dir):
    rows = run(output_dir, "alert_history")
    assert [(r["window_start"], r["kind"], r["value"], r["sample_posts"]) for r in rows] == [
        (ts(11, 5), "volume_spike", 4.0, 2), (ts(10, 0), "negative_surge", 0.6667, 2)]
    assert run(output_dir, "alert_history", keyword="globex") == []
    assert len(run(output_dir, "alert_history", since=ts(11, 0))) == 1


def test_model_confidence(output_dir):
    rows = run(output_dir, "model_confidence")
    assert [(r["model_version"], r["hour_start"], r["posts"], r["mean_confidence"],
             r["low_confidence_share"], r["oov_rate"]) for r in rows] == [
        ("v1", ts(10, 0), 6, 0.8233, 0.1667, 0.1), ("v1", ts(11, 0), 2, 0.6, 0.5, 0.2)]
    strict = run(output_dir, "model_confidence", low_confidence=0.85)
    assert [r["low_confidence_share"] for r in strict] == [0.3333, 1.0]


def test_keyword_summary(output_dir):
    assert run(output_dir, "keyword_summary") == [
        {"keyword": "acme", "posts": 6, "negative": 4, "neutral": 1, "positive": 1,
         "negative_share": 0.6667, "mean_score": -0.2667, "alerts": 2, "review": 2},
        {"keyword": "globex", "posts": 2, "negative": 0, "neutral": 0, "positive": 2,
         "negative_share": 0.0, "mean_score": 0.75, "alerts": 0, "review": 0}]


def test_dead_letters_by_reason(output_dir):
    rows = run(output_dir, "dead_letters_by_reason")
    assert [(r["stage"], r["reason"], r["messages"]) for r in rows] == [
        ("parse", "invalid_json", 2), ("clean", "empty_text", 1)]


def test_window_consistency_finds_only_the_disagreeing_window(output_dir):
    rows = run(output_dir, "window_consistency")
    assert [(r["window_start"], r["keyword"], r["window_posts"], r["table_posts"]) for r in rows] == [
        (ts(10, 20), "globex", 2, 1)]


def test_every_query_file_is_covered_and_renders_for_both_dialects():
    covered = {"negative_share_hourly", "top_negative_posts", "alert_history", "model_confidence",
               "keyword_summary", "dead_letters_by_reason", "window_consistency"}
    assert set(sqlfiles.query_names()) == covered
    for name in covered:
        bq = sqlfiles.load_query(name).render("bigquery", "my-proj:pulse")
        assert "`my-proj`.`pulse`." in bq and "${dataset}" not in bq
        duck = sqlfiles.load_query(name).render("duckdb")
        assert "main." in duck and "@" not in duck.split("\n", 1)[1].replace("-- $param", "")
    views = sqlfiles.view_statements("bigquery", "pulse")
    assert [v.split("VIEW ")[1].split(" ")[0] for v in views] == [
        "`pulse`.sentiment_windows_latest", "`pulse`.alerts_latest"]


def test_parameter_errors_name_the_parameter():
    q = sqlfiles.load_query("top_negative_posts")
    with pytest.raises(sqlfiles.SqlError, match="needs --param window_start"):
        q.bind({})
    with pytest.raises(sqlfiles.SqlError, match="'limit': 'ten' is not a INT64"):
        q.bind({"window_start": ts(1, 0), "window_end": ts(2, 0), "limit": "ten"})
    with pytest.raises(sqlfiles.SqlError, match="no parameter 'colour'"):
        q.bind({"colour": "red"})
    with pytest.raises(sqlfiles.SqlError, match="no query named 'nope'"):
        sqlfiles.load_query("nope")
    with pytest.raises(sqlfiles.SqlError, match="not a BigQuery dataset"):
        sqlfiles.render("SELECT 1", "bigquery", "a:b:c")


# ---- pulse sql / pulse summary -----------------------------------------------------------


def cli(main, argv, capsys):
    out = io.StringIO()
    status = main(argv, out=out)
    return status, out.getvalue(), capsys.readouterr().err


def test_pulse_sql_formats(output_dir, capsys):
    sql = "SELECT keyword, COUNT(*) AS posts FROM scored_posts GROUP BY 1 ORDER BY 1"
    status, out, _ = cli(sql_cli.sql_main, [sql, "--output", output_dir, "--format", "csv"], capsys)
    assert status == 0 and list(csv.reader(io.StringIO(out))) == [["keyword", "posts"], ["acme", "6"], ["globex", "2"]]
    status, out, _ = cli(sql_cli.sql_main, [sql, "--output", output_dir, "--format", "json"], capsys)
    assert json.loads(out) == [{"keyword": "acme", "posts": 6}, {"keyword": "globex", "posts": 2}]
    status, out, _ = cli(sql_cli.sql_main, [sql, "--output", output_dir], capsys)
    assert out.splitlines()[0].split() == ["keyword", "posts"] and "(2 rows)" in out


def test_pulse_sql_named_query_with_params(output_dir, capsys):
    status, out, err = cli(sql_cli.sql_main, [
        "top_negative_posts", "--output", output_dir, "--format", "json",
        "--param", "window_start=2024-05-01T10:00:00Z", "--param", "window_end=2024-05-01T11:00:00Z",
        "--param", "limit=1"], capsys)
    assert status == 0, err
    assert [r["post_id"] for r in json.loads(out)] == ["p1"]
    assert json.loads(out)[0]["created_at"] == "2024-05-01T10:00:10+00:00"


@pytest.mark.parametrize("argv, status, message", [
    (["SELEC 1"], 1, "Parser Error: syntax error"),
    (["SELECT * FROM no_such_table"], 1, "Catalog Error"),
    (["top_negative_posts"], 2, "needs --param window_start"),
    (["top_negative_posts", "--param", "limit"], 2, "--param needs NAME=VALUE"),
    (["SELECT 1", "--param", "a=1"], 2, "named queries only"),
])
def test_pulse_sql_user_mistakes_are_one_line(output_dir, capsys, argv, status, message):
    got, out, err = cli(sql_cli.sql_main, argv + ["--output", output_dir], capsys)
    assert got == status and out == ""
    assert err.startswith("pulse sql: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_pulse_sql_missing_output(tmp_path, capsys):
    status, _, err = cli(sql_cli.sql_main, ["SELECT 1", "--output", str(tmp_path / "nope")], capsys)
    assert status == 2 and err.startswith("pulse sql: no output directory") and err.count("\n") == 1


def test_pulse_sql_list(capsys):
    status, out, _ = cli(sql_cli.sql_main, ["--list"], capsys)
    assert status == 0 and "top_negative_posts:" in out and "--param window_start=<TIMESTAMP>" in out


def test_pulse_summary(output_dir, capsys):
    status, out, _ = cli(sql_cli.summary_main, ["--output", output_dir], capsys)
    assert status == 0
    lines = out.splitlines()
    table = {line.split()[0]: line.split() for line in lines if line.split()[:1] in (["acme"], ["globex"], ["TOTAL"])}
    assert table["acme"] == ["acme", "6", "66.7%", "-0.267", "2", "2"]
    assert table["globex"] == ["globex", "2", "0.0%", "+0.750", "0", "0"]
    assert table["TOTAL"] == ["TOTAL", "8", "50.0%", "2", "2"]
    assert "windows (final panes): 4" in out
    assert "dead letters: 3" in out
    assert any(line.split() == ["parse", "invalid_json", "2"] for line in lines)


def test_pulse_summary_missing_output(tmp_path, capsys):
    status, out, err = cli(sql_cli.summary_main, ["--output", str(tmp_path / "nope")], capsys)
    assert status == 2 and out == "" and err.startswith("pulse summary: no output directory")
