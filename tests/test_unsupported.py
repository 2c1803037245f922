"""Posts marked unsupported_language (label NULL, skip_reason set): the contracts and sinks take
them, windows count them apart (aggregate, the final-window SQL, the streaming panes agree),
alerts judge shares over labelled posts only, the shared queries too, and old Parquet files
without the new columns still read."""
import datetime as dt

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.transforms.window import FixedWindows, TimestampedValue

from connectors.sinks import bigquery as bq
from connectors.query import duckdb_sql
from connectors.sinks.parquet import WriteParquetTables, arrow_schema, to_table
from models.contracts import SCORED_POSTS, SENTIMENT_WINDOWS, TABLES
from transforms.aggregate import Stats, WindowedSentiment, add_post, public_row, window_row
from transforms.alerts import AlertSpec, WindowFigures, evaluate
from transforms.language import UNSUPPORTED_LANGUAGE

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 24, 14, 0, tzinfo=UTC)


def scored(pid, label, score, confidence=0.9, keyword="acme", lang="en", second=0, tokens=4, oov=1):
    return {"post_id": pid, "keyword": keyword, "lang": lang, "author_id": None,
            "created_at": T0 + dt.timedelta(seconds=second), "text": f"post {pid}", "clean_text": f"post {pid}",
            "label": label, "score": score, "stars": None, "confidence": confidence, "token_count": tokens,
            "oov_count": oov, "model_version": "v1", "processed_at": T0, "beyond_lateness": False,
            "skip_reason": None}


def unsupported(pid, keyword="acme", lang="hi", second=0):
    """The row the routing builds for a post no configured model takes."""
    return {**scored(pid, None, None, keyword=keyword, lang=lang, second=second), "score": None,
            "confidence": None, "token_count": None, "oov_count": None, "model_version": None,
            "skip_reason": UNSUPPORTED_LANGUAGE}


# ---- contracts and sinks -----------------------------------------------------------------------

def test_contract_fields():
    fields = {f.name: f for f in SCORED_POSTS}
    for name in ("label", "score", "confidence", "model_version", "skip_reason"):
        assert fields[name].mode == "NULLABLE", name
    assert fields["skip_reason"].type == "STRING"
    windows = {f.name: f for f in SENTIMENT_WINDOWS}
    assert (windows["unsupported"].type, windows["unsupported"].mode) == ("INT64", "NULLABLE")
    schema = arrow_schema(SCORED_POSTS)
    assert schema.field("label").nullable and schema.field("skip_reason").nullable


def test_both_sinks_take_an_unsupported_row():
    row = unsupported("1")
    table = to_table([row, scored("2", "positive", 0.5)], SCORED_POSTS)
    assert table.column("label").to_pylist() == [None, "positive"]
    assert table.column("skip_reason").to_pylist() == [UNSUPPORTED_LANGUAGE, None]
    for method in bq.METHODS:
        wire = bq.to_bq_row("scored_posts", row, method)
        assert wire["label"] is None and wire["skip_reason"] == UNSUPPORTED_LANGUAGE
    with pytest.raises(bq.RowError, match="post_id"):  # still required where it was
        bq.to_bq_row("scored_posts", {**row, "post_id": None}, "STREAMING_INSERTS")


# ---- aggregate ---------------------------------------------------------------------------------

def test_window_counts_unsupported_apart():
    rows = [scored("1", "negative", -0.8), scored("2", "positive", 0.6, confidence=0.4),
            unsupported("3"), unsupported("4", lang="ja")]
    stats = Stats()
    for r in rows:
        stats = add_post(stats, r, 0.5)
    out = window_row(("*", "*"), stats, 0, 60, 0, "ON_TIME")
    assert (out["posts"], out["unsupported"]) == (4, 2)
    assert out["positive"] + out["neutral"] + out["negative"] == out["posts"] - out["unsupported"]
    assert out["mean_score"] == pytest.approx((-0.8 + 0.6) / 2)
    assert out["mean_confidence"] == pytest.approx((0.9 + 0.4) / 2)
    assert out["low_confidence"] == 1 and out["oov_rate"] == pytest.approx(2 / 8)
    assert out["model_version"] == "v1"


