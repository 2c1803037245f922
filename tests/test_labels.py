"""The review desk's labels (connectors/sinks/labels.py) and their views (connectors/query/views.sql: labels_latest,
label_agreement): a first label written once however many tabs and processes race for it, a
correction that wins, agreement figures checked by hand and against a reference in Python
(Hypothesis), and the same store and views on the BigQuery emulator.

    .venv/bin/pytest tests/test_labels.py -q
"""
import datetime as dt
import glob
import multiprocessing
import os
import threading
import uuid

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.query import duckdb_sql
from connectors.sinks import labels
from connectors.sinks.labels import BigQueryLabelStore, LabelStoreError, ParquetLabelStore
from connectors.sinks.parquet import to_table
from models.contracts import LABELS_TABLE, TABLES

pytestmark = pytest.mark.integration
UTC = dt.timezone.utc


def review_post(post_id, model_label="negative", version="v1", keyword="acme"):
    """A review_queue row as the app hands it over (extra columns are ignored)."""
    return {"post_id": post_id, "keyword": keyword, "lang": "en", "text": f"text of {post_id}",
            "label": model_label, "model_version": version, "confidence": 0.41, "score": -0.2}


def sql(out, text):
    columns, rows = duckdb_sql.query(out, text)
    return [dict(zip(columns, r)) for r in rows]


# ---- rows and validation ------------------------------------------------------------------


@pytest.mark.parametrize("post, label, reviewer, message", [
    (review_post("p1"), "angry", "ana", "label must be one of negative, neutral, positive, skip"),
    (review_post("p1"), "skip", "  ", "needs a reviewer"),
    (review_post("p1"), "skip", None, "needs a reviewer"),
    (review_post("p1"), "skip", "*", "reserved"),
    (review_post("p1"), "skip", "ana\x00", "a control character \\(U\\+0000\\)"),
    (review_post("p1"), "skip", "ana\nbob", "a control character \\(U\\+000A\\)"),
    (review_post("p1"), "skip", "\x1b[31mana", "a control character \\(U\\+001B\\)"),
    (review_post("p1"), "skip", "ana\u202egnp.exe", "a bidirectional override \\(U\\+202E\\)"),
    (review_post("p1"), "skip", "ana\ud800", "an unpaired UTF-16 surrogate"),
    (dict(review_post("p1"), post_id=""), "negative", "ana", "the post has no post_id"),
    (dict(review_post("p1"), keyword=None), "negative", "ana", "the post has no keyword"),
    (dict(review_post("p1"), label="great"), "negative", "ana", "the model's label must be one of"),
    (dict(review_post("p1"), text=12), "negative", "ana", "the post's text must be text"),
])
def test_bad_labels_are_one_sentence_value_errors(tmp_path, post, label, reviewer, message):
    with pytest.raises(ValueError, match=message) as raised:
        ParquetLabelStore(str(tmp_path)).record(post, label, reviewer)
    assert "\n" not in str(raised.value)
    assert not os.path.exists(tmp_path / "labels")


def test_label_row_shape_and_missing_values():
    row = labels.label_row(dict(review_post("p1"), text=float("nan"), model_version=None), "skip", " ana ")
    assert set(row) == {f.name for f in LABELS_TABLE}
    assert (row["text"], row["model_version"], row["reviewer"], row["corrects"]) == (None, None, "ana", None)
    assert row["label_id"] == labels.first_label_id("p1", "acme", "ana") != labels.first_label_id("p1", "acme", "ben")
    assert labels.first_label_id("ab", "c", "r") != labels.first_label_id("a", "bc", "r")
    assert row["model_label"] == "negative" and row["labelled_at"].tzinfo is not None
    import pandas as pd  # a row of the app's DataFrame, missing values and all

    frame_row = pd.DataFrame([dict(review_post("p1"), text=None, model_version=None)]).iloc[0]
    assert {k: v for k, v in labels.label_row(frame_row, "skip", "ana").items() if k != "labelled_at"} == {
        k: v for k, v in row.items() if k != "labelled_at"}
    # A correction is later than what it corrects, even when this clock is behind.
    ahead = dict(row, labelled_at=dt.datetime.now(UTC) + dt.timedelta(hours=1))
    fix = labels.label_row(review_post("p1"), "neutral", "ana", corrected=ahead)
    assert fix["labelled_at"] == ahead["labelled_at"] + dt.timedelta(microseconds=1)
    assert (fix["corrects"], fix["label_id"]) == (row["label_id"], labels.correction_id(row["label_id"]))


# ---- Parquet ---------------------------------------------------------------------------------


