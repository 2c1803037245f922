"""connectors/sinks/bigquery.py: the pure row/schema functions, then Beam's WriteToBigQuery
(STREAMING_INSERTS) against a BigQuery emulator on loopback (tests/fixtures/bigquery.py),
read back through google-cloud-bigquery, and the connectors/query/ queries run on the emulator with the
same answers as on DuckDB.

    .venv/bin/pytest tests/test_bigquery.py -q
"""
import base64
import datetime as dt
import json
import uuid

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils.timestamp import Timestamp

from connectors.sinks import bigquery as cb
from connectors.query import duckdb_sql, sqlfiles
from models.contracts import JOB_TABLES, PARTITION_COLUMN, TABLES
from tests.fixtures.bigquery import PROJECT
from tests.test_sql import ALERTS, DEAD, PANE_ORDER_LATEST, PANE_ORDER_ROWS, POSTS, WINDOWS, ts, write_table

UTC = dt.timezone.utc
ALERT = dict(ALERTS[0])


# ---- pure functions ---------------------------------------------------------------------


def test_bq_schema_matches_contract():
    for table, fields in TABLES.items():
        schema = cb.bq_schema(table)["fields"]
        assert [(f["name"], f["type"], f["mode"]) for f in schema] == [(f.name, f.type, f.mode) for f in fields]


def test_table_parameters_partition_on_event_time_and_cluster_by_keyword():
    assert cb.table_parameters("scored_posts") == {
        "timePartitioning": {"type": "DAY", "field": "created_at"}, "clustering": {"fields": ["keyword"]}}
    assert cb.table_parameters("dead_letters") == {"timePartitioning": {"type": "DAY", "field": "received_at"}}
    for table in TABLES:
        assert cb.table_parameters(table)["timePartitioning"]["field"] == PARTITION_COLUMN[table]


def test_to_bq_row_json_methods():
    row = cb.to_bq_row("dead_letters", DEAD[0], "STREAMING_INSERTS")
    assert row == {"stage": "parse", "reason": "invalid_json", "payload": base64.b64encode(b"{not json").decode(),
                   "attributes": "{}", "received_at": "2024-05-01T10:01:00.000000Z", "message_id": None}
    assert cb.to_bq_row("alerts", ALERT, "FILE_LOADS")["sample_post_ids"] == ["p1", "p2"]
    assert cb.to_bq_row("alerts", dict(ALERT, sample_post_ids=None), "FILE_LOADS")["sample_post_ids"] == []
    other_tz = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert cb.to_bq_row("alerts", dict(ALERT, emitted_at=other_tz), "STREAMING_INSERTS")["emitted_at"] == \
        "2024-05-01T10:00:00.000000Z"


def test_to_bq_row_storage_write_api_keeps_bytes_and_uses_beam_timestamps():
    row = cb.to_bq_row("dead_letters", DEAD[1], "STORAGE_WRITE_API")
    assert row["payload"] == b"\xff"
    assert row["received_at"] == Timestamp.from_utc_datetime(ts(10, 2))


@pytest.mark.parametrize("change, reason", [
    ({"keyword": None}, "keyword: required field is missing"),
    ({"colour": "red"}, "unknown field 'colour' for table alerts"),
    ({"value": "high"}, "value: expected FLOAT64, got str"),
    ({"sample_post_ids": "p1"}, "sample_post_ids: expected a list of STRING, got str"),
    ({"emitted_at": dt.datetime(2024, 5, 1)}, "emitted_at: expected a timezone-aware datetime"),
])
def test_to_bq_row_rejects_contract_breaks_with_a_reason(change, reason):
    with pytest.raises(cb.RowError, match=reason.replace("(", r"\(")):
        cb.to_bq_row("alerts", dict(ALERT, **change), "STREAMING_INSERTS")


