"""Drivers (connectors/query/queries/drivers.sql over the view post_terms) and incidents (views
incident_alerts, incidents) on DuckDB over Parquet tables; tests/test_dashboard_bigquery.py
checks that BigQuery gives the same.

A stream with a planted theme: 30 minutes of posts drawn from one vocabulary for two
keywords, then a window where a third of acme's posts also hold "lost luggage #lostluggage
@acmehelp 🧳". The planted terms rank first, ahead of a word seen once in the window and
never before (which a raw ratio would put first) and of words common everywhere.

    .venv/bin/pytest tests/test_drivers_incidents.py -q
"""
import datetime as dt
import random

import pytest

from connectors.query import duckdb_sql
from tests.test_sql import alert, post, write_table, ts

pytestmark = pytest.mark.integration

VOCABULARY = ("flight delayed again today waiting gate crew service seat coffee morning airport staff "
              "boarding phone battery weather rain music weekend friends dinner happy tired work").split()
PLANTED = ("lost", "luggage", "#lostluggage", "@acmehelp", "🧳")
WINDOW = (ts(12, 30), ts(12, 31))


def text(rng: random.Random, planted: bool) -> str:
    words = rng.sample(VOCABULARY, 6)
    if planted:
        words += ["lost", "my", "luggage", "#lostluggage", "@acmehelp", "🧳"]
        rng.shuffle(words)
    return " ".join(words)


def themed_posts() -> list[dict]:
    rng = random.Random(20)
    rows = []
    for minute in range(31):
        start = ts(12, 0) + dt.timedelta(minutes=minute)
        for keyword, per_minute in (("acme", 12), ("globex", 8)):
            for i in range(per_minute + (12 if minute == 30 and keyword == "acme" else 0)):
                planted = minute == 30 and keyword == "acme" and i % 3 == 0
                row = post(f"{keyword}-{minute}-{i}", keyword, start + dt.timedelta(seconds=i * 2), "negative", -0.5, 0.9)
                row["text"] = text(rng, planted) + (" zyzzyva" if minute == 30 and keyword == "acme" and i == 1 else "")
                rows.append(row)
    rows.append(dict(post("html", "acme", ts(12, 30, 59), "neutral", 0.0, 0.9),
                     text="AT&amp;T &quot;brilliant&quot; https://t.co/abc123 the and"))
    return rows


@pytest.fixture(scope="module")
def themed_output(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("themed") / "out")
    write_table(out, "scored_posts", themed_posts())
    write_table(out, "alerts", [alert(WINDOW[0], "acme", "negative_surge", 0.7, ts(12, 31))])
    return out


def drivers(out, keyword="acme", limit=10):
    columns, rows = duckdb_sql.run_query(out, "drivers", {"keyword": keyword, "window_start": WINDOW[0],
                                                          "window_end": WINDOW[1], "limit": limit})
    return [dict(zip(columns, row)) for row in rows]


def test_the_planted_terms_rank_first(themed_output):
    found = drivers(themed_output)
    assert {d["term"] for d in found[:len(PLANTED)]} == set(PLANTED)
    kinds = {d["term"]: d["term_kind"] for d in found}
    assert (kinds["#lostluggage"], kinds["@acmehelp"], kinds["🧳"], kinds["luggage"]) == (
        "hashtag", "mention", "emoji", "word")
    luggage = next(d for d in found if d["term"] == "luggage")
    assert (luggage["window_posts"], luggage["baseline_posts"]) == (8, 0)
    assert [d["zscore"] for d in found] == sorted((d["zscore"] for d in found), reverse=True)
    # A word once in the window and never before is not a driver ahead of the theme.
    ranks = {d["term"]: i for i, d in enumerate(drivers(themed_output, limit=1000))}
    assert ranks["zyzzyva"] > len(PLANTED)


def test_post_terms_leave_out_stop_words_urls_and_entities(themed_output):
    _, rows = duckdb_sql.query(themed_output, "SELECT term FROM post_terms WHERE post_id = 'html' ORDER BY term")
    assert [t for (t,) in rows] == ["brilliant"]


def test_all_keywords_drivers_and_an_empty_window(themed_output):
    assert {d["term"] for d in drivers(themed_output, keyword="*")[:len(PLANTED)]} == set(PLANTED)
    columns, rows = duckdb_sql.run_query(themed_output, "drivers", {"keyword": "nobody", "window_start": WINDOW[0],
                                                                    "window_end": WINDOW[1]})
    assert rows == []


INCIDENT_ALERTS = [
    # acme: 10:00 and 10:01 (consecutive), 10:03 after one quiet window (same incident), 10:10 (a new one)
    alert(ts(10, 0), "acme", "negative_surge", 0.7, ts(10, 1)),
    alert(ts(10, 1), "acme", "volume_spike", 30.0, ts(10, 2)),
    alert(ts(10, 3), "acme", "class_mix_drift", 0.4, ts(10, 4)),
    alert(ts(10, 10), "acme", "negative_surge", 0.6, ts(10, 11)),
    # '*' echoes acme at 10:02; '*' alone at 10:30; globex at 10:01
    alert(ts(10, 2), "*", "class_mix_drift", 0.2, ts(10, 3)),
    alert(ts(10, 30), "*", "oov_drift", 0.3, ts(10, 31)),
    alert(ts(10, 1), "globex", "negative_surge", 0.5, ts(10, 2)),
    # initech at 10:40, in the last window written: no quiet window after it yet
    alert(ts(10, 40), "initech", "volume_spike", 9.0, ts(10, 41)),
]