def test_first_label_is_written_once(tmp_path):
    out = str(tmp_path)
    store = ParquetLabelStore(out)
    first = store.record(review_post("p1"), "negative", "ana")
    assert first.written and first.label == "negative"
    again = store.record(review_post("p1"), "positive", "ana")  # another tab, later
    assert not again.written and again.row == first.row
    assert store.record(review_post("p1"), "positive", "ben").written  # another reviewer: a row of their own
    rows = sql(out, "SELECT post_id, reviewer, label FROM labels ORDER BY reviewer")
    assert rows == [{"post_id": "p1", "reviewer": "ana", "label": "negative"},
                    {"post_id": "p1", "reviewer": "ben", "label": "positive"}]
    assert glob.glob(os.path.join(out, "labels", ".tmp-*")) == []
    stored = pq.read_table(store.path(first.label_id))
    assert stored.schema.equals(to_table([], LABELS_TABLE).schema)


def test_a_correction_wins_in_labels_latest_and_is_made_once(tmp_path):
    out = str(tmp_path)
    store = ParquetLabelStore(out)
    first = store.record(review_post("p1"), "positive", "ana")
    fix = store.record(review_post("p1"), "neutral", "ana", correcting=first.label_id)
    assert fix.written and fix.row["corrects"] == first.label_id
    # A stale tab corrects the same first label: already corrected, told the label now held.
    stale = store.record(review_post("p1"), "negative", "ana", correcting=first.label_id)
    assert not stale.written and stale.row == fix.row
    # A first label from a stale tab: the label held now, the correction.
    assert store.record(review_post("p1"), "negative", "ana").row == fix.row
    fix2 = store.record(review_post("p1"), "skip", "ana", correcting=fix.label_id)
    assert fix2.written
    assert store.latest("p1", "acme", "ana") == fix2.row
    assert store.latest("p2", "acme", "ana") is None
    assert sql(out, "SELECT COUNT(*) AS n FROM labels") == [{"n": 3}]
    assert sql(out, "SELECT label_id, label, corrects FROM labels_latest") == [
        {"label_id": fix2.label_id, "label": "skip", "corrects": fix.label_id}]

    with pytest.raises(ValueError, match="there is no label"):
        store.record(review_post("p1"), "skip", "ana", correcting="0" * 32)
    with pytest.raises(ValueError, match="not a label_id"):
        store.record(review_post("p1"), "skip", "ana", correcting="../scored_posts/x")
    with pytest.raises(ValueError, match="a reviewer corrects only their own label"):
        store.record(review_post("p1"), "skip", "ben", correcting=fix2.label_id)
    with pytest.raises(ValueError, match="a reviewer corrects only their own label"):
        store.record(review_post("p2"), "skip", "ana", correcting=fix2.label_id)


def test_labelled_is_what_the_reviewer_labelled_and_reads_each_file_once(tmp_path, monkeypatch):
    out = str(tmp_path)
    store = ParquetLabelStore(out)
    first = store.record(review_post("p1"), "negative", "ana")
    store.record(review_post("p1"), "neutral", "ana", correcting=first.label_id)
    store.record(review_post("p2"), "skip", "ana")
    store.record(review_post("p2", keyword="globex"), "positive", "ben")
    reads = []
    real = ParquetLabelStore._read_new
    monkeypatch.setattr(ParquetLabelStore, "_read_new",
                        lambda self, new, skipped: reads.append(sorted(p for p, _ in new)) or real(self, new, skipped))
    labels._ROWS.clear()  # as in another process than the one that wrote them
    assert ParquetLabelStore(out).labelled("ana") == {("p1", "acme"), ("p2", "acme")}
    assert len(reads) == 1 and len(reads[0]) == 4  # the new files, in one scan
    assert store.labelled(" ben ") == {("p2", "globex")}
    assert store.labelled("cy") == set()
    store.record(review_post("p3"), "positive", "ana")  # what this process writes it knows
    (tmp_path / "labels" / "broken.parquet").write_bytes(b"PAR1")
    assert store.labelled("ana") == {("p1", "acme"), ("p2", "acme"), ("p3", "acme")}
    assert [os.path.basename(s.path) for s in store.skipped] == ["broken.parquet"]
    assert len(reads) == 1  # a refresh reads no file it has read before