def test_dead_letter_is_a_contract_row_with_the_row_as_payload():
    dl = cb.dead_letter("alerts", dict(ALERT, keyword=None), "keyword: required field is missing", now=ts(12, 0))
    assert cb.to_bq_row("dead_letters", dl, "STREAMING_INSERTS")  # valid by its own contract
    assert dl["stage"] == "write" and dl["reason"] == "bigquery alerts: keyword: required field is missing"
    assert json.loads(dl["payload"])["window_start"] == "2024-05-01T10:00:00+00:00"
    assert json.loads(dl["attributes"]) == {"table": "alerts"}


def test_refusal_reason_formats():
    assert cb.refusal_reason([{"reason": "invalid", "location": "kind", "message": "bad int"}]) == \
        "invalid: kind: bad int"
    assert cb.refusal_reason("Row too large\nmore") == "Row too large"
    assert cb.refusal_reason([]) == "refused"


def test_table_spec_and_method_validation():
    assert cb.table_spec("my-proj:pulse", "alerts") == "my-proj:pulse.alerts"
    assert cb.table_spec("my-proj.pulse", "alerts") == "my-proj:pulse.alerts"
    assert cb.table_spec("pulse", "alerts", "p") == "p:pulse.alerts"
    assert cb.table_spec("pulse", "alerts") == "pulse.alerts"
    with pytest.raises(ValueError, match="--bq_method must be one of"):
        cb.WriteBigQueryTables("p:d", method="CARRIER_PIGEON")


@pytest.mark.parametrize("global_window, reaches_the_write", [(False, ["early"]), (True, ["early", "late"])])
def test_why_rows_enter_the_write_in_the_global_window(global_window, reaches_the_write):
    """Beam's ReshufflePerKey (inside WriteToBigQuery's STREAMING_INSERTS) on the DirectRunner, the
    engine `pulse run` uses, drops a row behind the watermark that is still in its event-time window,
    within its allowed lateness, without an error; in the global window it gets through. When Beam
    fixes it the first case fails, and WriteBigQueryTables' `<Table>RowsToGlobalWindow` may go."""
    from apache_beam.options.pipeline_options import StandardOptions
    from apache_beam.testing.test_stream import TestStream
    from apache_beam.testing.util import assert_that, equal_to
    from apache_beam.transforms import trigger, window
    from apache_beam.transforms.util import ReshufflePerKey

    from pipelines.direct_runner import install_direct_runner_fixes

    install_direct_runner_fixes()
    stream = (TestStream().advance_watermark_to(0)
              .add_elements([window.TimestampedValue("early", 10)])
              .advance_watermark_to(130)
              .add_elements([window.TimestampedValue("late", 20)])  # window [0, 60): 70 s late, 600 s allowed
              .advance_watermark_to_infinity())
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as p:
        rows = (p | stream
                | beam.WindowInto(window.FixedWindows(60), trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                                  allowed_lateness=600, accumulation_mode=trigger.AccumulationMode.DISCARDING))
        if global_window:
            rows = rows | "ToGlobalWindow" >> beam.WindowInto(window.GlobalWindows())
        written = (rows | beam.Map(lambda row: (0, row)) | ReshufflePerKey() | beam.Values()
                   | "ToGlobal" >> beam.WindowInto(window.GlobalWindows()))
        assert_that(written, equal_to(reaches_the_write), label="ReachesTheWrite")


# ---- against the emulator ---------------------------------------------------------------


def write_with_beam(endpoint, dataset, tables):
    """Run a batch pipeline writing `tables` ({name: rows}) -> the pipeline result."""
    p = beam.Pipeline(options=PipelineOptions(["--project", PROJECT]))
    pcolls = {name: p | f"Create{name}" >> beam.Create(rows) for name, rows in tables.items()}
    pcolls | "WriteTables" >> cb.WriteBigQueryTables(f"{PROJECT}:{dataset}", method="STREAMING_INSERTS",
                                                      endpoint=endpoint)
    result = p.run()
    result.wait_until_finish()
    return result


def counter(result, name):
    found = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    return sum(c.committed for c in found)