@pytest.fixture(scope="module")
def incident_output(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("incidents") / "out")
    rows = [dict(a, zscore=z) for a, z in zip(INCIDENT_ALERTS, (4.0, 5.5, 3.1, 3.3, 3.0, 3.2, 3.6, 3.0))]
    write_table(out, "alerts", rows)
    windows_end = {"window_start": ts(10, 40), "window_end": ts(10, 41), "keyword": "*", "lang": "*", "posts": 1,
                   "positive": 1, "neutral": 0, "negative": 0, "mean_score": 0.5, "mean_confidence": 0.9,
                   "low_confidence": 0, "oov_rate": 0.0, "unsupported": 0, "pane_index": 0,
                   "pane_timing": "ON_TIME", "model_version": "v1", "emitted_at": ts(10, 41)}
    write_table(out, "sentiment_windows", [windows_end], parts=1)
    return out


def test_consecutive_alerts_and_their_echo_are_one_incident(incident_output):
    columns, rows = duckdb_sql.query(incident_output, "SELECT * FROM incidents ORDER BY started_at, keyword")
    got = [dict(zip(columns, r)) for r in rows]
    by_start = {(i["keyword"], i["started_at"]): i for i in got}
    first = by_start[("acme", ts(10, 0))]
    assert (first["ended_at"], first["alerts"], first["echoes"]) == (ts(10, 4), 4, 1)
    assert (first["peak_at"], first["peak_kind"], first["peak_zscore"]) == (ts(10, 1), "volume_spike", 5.5)
    assert first["kinds"] == "class_mix_drift, negative_surge, volume_spike"
    assert first["incident_id"] == f"acme/{int(ts(10, 0).timestamp())}" and first["status"] == "closed"
    assert by_start[("acme", ts(10, 10))]["alerts"] == 1
    assert by_start[("*", ts(10, 30))]["alerts"] == 1
    # globex's alert at 10:01 is its own incident, and the '*' alert at 10:02 echoes it too.
    assert (by_start[("globex", ts(10, 1))]["alerts"], by_start[("globex", ts(10, 1))]["echoes"]) == (2, 1)
    assert sorted(by_start) == sorted([("acme", ts(10, 0)), ("acme", ts(10, 10)), ("globex", ts(10, 1)),
                                       ("*", ts(10, 30)), ("initech", ts(10, 40))])


def test_an_incident_is_open_until_a_quiet_window_follows_it(incident_output):
    _, rows = duckdb_sql.query(incident_output, "SELECT keyword, status FROM incidents ORDER BY started_at, keyword")
    assert rows == [("acme", "closed"), ("globex", "closed"), ("acme", "closed"), ("*", "closed"),
                    ("initech", "open")]
    _, rows = duckdb_sql.query(incident_output, "SELECT count(*) FROM incident_alerts")
    assert rows == [(9,)]  # 8 alerts, the '*' echo in two incidents


def test_bigquery_gives_the_same_drivers_and_incidents(bq_emulator, themed_output, incident_output, monkeypatch):
    """The same rows in the BigQuery emulator: the same drivers (planted terms first) and incidents."""
    import uuid

    from connectors.sinks import bigquery as cb
    from dashboard import data
    from tests.fixtures.bigquery import PROJECT
    from tests.test_dashboard_bigquery import normal

    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", bq_emulator.split("//", 1)[1])
    client = cb.bigquery_client(PROJECT, bq_emulator)
    for out, tables in ((themed_output, ("scored_posts", "alerts")), (incident_output, ("alerts", "sentiment_windows"))):
        dataset = f"drivers_{uuid.uuid4().hex[:8]}"
        cb.ensure_tables(f"{PROJECT}:{dataset}", endpoint=bq_emulator)
        for table in tables:
            columns, rows = duckdb_sql.query(out, f"SELECT * FROM {table}")
            errors = client.insert_rows_json(f"{PROJECT}.{dataset}.{table}", [
                cb.to_bq_row(table, dict(zip(columns, r)), "STREAMING_INSERTS") for r in rows])
            assert not errors, errors
        bq, local = data.open_source(f"{PROJECT}:{dataset}"), data.open_source(out)
        if out == themed_output:
            for keyword in ("acme", "*"):
                got = data.drivers(bq, keyword, *WINDOW, limit=30)
                assert normal(got) == normal(data.drivers(local, keyword, *WINDOW, limit=30))
                assert set(got["term"].head(len(PLANTED))) == set(PLANTED)
        else:
            span = (ts(9, 0), ts(11, 0))
            got = data.incidents(bq, "*", *span)
            assert len(got) == 5 and normal(got) == normal(data.incidents(local, "*", *span))
            ids = got["incident_id"].tolist()
            assert normal(data.incident_alerts(bq, ids)) == normal(data.incident_alerts(local, ids))
        local.close()


def test_pulse_summary_lists_incidents_with_their_drivers(themed_output, capsys):
    import io

    from pipelines.cli import sql as sql_cli

    out = io.StringIO()
    assert sql_cli.summary_main(["--output", themed_output], out=out) == 0
    lines = out.getvalue().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("incidents: 1 "))
    assert lines[at + 1].split() == ["acme", "2024-05-01", "12:30-12:31", "UTC", "negative_surge", "peak", "z", "3.5",
                                     "at", "12:30", "1", "alert", "open"]
    drivers = lines[at + 2].removeprefix("    drivers: ").split(", ")
    assert {d.split(" (")[0] for d in drivers} == set(PLANTED) and "luggage (8 vs 0)" in drivers