def test_a_window_of_unsupported_posts_only_has_no_means():
    stats = add_post(add_post(Stats(), unsupported("1"), 0.5), unsupported("2"), 0.5)
    out = window_row(("acme", "hi"), stats, 0, 60, 0, "ON_TIME")
    assert (out["posts"], out["unsupported"], out["positive"], out["neutral"], out["negative"]) == (2, 2, 0, 0, 0)
    assert out["mean_score"] is None and out["mean_confidence"] is None and out["oov_rate"] is None
    assert out["low_confidence"] == 0 and out["model_version"] is None and out["_sample_post_ids"] == []


# ---- alerts ------------------------------------------------------------------------------------

def history(n=10, posts=20, negative=2, size=60.0, end=600.0):
    return {end - k * size: WindowFigures(end - k * size, end - k * size + size, posts, negative)
            for k in range(1, n + 1)}


def test_negative_share_is_over_labelled_posts():
    spec = AlertSpec(min_posts=10, min_baseline_windows=5)
    # 10 negatives of 20 labelled posts: a surge against a 10 % baseline, whatever the 30
    # unsupported posts beside them (counted in posts, the share would be 20 %).
    current = WindowFigures(600.0, 660.0, 50, 10, unsupported=30)
    kinds = {a["kind"]: a for a in evaluate(current, history(), spec)}
    assert kinds["negative_surge"]["value"] == pytest.approx(10 / 20)
    # Negative control: the same counts with every post labelled are a 20 % share, no surge.
    plain = [a["kind"] for a in evaluate(WindowFigures(600.0, 660.0, 50, 10), history(), spec)]
    assert "negative_surge" not in plain


def test_too_few_labelled_posts_judge_no_share_but_volume_counts_every_post():
    spec = AlertSpec(min_posts=10, min_baseline_windows=5)
    # 100 posts, 95 of them unsupported: 5 labelled, all negative. No share alert on 5 posts;
    # the volume (100 against a baseline of 20) is a spike whatever the language.
    current = WindowFigures(600.0, 660.0, 100, 5, unsupported=95)
    assert [a["kind"] for a in evaluate(current, history(), spec)] == ["volume_spike"]


def test_baseline_windows_of_unsupported_posts_only_are_not_shares():
    spec = AlertSpec(min_posts=10, min_baseline_windows=5)
    past = {start: WindowFigures(w.start, w.end, 20, 0, unsupported=20) for start, w in history().items()}
    current = WindowFigures(600.0, 660.0, 20, 10)
    assert evaluate(current, past, spec) == []  # no labelled history: no share baseline, no crash


# ---- the streaming panes, the final-window view and the queries --------------------------------

ROWS = [
    scored("1", "negative", -0.8, second=1), scored("2", "positive", 0.6, confidence=0.3, second=2),
    unsupported("3", second=3), unsupported("4", lang="ja", keyword="globex", second=4),
    scored("5", "neutral", 0.0, keyword="globex", second=61), unsupported("6", second=62),
    unsupported("7", second=125),  # a window of unsupported posts only
]


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("unsupported") / "out")
    p = TestPipeline()
    posts = (p | beam.Create(ROWS)
             | beam.Map(lambda r: TimestampedValue(r, r["created_at"].timestamp()))
             | beam.WindowInto(FixedWindows(60)))
    windows = posts | WindowedSentiment(None, 0.5) | beam.Map(public_row)
    {"scored_posts": posts, "sentiment_windows": windows} | WriteParquetTables(out)
    p.run().wait_until_finish()
    return out


def q(out, sql):
    return duckdb_sql.query(out, sql)[1]


def test_final_windows_equal_the_streaming_panes(output):
    assert q(output, "SELECT * FROM sentiment_windows_latest") , "the panes were written"
    columns, rows = duckdb_sql.run_query(output, "window_consistency", {})
    assert rows == []
    compare = ("window_start, keyword, lang, posts, unsupported, positive, neutral, negative, low_confidence, "
               "round(mean_score, 9), round(mean_confidence, 9), round(oov_rate, 9), model_version")
    latest = q(output, f"SELECT {compare} FROM sentiment_windows_latest ORDER BY ALL")
    final = q(output, f"SELECT {compare} FROM sentiment_windows_final ORDER BY ALL")
    assert latest == final
    [(posts, unsup, labelled)] = q(output, "SELECT posts, unsupported, positive + neutral + negative FROM "
                                           "sentiment_windows_final WHERE keyword = '*' AND lang = '*' "
                                           "AND window_start = TIMESTAMP '2026-11-24 14:00:00+00'")
    assert (posts, unsup, labelled) == (4, 2, 2)
    [(posts, unsup, mean, model)] = q(output, "SELECT posts, unsupported, mean_score, model_version FROM "
                                              "sentiment_windows_final WHERE keyword = '*' AND lang = '*' "
                                              "AND window_start = TIMESTAMP '2026-11-24 14:02:00+00'")
    assert (posts, unsup, mean, model) == (1, 1, None, None)