def fetch(client, dataset, table, order_by):
    return [dict(r) for r in client.query(f"SELECT * FROM `{PROJECT}.{dataset}.{table}` ORDER BY {order_by}").result()]


@pytest.mark.integration
def test_beam_writes_all_tables_and_creates_them_partitioned(bq_emulator, bq_client):
    dataset = f"pulse_{uuid.uuid4().hex[:8]}"
    bq_client.create_dataset(dataset)
    broken = dict(POSTS[0], post_id="broken", text=None)  # text is REQUIRED
    result = write_with_beam(bq_emulator, dataset, {
        "scored_posts": POSTS + [broken], "sentiment_windows": WINDOWS, "alerts": ALERTS,
        "review_queue": POSTS[3:4], "dead_letters": DEAD})

    for table in JOB_TABLES:  # created by WriteToBigQuery with the contract schema and our parameters
        t = bq_client.get_table(f"{PROJECT}.{dataset}.{table}")
        assert [(f.name, f.field_type, f.mode) for f in t.schema] == [(f.name, f.type, f.mode) for f in TABLES[table]]
        assert (t.time_partitioning.type_, t.time_partitioning.field) == ("DAY", PARTITION_COLUMN[table])
        assert t.clustering_fields == (["keyword"] if table != "dead_letters" else None)

    assert fetch(bq_client, dataset, "scored_posts", "post_id") == sorted(POSTS, key=lambda r: r["post_id"])
    assert fetch(bq_client, dataset, "alerts", "emitted_at") == ALERTS
    assert len(fetch(bq_client, dataset, "sentiment_windows", "emitted_at")) == len(WINDOWS)
    dead = fetch(bq_client, dataset, "dead_letters", "received_at")
    assert [(d["stage"], d["payload"]) for d in dead if d["stage"] != "write"] == [
        (d["stage"], d["payload"]) for d in DEAD]
    [write] = [d for d in dead if d["stage"] == "write"]
    assert write["reason"] == "bigquery scored_posts: text: required field is missing"
    assert json.loads(write["payload"])["post_id"] == "broken"
    assert counter(result, "bigquery_invalid_rows") == 1


@pytest.mark.integration
def test_rows_bigquery_refuses_become_dead_letters_with_its_reason(bq_emulator, bq_client):
    from google.cloud import bigquery

    dataset = f"drift_{uuid.uuid4().hex[:8]}"
    bq_client.create_dataset(dataset)
    # Schema drift: someone changed alerts.kind to INT64. Our rows pass the contract check,
    # so it is BigQuery (the emulator) that refuses them.
    drifted = [bigquery.SchemaField(f["name"], "INT64" if f["name"] == "kind" else f["type"], mode=f["mode"])
               for f in cb.bq_schema("alerts")["fields"]]
    bq_client.create_table(bigquery.Table(f"{PROJECT}.{dataset}.alerts", schema=drifted))
    result = write_with_beam(bq_emulator, dataset, {"alerts": ALERTS[:1]})

    assert fetch(bq_client, dataset, "alerts", "emitted_at") == []
    [dead] = fetch(bq_client, dataset, "dead_letters", "received_at")
    assert dead["stage"] == "write"
    assert dead["reason"].startswith("bigquery alerts: invalid: ")  # BigQuery's reason code, then its message
    assert json.loads(dead["payload"])["keyword"] == "acme"
    assert counter(result, "bigquery_refused_rows") == 1


@pytest.mark.integration
def test_ensure_tables_creates_tables_and_views(bq_emulator, bq_client):
    dataset = f"init_{uuid.uuid4().hex[:8]}"
    ids = cb.ensure_tables(f"{PROJECT}:{dataset}", endpoint=bq_emulator)
    assert ids == [f"{PROJECT}.{dataset}.{t}" for t in TABLES]
    assert cb.ensure_tables(f"{PROJECT}:{dataset}", endpoint=bq_emulator) == ids  # idempotent
    t = bq_client.get_table(f"{PROJECT}.{dataset}.sentiment_windows")
    assert (t.time_partitioning.field, t.clustering_fields) == ("window_start", ["keyword"])
    for view in sqlfiles.view_names():
        assert bq_client.get_table(f"{PROJECT}.{dataset}.{view}").table_type == "VIEW"