def test_a_label_file_with_garbage_pages_is_skipped(tmp_path):
    from tests.test_corrupt_parquet import spoil_data_pages

    out = str(tmp_path)
    store = ParquetLabelStore(out)
    store.record(review_post("p1"), "negative", "ana")
    rows = [dict(labels.label_row(review_post(f"q{i}"), "neutral", "ana"), text="x" * 50 + str(i) * 20)
            for i in range(300)]
    pq.write_table(to_table(rows, LABELS_TABLE), str(tmp_path / "labels" / "bulk.parquet"), use_dictionary=False)
    spoil_data_pages(str(tmp_path / "labels" / "bulk.parquet"))
    labels._ROWS.clear()
    assert store.labelled("ana") == {("p1", "acme")}
    assert [os.path.basename(s.path) for s in store.skipped] == ["bulk.parquet"]


def test_missing_output_is_one_sentence(tmp_path):
    store = ParquetLabelStore(str(tmp_path / "nope"))
    with pytest.raises(LabelStoreError, match="no output directory"):
        store.record(review_post("p1"), "negative", "ana")
    with pytest.raises(LabelStoreError, match="no output directory"):
        store.labelled("ana")


# Two processes, two threads each, released together on a barrier for every round: the four
# writers race for the same (post, keyword, reviewer); then two of them for different reviewers.
ROUNDS = 60


def _race(out, barrier, worker, results):
    store = ParquetLabelStore(out)
    label = ("negative", "neutral", "positive", "skip")[worker]
    got = []
    try:
        for i in range(ROUNDS):
            barrier.wait()
            r = store.record(review_post(f"p{i}"), label, "ana")
            got.append((i, "ana", r.written, r.label, label))
            barrier.wait()
            reviewer = f"rev{worker}"
            r = store.record(review_post(f"p{i}"), label, reviewer)
            got.append((i, reviewer, r.written, r.label, label))
    except Exception as e:  # noqa: BLE001  (reported to the test, which fails on it)
        barrier.abort()  # the other writers stop waiting
        results.put(f"writer {worker}: {type(e).__name__}: {e}")
        return
    results.put(got)