def test_the_stored_rows_hold_the_reason(output):
    rows = q(output, "SELECT post_id, label, skip_reason FROM scored_posts_unique WHERE skip_reason IS NOT NULL "
                     "ORDER BY post_id")
    assert rows == [(p, None, UNSUPPORTED_LANGUAGE) for p in ("3", "4", "6", "7")]


def test_queries_share_over_labelled_posts(output):
    summary = {r[0]: r for r in duckdb_sql.run_query(output, "keyword_summary", {})[1]}
    columns = duckdb_sql.run_query(output, "keyword_summary", {})[0]
    acme = dict(zip(columns, summary["acme"]))
    assert (acme["posts"], acme["negative"], acme["negative_share"]) == (5, 1, 0.5)  # 1 of 2 labelled
    columns, rows = duckdb_sql.run_query(output, "negative_share_hourly", {"keyword": "acme"})
    [hour] = [dict(zip(columns, r)) for r in rows]
    assert (hour["posts"], hour["negative_share"]) == (5, 0.5)
    columns, rows = duckdb_sql.run_query(output, "model_confidence", {})
    assert [dict(zip(columns, r))["model_version"] for r in rows] == ["v1"]  # no NULL-version group


def test_old_parquet_files_without_the_new_columns_still_read(output, tmp_path):
    import shutil

    out = str(tmp_path / "out")
    shutil.copytree(output, out)
    old_posts = tuple(f if f.name not in ("label", "score", "confidence", "model_version")
                      else f._replace(mode="REQUIRED") for f in SCORED_POSTS if f.name != "skip_reason")
    old_windows = tuple(f for f in SENTIMENT_WINDOWS if f.name != "unsupported")
    old = scored("old", "negative", -0.5, second=130)
    pq.write_table(to_table([old], old_posts), f"{out}/scored_posts/old-release.parquet")
    pane = window_row(("*", "*"), add_post(Stats(), old, 0.5), T0.timestamp() + 180, T0.timestamp() + 240, 0,
                      "ON_TIME")
    pq.write_table(to_table([public_row(pane)], old_windows), f"{out}/sentiment_windows/old-release.parquet")
    assert pq.read_schema(f"{out}/scored_posts/old-release.parquet").get_field_index("skip_reason") == -1
    [(label, reason)] = q(out, "SELECT label, skip_reason FROM scored_posts WHERE post_id = 'old'")
    assert (label, reason) == ("negative", None)
    [(unsup,)] = q(out, "SELECT unsupported FROM sentiment_windows WHERE window_start = "
                        "TIMESTAMP '2026-11-24 14:03:00+00'")
    assert unsup is None  # a pane of an older release: read as 0 by the views and the dashboard
    assert len(q(out, "SELECT * FROM sentiment_windows_final")) > 0


def test_bigquery_widens_an_older_table_in_place():
    from google.cloud import bigquery

    class Client:
        updated = None

        def update_table(self, table, fields):
            Client.updated = (table, fields)

    old = bigquery.Table("p.d.scored_posts", schema=[
        bigquery.SchemaField(f.name, f.type, mode="REQUIRED" if f.name in ("label", "score") else f.mode)
        for f in SCORED_POSTS if f.name != "skip_reason"])
    assert bq.widen_schema(Client(), old, SCORED_POSTS)
    table, fields = Client.updated
    modes = {f.name: f.mode for f in table.schema}
    assert fields == ["schema"] and modes["label"] == modes["score"] == modes["skip_reason"] == "NULLABLE"
    assert modes["post_id"] == "REQUIRED" and [f.name for f in table.schema][-1] == "skip_reason"
    assert not bq.widen_schema(Client(), table, SCORED_POSTS)  # up to date: nothing to change
    assert set(TABLES) >= {"scored_posts", "sentiment_windows"}