QUERY_PARAMS = {
    "top_negative_posts": {"window_start": ts(10, 0), "window_end": ts(12, 0)},
    "negative_share_hourly": {"keyword": "acme"},
    "alert_history": {"since": ts(9, 0)},
}


@pytest.mark.integration
# `drivers` needs posts with more than one term (these rows all read "text of <id>"): its parity with
# BigQuery is tested on a themed stream in tests/test_drivers_incidents.py.
@pytest.mark.parametrize("name", [n for n in sqlfiles.query_names() if n != "drivers"])
def test_every_query_gives_the_same_answer_on_bigquery_and_duckdb(name, bq_emulator, bq_client, tmp_path,
                                                                  bq_dataset_with_rows):
    from google.cloud import bigquery

    q = sqlfiles.load_query(name)
    values = q.bind(QUERY_PARAMS.get(name, {}))
    types = {p.name: p.type for p in q.params}
    config = bigquery.QueryJobConfig(query_parameters=[
        bigquery.ScalarQueryParameter(k, types[k], v) for k, v in values.items()])
    job = bq_client.query(q.render("bigquery", f"{PROJECT}:{bq_dataset_with_rows}"), job_config=config)
    on_bigquery = [tuple(r.values()) for r in job.result()]

    write_table(str(tmp_path), "scored_posts", POSTS)
    write_table(str(tmp_path), "sentiment_windows", WINDOWS)
    write_table(str(tmp_path), "alerts", ALERTS)
    write_table(str(tmp_path), "review_queue", [p for p in POSTS if p["confidence"] < 0.6])
    write_table(str(tmp_path), "dead_letters", DEAD)
    _, on_duckdb = duckdb_sql.run_query(str(tmp_path), name, values)
    assert on_duckdb, f"{name}: the data should give rows"
    assert on_bigquery == on_duckdb


@pytest.mark.integration
def test_sentiment_windows_latest_orders_panes_by_index_within_a_run_on_bigquery(bq_emulator, bq_client):
    """The panes of tests/test_sql.py whose emitted_at ties with or contradicts pane_index, and reruns:
    the same latest pane on BigQuery as on DuckDB."""
    dataset = f"panes_{uuid.uuid4().hex[:8]}"
    cb.ensure_tables(f"{PROJECT}:{dataset}", endpoint=bq_emulator)
    errors = bq_client.insert_rows_json(f"{PROJECT}.{dataset}.sentiment_windows",
                                        [cb.to_bq_row("sentiment_windows", r, "STREAMING_INSERTS") for r in PANE_ORDER_ROWS])
    assert not errors, errors
    rows = bq_client.query(f"SELECT keyword, pane_index, posts, emitted_at FROM `{PROJECT}.{dataset}.sentiment_windows_latest`")
    assert {r["keyword"]: (r["pane_index"], r["posts"], r["emitted_at"]) for r in rows.result()} == PANE_ORDER_LATEST


@pytest.fixture(scope="module")
def bq_dataset_with_rows(bq_emulator):
    """The rows of tests/test_sql.py in a fresh emulator dataset with the views."""
    client = cb.bigquery_client(PROJECT, bq_emulator)
    dataset = f"sql_{uuid.uuid4().hex[:8]}"
    cb.ensure_tables(f"{PROJECT}:{dataset}", endpoint=bq_emulator)
    rows = {"scored_posts": POSTS, "sentiment_windows": WINDOWS, "alerts": ALERTS,
            "review_queue": [p for p in POSTS if p["confidence"] < 0.6], "dead_letters": DEAD}
    for table, table_rows in rows.items():
        errors = client.insert_rows_json(f"{PROJECT}.{dataset}.{table}",
                                         [cb.to_bq_row(table, r, "STREAMING_INSERTS") for r in table_rows])
        assert not errors, errors
    return dataset