def _race_process(out, barrier, first_worker, results):
    threads = [threading.Thread(target=_race, args=(out, barrier, first_worker + k, results)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_writers_racing_for_the_same_first_label_write_one_row(tmp_path):
    out = str(tmp_path)
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no state shared with this one
    barrier, results = ctx.Barrier(4, timeout=60), ctx.Queue()
    procs = [ctx.Process(target=_race_process, args=(out, barrier, w, results)) for w in (0, 2)]
    for p in procs:
        p.start()
    reports = [results.get(timeout=180) for _ in range(4)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    errors = [r for r in reports if isinstance(r, str)]
    assert not errors, errors
    got = [row for report in reports for row in report]
    stored = sql(out, "SELECT post_id, reviewer, label FROM labels")
    by_key = {}
    for row in stored:
        by_key.setdefault((row["post_id"], row["reviewer"]), []).append(row["label"])
    assert len(stored) == ROUNDS * 5 and all(len(v) == 1 for v in by_key.values())  # one row per key
    for i in range(ROUNDS):
        race = [g for g in got if g[0] == i and g[1] == "ana"]
        assert len(race) == 4
        winners = [g for g in race if g[2]]
        assert len(winners) == 1, race  # exactly one written...
        [stored_label] = by_key[(f"p{i}", "ana")]
        assert winners[0][4] == stored_label
        assert all(g[3] == stored_label for g in race)  # ...the others told the label it holds
        for g in got:
            if g[0] == i and g[1] != "ana":  # different reviewers: each writes their own
                assert g[2] and by_key[(f"p{i}", g[1])] == [g[4]]
    assert glob.glob(os.path.join(out, "labels", ".tmp-*")) == []


def test_the_jobs_sinks_write_no_labels():
    from connectors.sinks.bigquery import WriteBigQueryTables

    p = beam.Pipeline()
    rows = p | beam.Create([])
    with pytest.raises(ValueError, match="the job writes no table 'labels'"):
        {"labels": rows} | WriteBigQueryTables("p:d", method="STREAMING_INSERTS")


# ---- label_agreement -------------------------------------------------------------------------


def hand_made_labels(store):
    """Posts p1, p2 scored by v1 (negative, positive), p3, p4 by v2 (neutral, negative)."""
    posts = {"p1": review_post("p1", "negative", "v1"), "p2": review_post("p2", "positive", "v1"),
             "p3": review_post("p3", "neutral", "v2"), "p4": review_post("p4", "negative", "v2")}
    for reviewer, post_id, label in [("ana", "p1", "negative"), ("ana", "p2", "negative"), ("ana", "p3", "neutral"),
                                     ("ana", "p4", "skip"), ("ben", "p1", "negative"), ("ben", "p2", "positive"),
                                     ("cy", "p1", "positive"), ("cy", "p4", "negative")]:
        assert store.record(posts[post_id], label, reviewer).written
    first = store.record(posts["p3"], "positive", "ben")
    assert store.record(posts["p3"], "neutral", "ben", correcting=first.label_id).written


# By hand, from the latest labels (ben's p3 is neutral after the correction): p1 has three
# reviewers who disagree, p2 two who disagree, p3 two who agree, p4 one label besides a skip.
# (reviewer, version): labels, skipped, agree_with_model, model_agreement, shared_posts,
#                      shared_posts_agreeing, reviewer_agreement
HAND_AGREEMENT = {
    ("*", "*"): (8, 1, 6, 0.75, 3, 1, 1 / 3),
    ("*", "v1"): (5, 0, 3, 0.6, 2, 0, 0.0),
    ("*", "v2"): (3, 1, 3, 1.0, 1, 1, 1.0),
    ("ana", "*"): (3, 1, 2, 2 / 3, 3, 1, 1 / 3),
    ("ana", "v1"): (2, 0, 1, 0.5, 2, 0, 0.0),
    ("ana", "v2"): (1, 1, 1, 1.0, 1, 1, 1.0),
    ("ben", "*"): (3, 0, 3, 1.0, 3, 1, 1 / 3),
    ("ben", "v1"): (2, 0, 2, 1.0, 2, 0, 0.0),
    ("ben", "v2"): (1, 0, 1, 1.0, 1, 1, 1.0),
    ("cy", "*"): (2, 0, 1, 0.5, 1, 0, 0.0),
    ("cy", "v1"): (1, 0, 0, 0.0, 1, 0, 0.0),
    ("cy", "v2"): (1, 0, 1, 1.0, 0, 0, None),
}
FIGURES = ("labels", "skipped", "agree_with_model", "model_agreement", "shared_posts", "shared_posts_agreeing",
           "reviewer_agreement")


def agreement_by_key(rows):
    return {(r["reviewer"], r["model_version"]): tuple(r[f] for f in FIGURES) for r in rows}


def assert_agreement(got, want):
    assert got.keys() == want.keys()
    for key in want:
        assert len(got[key]) == len(want[key]), key
        for a, b in zip(got[key], want[key]):
            assert a == b if b is None or isinstance(b, int) else a == pytest.approx(b, rel=1e-12), (key, got[key])


def test_label_agreement_equals_the_figures_by_hand(tmp_path):
    out = str(tmp_path)
    hand_made_labels(ParquetLabelStore(out))
    assert_agreement(agreement_by_key(sql(out, "SELECT * FROM label_agreement")), HAND_AGREEMENT)
    assert len(sql(out, "SELECT * FROM labels_latest")) == 9  # ben's p3 once


def test_no_labels_no_agreement_rows(tmp_path):
    assert sql(str(tmp_path), "SELECT * FROM label_agreement") == []
    assert [r[0] for r in duckdb_sql.query(str(tmp_path), "DESCRIBE labels")[1]] == [f.name for f in TABLES["labels"]]


def reference_agreement(rows):
    """label_agreement computed in Python from the labels rows."""
    latest = {}
    for r in rows:
        k = (r["post_id"], r["keyword"], r["reviewer"])
        if k not in latest or (r["labelled_at"], r["label_id"]) > (latest[k]["labelled_at"], latest[k]["label_id"]):
            latest[k] = r
    by_post = {}
    for r in latest.values():
        if r["label"] != "skip":
            by_post.setdefault((r["post_id"], r["keyword"]), []).append(r["label"])
    out = {}
    for who in {r["reviewer"] for r in latest.values()} | {"*"}:
        for version in {r["model_version"] or "unknown" for r in latest.values()} | {"*"}:
            mine = [r for r in latest.values() if who in ("*", r["reviewer"])
                    and version in ("*", r["model_version"] or "unknown")]
            if not mine:
                continue
            kept = [r for r in mine if r["label"] != "skip"]
            agree = sum(r["label"] == r["model_label"] for r in kept)
            compared = sum(r["model_label"] is not None for r in kept)
            shared = {(r["post_id"], r["keyword"]) for r in kept if len(by_post[(r["post_id"], r["keyword"])]) >= 2}
            agreeing = {k for k in shared if len(set(by_post[k])) == 1}
            out[(who, version)] = (len(kept), len(mine) - len(kept), agree, agree / compared if compared else None,
                                   len(shared), len(agreeing), len(agreeing) / len(shared) if shared else None)
    return out


label_rows = st.lists(st.tuples(
    st.sampled_from(["p1", "p2", "p3"]), st.sampled_from(["acme", "ab", "a"]), st.sampled_from(["ana", "ben", "cy"]),
    st.sampled_from(["negative", "neutral", "positive", "skip"]), st.sampled_from(["negative", "positive", None]),
    st.sampled_from(["v1", "v2", None]), st.integers(0, 3)), max_size=30)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(label_rows)
def test_label_agreement_equals_a_reference_in_python(tmp_path_factory, drawn):
    """Any labels, corrections (a later labelled_at) and ties included: the view's figures."""
    t0 = dt.datetime(2026, 11, 24, 14, 0, tzinfo=UTC)
    rows = [{"label_id": uuid.UUID(int=i).hex, "post_id": p, "keyword": k, "lang": "en", "text": None, "label": lab,
             "reviewer": r, "labelled_at": t0 + dt.timedelta(seconds=s), "model_version": v, "model_label": m,
             "corrects": None} for i, (p, k, r, lab, m, v, s) in enumerate(drawn)]
    out = tmp_path_factory.mktemp("agreement")
    if rows:
        (out / "labels").mkdir()
        pq.write_table(to_table(rows, LABELS_TABLE), str(out / "labels" / "all.parquet"))
    got = agreement_by_key(sql(str(out), "SELECT * FROM label_agreement"))
    assert_agreement(got, reference_agreement(rows))


# ---- BigQuery (the emulator) -----------------------------------------------------------------


@pytest.fixture
def bq_labels(bq_emulator):
    from connectors.sinks import bigquery as cb
    from tests.fixtures.bigquery import PROJECT

    dataset = f"{PROJECT}:labels_{uuid.uuid4().hex[:8]}"
    cb.ensure_tables(dataset, endpoint=bq_emulator)
    return BigQueryLabelStore(dataset, endpoint=bq_emulator), dataset


def bq_rows(store, sql_text):
    text = sql_text.replace("${dataset}", f"`{store.dataset_id}`")
    return [dict(r.items()) for r in store.client.query(text).result()]


def test_bigquery_store_first_label_correction_and_labelled(bq_labels):
    store, _ = bq_labels
    table = store.client.get_table(store.table_id)  # made by ensure_tables with the others
    assert [f.name for f in table.schema] == [f.name for f in LABELS_TABLE]
    assert (table.time_partitioning.field, table.clustering_fields) == ("labelled_at", ["keyword"])
    first = store.record(review_post("p1"), "positive", "ana")
    assert first.written
    again = store.record(review_post("p1"), "negative", "ana")
    assert not again.written and again.label == "positive" and again.label_id == first.label_id
    fix = store.record(review_post("p1"), "neutral", "ana", correcting=first.label_id)
    assert fix.written and fix.row["corrects"] == first.label_id
    assert not store.record(review_post("p1"), "skip", "ana", correcting=first.label_id).written
    with pytest.raises(ValueError, match="there is no label"):
        store.record(review_post("p1"), "skip", "ben", correcting=fix.label_id)
    store.record(review_post("p2"), "skip", "ana")
    assert store.labelled("ana") == {("p1", "acme"), ("p2", "acme")}
    assert store.latest("p1", "acme", "ana")["label"] == "neutral"
    assert bq_rows(store, "SELECT label FROM ${dataset}.labels_latest WHERE post_id = 'p1'") == [{"label": "neutral"}]


def test_label_agreement_on_bigquery_equals_duckdb(bq_labels, tmp_path):
    store, _ = bq_labels
    hand_made_labels(store)
    hand_made_labels(ParquetLabelStore(str(tmp_path)))
    assert_agreement(agreement_by_key(bq_rows(store, "SELECT * FROM ${dataset}.label_agreement")), HAND_AGREEMENT)


def test_bigquery_missing_dataset_or_table_is_one_line(bq_emulator, bq_client):
    from tests.fixtures.bigquery import PROJECT

    store = BigQueryLabelStore(f"{PROJECT}:nope_{uuid.uuid4().hex[:8]}", endpoint=bq_emulator)
    with pytest.raises(LabelStoreError, match=r"^BigQuery dataset \S+ does not exist: create it with") as raised:
        store.labelled("ana")
    assert "\n" not in str(raised.value)
    bare = f"bare_{uuid.uuid4().hex[:8]}"
    bq_client.create_dataset(bare)
    store = BigQueryLabelStore(f"{PROJECT}:{bare}", endpoint=bq_emulator)
    with pytest.raises(LabelStoreError, match="has no labels table"):
        store.record(review_post("p1"), "negative", "ana")
