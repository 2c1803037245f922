"""The dashboard's queries on BigQuery (the emulator) give what they give on DuckDB over the same
rows: one set of SQL for both, through the project's dialect switch. The review desk writes its
labels to the BigQuery `labels` table.

    .venv/bin/pytest tests/test_dashboard_bigquery.py -q
"""
import datetime as dt
import math

import pandas as pd
import pytest

from dashboard import data
from tests.fixtures.bigquery import PROJECT
from tests.test_bigquery import bq_dataset_with_rows  # noqa: F401  (module fixture)
from tests.test_sql import ALERTS, DEAD, POSTS, WINDOWS, write_table

pytestmark = pytest.mark.integration


def normal(frame: pd.DataFrame) -> list[tuple]:
    """Rows comparable across backends: timestamps as UTC seconds, floats rounded, arrays as tuples."""
    def value(v):
        if v is None or v is pd.NA or v is pd.NaT:
            return None
        if isinstance(v, (pd.Timestamp, dt.datetime)):
            return round(pd.Timestamp(v).timestamp(), 3)
        if isinstance(v, float):
            return None if math.isnan(v) else round(v, 9)
        if hasattr(v, "tolist"):
            v = v.tolist()
        if isinstance(v, list):
            return tuple(sorted(v))
        return v
    return sorted((tuple(value(v) for v in row) for row in frame.itertuples(index=False)), key=repr)


def late_panes() -> list[dict]:
    """A late pane of acme's first window: its four rows (acme/en and the roll-ups acme/*, */en,
    */*), one window corrected."""
    first = min(w["window_start"] for w in WINDOWS)
    return [dict(w, pane_index=w["pane_index"] + 1, pane_timing="LATE",
                 emitted_at=w["emitted_at"] + dt.timedelta(minutes=5))
            for w in WINDOWS if w["window_start"] == first and w["pane_timing"] != "EARLY"
            and w["keyword"] in ("acme", "*") and w["lang"] in ("en", "*")]


@pytest.fixture
def sources(bq_emulator, bq_dataset_with_rows, tmp_path, monkeypatch):  # noqa: F811
    from connectors.sinks import bigquery as cb

    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", bq_emulator.split("//", 1)[1])
    client = cb.bigquery_client(PROJECT, bq_emulator)
    late = late_panes()
    errors = client.insert_rows_json(f"{PROJECT}.{bq_dataset_with_rows}.sentiment_windows",
                                     [cb.to_bq_row("sentiment_windows", r, "STREAMING_INSERTS") for r in late])
    assert not errors, errors
    for table, rows in (("scored_posts", POSTS), ("sentiment_windows", WINDOWS + late), ("alerts", ALERTS),
                        ("review_queue", [p for p in POSTS if p["confidence"] < 0.6]), ("dead_letters", DEAD)):
        write_table(str(tmp_path), table, rows)
    bq, local = data.open_source(f"{PROJECT}:{bq_dataset_with_rows}"), data.open_source(str(tmp_path))
    yield bq, local
    local.close()


def test_every_dashboard_query_answers_the_same_on_bigquery(sources):
    bq, local = sources
    assert data.keywords(bq) == data.keywords(local) != []
    assert data.langs(bq) == data.langs(local)
    span = data.time_range(local)
    assert data.time_range(bq) == span
    start, end = span[0], span[1] + dt.timedelta(seconds=1)
    keyword = data.keywords(local)[0]
    checks = {
        "windows": lambda s: data.windows(s, "*", "*", start, end),
        "windows of a keyword": lambda s: data.windows(s, keyword, "*", start, end),
        "corrections": lambda s: data.corrections(s, "*", "*", start, end),
        "alerts": lambda s: data.alerts(s, "*", start, end),
        "posts": lambda s: data.posts(s, "*", "*", dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc),
                                      dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc)),
        "posts searched": lambda s: data.posts(s, "*", "*", dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc),
                                               dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc), "LOVE"),
        "posts by id": lambda s: data.posts_by_id(s, [POSTS[0]["post_id"], POSTS[1]["post_id"]]),
        "dead letters": data.dead_letters,
        "drift": lambda s: data.drift(s, start, end),
        "review queue": data.review_queue,
        "incidents": lambda s: data.incidents(s, "*", start, end),
        "compare": lambda s: data.compare(s, start + (end - start) / 2, end),
        "compare over time": lambda s: data.compare_over_time(s, start, end),
        "posts filtered": lambda s: data.posts(s, "*", "*", start, end, label="negative", min_confidence=0.6,
                                               reviewed="no", limit=3, offset=1),
        "posts counted": lambda s: pd.DataFrame([{"n": data.posts_count(s, "*", "*", start, end, min_score=-0.6)}]),
        "incident alerts": lambda s: data.incident_alerts(s, data.incidents(local, "*", start, end)["incident_id"]
                                                          .tolist()),
        "beyond lateness": lambda s: pd.DataFrame([{"n": data.beyond_lateness(s, "*", "*", start, end)}]),
        "drivers": lambda s: data.drivers(s, keyword, start, end, limit=50),
        "drivers of all keywords": lambda s: data.drivers(s, "*", start, end, limit=50),
        "driver examples": lambda s: data.driver_examples(s, keyword, start, end, ["text", "p1", "love"]),
    }
    for name, check in checks.items():
        assert normal(check(bq)) == normal(check(local)), name
    assert data.stored(bq) == data.stored(local)
    assert len(late_panes()) == 4 and data.stored(local)["corrected_windows"] == 1  # one window, not its roll-ups
    assert not data.windows(local, "*", "*", start, end).empty and not data.posts_by_id(local, [POSTS[0]["post_id"]]).empty
    assert not data.incidents(local, "*", start, end).empty


def test_the_review_desk_labels_into_bigquery(sources):
    bq, _ = sources
    desk = data.label_store(bq)
    post = data.review_queue(bq).iloc[0].to_dict()
    assert desk.record(post, "negative", "ana")[0]
    assert (post["post_id"], post["keyword"]) in desk.labelled("ana")
    recent = desk.recent("ana")
    assert recent[["post_id", "label"]].values.tolist() == [[post["post_id"], "negative"]]
    assert desk.correct(recent.iloc[0].to_dict(), "positive", "ana")[0]
    assert desk.recent("ana")["label"].tolist() == ["positive"]