JOB_TEXTS = ["I love this, best service ever", "worst delay, I hate this airline", "the flight is at noon"]


def job_lines(n: int, prefix: str = "p") -> list[str]:
    """`n` posts spread over three minutes of 2026-11-24 14:00, alternating two keywords."""
    return [json.dumps({"id": f"{prefix}{i}", "text": JOB_TEXTS[i % 3], "keyword": ("acme", "nimbus")[i % 2],
                        "lang": "en", "created_at": f"2026-11-24T14:{i // 10:02d}:{(7 * i) % 60:02d}Z"})
            for i in range(n)]


def run_job_into(dataset, lines, tmp_path, model, monkeypatch, endpoint, *flags):
    """`pulse run --output PROJECT:DATASET --bq_method STREAMING_INSERTS` on `lines` -> its counters."""
    from pipelines import sentiment_pipeline

    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.setenv(cb.EMULATOR_ENV, endpoint.split("://", 1)[1])
    result = sentiment_pipeline.run(["--input", str(tmp_path / "in.jsonl"), "--output", f"{PROJECT}:{dataset}",
                                     "--bq_method", "STREAMING_INSERTS", "--project", PROJECT,
                                     "--model", str(model), *flags])
    return sentiment_pipeline.counters(result)


@pytest.mark.integration
@pytest.mark.slow
def test_the_job_writes_to_bigquery(bq_emulator, bq_client, tiny_bundled_model, tmp_path, monkeypatch):
    """`pulse run --output PROJECT:DATASET --bq_method STREAMING_INSERTS` against the emulator,
    read back through google-cloud-bigquery: the sink's counts balance against what the tables
    hold, and the views, created for the job's window settings, agree with its panes."""
    from pipelines import sentiment_pipeline
    from pipelines.options import SentimentOptions, view_settings

    flags = ["--window_size", "120", "--allowed_lateness", "300", "--review_threshold", "0.8"]
    dataset = f"job_{uuid.uuid4().hex[:8]}"
    settings = view_settings(SentimentOptions(flags))
    assert settings == sqlfiles.ViewSettings(120, None, 0.8)
    cb.ensure_tables(f"{PROJECT}:{dataset}", endpoint=bq_emulator, settings=settings)
    c = run_job_into(dataset, job_lines(20) + ["not json"], tmp_path, tiny_bundled_model, monkeypatch,
                     bq_emulator, *flags)

    posts = fetch(bq_client, dataset, "scored_posts", "post_id")
    assert sorted(p["post_id"] for p in posts) == sorted(f"p{i}" for i in range(20))
    assert all(p["label"] in ("negative", "neutral", "positive") and -1 <= p["score"] <= 1 for p in posts)
    dead = fetch(bq_client, dataset, "dead_letters", "received_at")
    assert [(d["stage"], d["payload"]) for d in dead] == [("parse", b"not json")]
    # The balance is checked at the sink: what BigQuery accepted, per table.
    ok, line = sentiment_pipeline.accounting(c)
    assert ok and "stored 20 scored posts + 1 dead letters (balanced)" in line, line
    for table in ("scored_posts", "sentiment_windows", "alerts", "review_queue", "dead_letters"):
        [(count,)] = [tuple(r.values()) for r in bq_client.query(
            f"SELECT count(*) FROM `{PROJECT}.{dataset}.{table}`").result()]
        assert c.get(f"rows_written_{table}", 0) == count, table
    assert c["rows_written_sentiment_windows"] > 0
    windows = fetch(bq_client, dataset, "sentiment_windows_latest", "window_start")
    assert sum(w["posts"] for w in windows if w["keyword"] == "*" and w["lang"] == "*") == 20
    assert {(w["window_end"] - w["window_start"]).total_seconds() for w in windows} == {120}
    # The views were made with the job's settings: the windows recomputed from scored_posts are
    # the job's 2-minute windows, with its review threshold, equal to the last panes.
    final = fetch(bq_client, dataset, "sentiment_windows_final", "window_start, keyword, lang")
    assert {(w["window_end"] - w["window_start"]).total_seconds() for w in final} == {120}
    consistency = sqlfiles.load_query("window_consistency")
    assert list(bq_client.query(consistency.render("bigquery", f"{PROJECT}:{dataset}")).result()) == []
    assert sum(w["low_confidence"] for w in final if w["keyword"] == "*" and w["lang"] == "*") == sum(
        p["confidence"] < 0.8 for p in posts)


@pytest.mark.integration
@pytest.mark.slow
def test_the_job_balances_when_bigquery_refuses_rows(bq_emulator, bq_client, tiny_bundled_model, tmp_path,
                                                     monkeypatch):
    """Schema drift refuses some scored posts (post_id made INT64: the posts whose id is not a
    number are refused): BigQuery's refusals land in dead_letters with its reason, and the counts
    still balance, at the sink. (A NULLABLE column of the wrong type would not do: the emulator
    accepts such rows and then stores none of them, without an error.)"""
    from google.cloud import bigquery

    from pipelines import sentiment_pipeline

    dataset = f"refuse_{uuid.uuid4().hex[:8]}"
    bq_client.create_dataset(dataset)
    drifted = [bigquery.SchemaField(f["name"], "INT64" if f["name"] == "post_id" else f["type"], mode=f["mode"])
               for f in cb.bq_schema("scored_posts")["fields"]]
    bq_client.create_table(bigquery.Table(f"{PROJECT}.{dataset}.scored_posts", schema=drifted))
    cb.ensure_tables(f"{PROJECT}:{dataset}", endpoint=bq_emulator, views=False)
    lines = job_lines(12, prefix="10") + job_lines(4, prefix="x")
    c = run_job_into(dataset, lines + ["not json"], tmp_path, tiny_bundled_model, monkeypatch, bq_emulator)

    assert sorted(p["post_id"] for p in fetch(bq_client, dataset, "scored_posts", "post_id")) == sorted(
        int(f"10{i}") for i in range(12))
    dead = fetch(bq_client, dataset, "dead_letters", "received_at")
    refused = [d for d in dead if d["stage"] == "write"]
    assert sorted(json.loads(d["payload"])["post_id"] for d in refused) == [f"x{i}" for i in range(4)]
    assert all(d["reason"].startswith("bigquery scored_posts: invalid: ") for d in refused)
    assert c["rows_written_scored_posts"] == 12 and c["rows_refused_scored_posts"] == 4
    assert c["rows_written_dead_letters"] == len(dead) == 5
    ok, line = sentiment_pipeline.accounting(c)
    assert ok, line
    assert "stored 12 scored posts + 5 dead letters (4 rows the sink refused" in line, line


def test_accounting_counts_rows_the_sink_refused_as_stored_dead_letters():
    from pipelines.sentiment_pipeline import accounting

    steps = {"read": 10, "scored": 8, "duplicates": 1, "dead_letter_invalid_json": 1}
    # 2 scored posts and 1 window refused: 3 more dead letters stored.
    refused = dict(steps, rows_written_scored_posts=6, rows_refused_scored_posts=2,
                   rows_refused_sentiment_windows=1, rows_written_dead_letters=4)
    ok, line = accounting(refused)
    assert ok, line
    assert line.endswith("stored 6 scored posts + 4 dead letters (3 rows the sink refused, stored as dead "
                         "letters: 2 of them scored posts) (balanced)")
    # A refused row whose dead letter BigQuery refused in turn is lost: it shows.
    ok, line = accounting(dict(refused, rows_written_dead_letters=3))
    assert not ok and "1 dead letters not stored" in line
    # Written and refused both: counted twice.
    ok, line = accounting(dict(refused, rows_written_scored_posts=7))
    assert not ok and "1 scored rows stored more than once" in line
