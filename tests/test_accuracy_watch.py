"""The accuracy watch: views labels_resolved and model_accuracy (connectors/query/views.sql), model_degraded
alerts (connectors/monitoring/accuracy_watch.py), `pulse accuracy`, and the same views on the BigQuery
emulator.

model_accuracy's macro-F1 is models.evaluate.macro_f1 exactly, on any labels (Hypothesis);
the label rule is checked against a reference in Python; alerts are checked where they are
written (the alerts table, through the views), twice-written alerts are one row.
"""
import datetime as dt
import io
import logging
import os
import uuid
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.monitoring import accuracy_watch as aw
from connectors.query import duckdb_sql
from connectors.sinks.parquet import to_table
from models.contracts import LABELS, LABELS_TABLE, UTC, ModelSpec
from models.evaluate import macro_f1
from pipelines import cli

T0 = dt.datetime(2026, 11, 24, 14, 0, tzinfo=UTC)
CLASSES = list(LABELS)


def sql(out, text):
    columns, rows = duckdb_sql.query(str(out), text)
    return [dict(zip(columns, r)) for r in rows]


def label(i, post_id, reviewer, value, model_label="negative", version="v1", seconds=0, keyword="acme", lang="en"):
    return {"label_id": uuid.UUID(int=i).hex, "post_id": post_id, "keyword": keyword, "lang": lang,
            "text": f"text of {post_id}", "label": value, "reviewer": reviewer,
            "labelled_at": T0 + dt.timedelta(seconds=seconds), "model_version": version, "model_label": model_label,
            "corrects": None}


def write_labels(out, rows, name="all"):
    os.makedirs(os.path.join(out, "labels"), exist_ok=True)
    if rows:
        pq.write_table(to_table(rows, LABELS_TABLE), os.path.join(out, "labels", f"{name}.parquet"))


# ---- labels_resolved --------------------------------------------------------------------------


def test_labels_resolved_by_hand(tmp_path):
    out = str(tmp_path)
    write_labels(out, [
        # p1: ana negative, then corrects herself to positive; ben positive; cy negative: positive 2-1.
        label(1, "p1", "ana", "negative", seconds=0), label(2, "p1", "ana", "positive", seconds=50),
        label(3, "p1", "ben", "positive", seconds=10), label(4, "p1", "cy", "negative", seconds=20),
        # p2: a tie (1-1) plus a skip: contested, 2 votes.
        label(5, "p2", "ana", "neutral", seconds=5), label(6, "p2", "ben", "negative", seconds=6),
        label(7, "p2", "cy", "skip", seconds=99),
        # p3: only skips: no row.
        label(8, "p3", "ana", "skip"),
        # p4: one vote; the model label and version of the latest row (ties on time: greater label_id).
        label(9, "p4", "ana", "neutral", "negative", "v1", seconds=30),
        label(10, "p4", "ben", "neutral", "positive", "v2", seconds=30),
        # p1 under another keyword is another post.
        label(11, "p1", "ana", "negative", keyword="globex"),
    ])
    got = {(r["post_id"], r["keyword"]): r for r in sql(out, "SELECT * FROM labels_resolved")}
    assert set(got) == {("p1", "acme"), ("p2", "acme"), ("p4", "acme"), ("p1", "globex")}
    p1, p2, p4 = got[("p1", "acme")], got[("p2", "acme")], got[("p4", "acme")]
    assert (p1["label"], p1["votes"], p1["contested"]) == ("positive", 3, False)
    assert (p1["first_labelled_at"], p1["last_labelled_at"]) == (T0 + dt.timedelta(seconds=10),
                                                                 T0 + dt.timedelta(seconds=50))
    assert (p2["label"], p2["votes"], p2["contested"]) == (None, 2, True)
    assert (p4["label"], p4["votes"], p4["model_label"], p4["model_version"]) == ("neutral", 2, "positive", "v2")
    assert got[("p1", "globex")]["label"] == "negative"


def test_no_labels_no_rows(tmp_path):
    assert sql(tmp_path, "SELECT * FROM labels_resolved") == []
    assert sql(tmp_path, "SELECT * FROM model_accuracy") == []


# ---- a reference in Python --------------------------------------------------------------------


def resolve(rows):
    """THE RULE in Python: each reviewer's latest label, skips dropped, strict plurality, a tie is contested."""
    latest = {}
    for r in rows:
        k = (r["post_id"], r["keyword"], r["reviewer"])
        if k not in latest or (r["labelled_at"], r["label_id"]) > (latest[k]["labelled_at"], latest[k]["label_id"]):
            latest[k] = r
    by_post = {}
    for r in latest.values():
        if r["label"] != "skip":
            by_post.setdefault((r["post_id"], r["keyword"]), []).append(r)
    out = {}
    for key, votes in by_post.items():
        tally = Counter(r["label"] for r in votes).most_common()
        top = [lab for lab, n in tally if n == tally[0][1]]
        recent = max(votes, key=lambda r: (r["labelled_at"], r["label_id"]))
        out[key] = {"label": top[0] if len(top) == 1 else None, "contested": len(top) > 1, "votes": len(votes),
                    "model_label": recent["model_label"], "model_version": recent["model_version"],
                    "lang": recent["lang"]}
    return out


def reference_accuracy(resolved):
    groups = {}
    for (post_id, keyword), r in resolved.items():
        if r["model_label"] is None:
            continue
        version = r["model_version"] or "unknown"
        for key in ((version, keyword, r["lang"]), (version, keyword, "*"), (version, "*", r["lang"]),
                    (version, "*", "*"), ("*", "*", "*")):
            groups.setdefault(key, []).append(r)
    out = {}
    for key, posts in groups.items():
        kept = [p for p in posts if not p["contested"]]
        truth = [CLASSES.index(p["label"]) for p in kept]
        predicted = [CLASSES.index(p["model_label"]) for p in kept]
        out[key] = {"labels": len(kept), "contested": len(posts) - len(kept),
                    "macro_f1": macro_f1(truth, predicted) if kept else None,
                    "accuracy": sum(t == q for t, q in zip(truth, predicted)) / len(kept) if kept else None,
                    **{f"support_{c}": truth.count(i) for i, c in enumerate(CLASSES)}}
    return out


label_rows = st.lists(st.tuples(
    st.sampled_from(["p1", "p2", "p3", "p4", "p5"]), st.sampled_from(["acme", "globex"]),
    st.sampled_from(["ana", "ben", "cy"]), st.sampled_from([*CLASSES, "skip"]),
    st.sampled_from([*CLASSES, None]), st.sampled_from(["v1", "v2", None]), st.sampled_from(["en", "de"]),
    st.integers(0, 3)), max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(label_rows)
def test_model_accuracy_is_evaluate_macro_f1_on_any_labels(tmp_path_factory, drawn):
    rows = [label(i, p, r, lab, m, v, s, k, lang) for i, (p, k, r, lab, m, v, lang, s) in enumerate(drawn)]
    out = str(tmp_path_factory.mktemp("accuracy"))
    write_labels(out, rows)
    resolved = resolve(rows)
    got_resolved = {(r["post_id"], r["keyword"]): r for r in sql(out, "SELECT * FROM labels_resolved")}
    assert got_resolved.keys() == resolved.keys()
    for key, want in resolved.items():
        assert {k: got_resolved[key][k] for k in want} == want, key
    got = {(r["model_version"], r["keyword"], r["lang"]): r for r in sql(out, "SELECT * FROM model_accuracy")}
    want = reference_accuracy(resolved)
    assert got.keys() == want.keys()
    for key, figures in want.items():
        for name, value in figures.items():
            assert got[key][name] == value, (key, name, got[key][name], value)  # exactly, floats too


def test_per_class_figures_by_hand(tmp_path):
    # truth / model: neg/neg, neg/pos, pos/pos, neu/pos -> negative P 1 R 0.5; positive P 1/3 R 1; neutral 0.
    pairs = [("negative", "negative"), ("negative", "positive"), ("positive", "positive"), ("neutral", "positive")]
    write_labels(str(tmp_path), [label(i, f"p{i}", "ana", t, m) for i, (t, m) in enumerate(pairs)])
    [row] = sql(tmp_path, "SELECT * FROM model_accuracy WHERE model_version = 'v1' AND keyword = '*' AND lang = '*'")
    assert (row["labels"], row["contested"], row["accuracy"]) == (4, 0, 0.5)
    assert (row["precision_negative"], row["recall_negative"], row["f1_negative"]) == (1.0, 0.5, pytest.approx(2 / 3))
    assert (row["precision_positive"], row["recall_positive"], row["f1_positive"]) == (pytest.approx(1 / 3), 1.0, 0.5)
    assert (row["support_neutral"], row["precision_neutral"], row["recall_neutral"], row["f1_neutral"]) == \
        (1, None, 0.0, 0.0)  # never predicted: precision undefined, F1 0
    assert row["macro_f1"] == macro_f1([0, 0, 2, 1], [0, 2, 2, 2])


# ---- model_degraded: the pure core --------------------------------------------------------------


def labelled_posts(n_right, n_wrong, version="v1", keyword="acme", start=0):
    """Resolved posts: n_right where the model agrees, n_wrong where it said positive to a negative."""
    rows = []
    classes = ["negative", "neutral", "positive"]
    for i in range(n_right):
        c = classes[i % 3]
        rows.append(label(start + i, f"{keyword}-r{start + i}", "ana", c, c, version, seconds=i, keyword=keyword))
    for i in range(n_wrong):
        j = start + n_right + i
        rows.append(label(j, f"{keyword}-w{j}", "ana", "negative", "positive", version, seconds=n_right + i,
                          keyword=keyword))
    return rows


def expected_of(table):
    return lambda version: table.get(version)


def test_a_version_below_its_evaluation_alerts_with_its_figures(tmp_path):
    out = str(tmp_path)
    write_labels(out, labelled_posts(30, 30) + labelled_posts(60, 0, keyword="globex", start=100))
    rows, posts = aw.read(out)
    now = T0 + dt.timedelta(hours=1)
    alerts = aw.degraded_alerts(rows, expected_of({"v1": 0.9}), 0.05, 61, now, posts=posts)
    by_keyword = {a["keyword"]: a for a in alerts}
    assert set(by_keyword) == {"*"}  # acme has 60 labels of its own (< 61); globex is fine
    [overall] = [r for r in rows if (r["model_version"], r["keyword"], r["lang"]) == ("v1", "*", "*")]
    a = by_keyword["*"]
    assert (a["kind"], a["value"], a["baseline"], a["_labels"]) == ("model_degraded", overall["macro_f1"], 0.9, 120)
    assert (a["window_start"], a["window_end"]) == (overall["first_labelled_at"], overall["last_labelled_at"])
    assert a["zscore"] < 0 and a["zscore"] == pytest.approx((a["value"] - 0.9) / aw.standard_error(
        *truth_and_predicted(posts)), rel=1e-12)
    assert len(a["sample_post_ids"]) == 5 and all(p.startswith("acme-w") for p in a["sample_post_ids"])
    assert a["emitted_at"] == now
    keyword_level = aw.degraded_alerts(rows, expected_of({"v1": 0.9}), 0.05, 40, now, posts=posts)
    assert {a["keyword"] for a in keyword_level} == {"*", "acme"}
    assert [a["_labels"] for a in keyword_level if a["keyword"] == "acme"] == [60]


def truth_and_predicted(posts):
    posts = sorted(posts, key=lambda p: (p["post_id"], p["keyword"]))
    return [CLASSES.index(p["label"]) for p in posts], [CLASSES.index(p["model_label"]) for p in posts]


def test_no_alert_within_the_margin_below_min_labels_or_for_an_unknown_version(tmp_path):
    out = str(tmp_path)
    write_labels(out, labelled_posts(30, 30))
    rows, posts = aw.read(out)
    [live] = [r["macro_f1"] for r in rows if (r["model_version"], r["keyword"], r["lang"]) == ("v1", "*", "*")]
    judge = lambda expected, margin=0.05, min_labels=50: aw.degraded_alerts(  # noqa: E731
        rows, expected, margin, min_labels, T0, posts=posts)
    assert judge(expected_of({"v1": live + 0.05})) == []  # exactly at the margin: not below it
    assert judge(expected_of({"v1": live + 0.0501})) != []
    assert judge(expected_of({"v1": 0.99}), min_labels=61) == []
    assert judge(expected_of({})) == []  # unknown version
    with pytest.raises(ValueError):
        judge(expected_of({"v1": 0.99}), margin=-1)


def test_the_standard_error_is_seeded_and_floored():
    truth, predicted = [0, 1, 2] * 20, [0, 1, 2] * 20
    assert aw.standard_error(truth, predicted) == aw.MIN_STANDARD_ERROR  # all right: no spread
    noisy = [0, 2, 2] * 20
    assert aw.standard_error(truth, noisy) == aw.standard_error(truth, noisy) > aw.MIN_STANDARD_ERROR


def test_expected_figures_come_from_model_json(tmp_path):
    spec = ModelSpec.load(os.path.join(os.path.dirname(aw.__file__), "..", "..", "models", "bundled"))
    expected = aw.expected_from_spec(spec)
    assert expected(spec.version) == spec.extra["evaluation"]["per_split"]["tweets"]["model"]["macro_f1"]
    assert expected("someone-else") is None
    registry = tmp_path / "reg"
    (registry / "versions" / "v9").mkdir(parents=True)
    (registry / "versions" / "v9" / "model.json").write_text(
        '{"evaluation": {"per_split": {"tweets": {"model": {"macro_f1": 0.61}}}}}')
    with_registry = aw.expected_from_spec(spec, str(registry))
    assert (with_registry("v9"), with_registry("v8"), with_registry("../v9")) == (0.61, None, None)


# ---- writing: the alerts table, idempotently ----------------------------------------------------


def test_check_writes_each_alert_once_where_the_views_see_it(tmp_path):
    out = str(tmp_path)
    write_labels(out, labelled_posts(30, 30))
    expected = expected_of({"v1": 0.9})
    _, written = aw.check(out, expected, 0.05, 50, now=T0 + dt.timedelta(hours=1))
    assert [(a["keyword"], a["_labels"]) for a in written] == [("*", 60)]
    _, again = aw.check(out, expected, 0.05, 50, now=T0 + dt.timedelta(hours=2))
    assert again == []
    stored = sql(out, "SELECT * FROM alerts")
    assert len(stored) == 1 and stored[0]["kind"] == "model_degraded"
    assert stored[0]["emitted_at"] == T0 + dt.timedelta(hours=1)  # the first stays
    assert stored[0]["value"] == written[0]["value"] and stored[0]["sample_post_ids"] == written[0]["sample_post_ids"]
    assert len(sql(out, "SELECT * FROM alerts_unique")) == 1
    [path] = [os.path.join(d, f) for d, _, files in os.walk(os.path.join(out, "alerts")) for f in files]
    assert path == aw.alert_path(out, written[0]) and not os.path.basename(path).startswith(".")
    # More labels: a new figure, a new alert row (alerts_unique keeps the first of the run).
    write_labels(out, labelled_posts(0, 5, start=500), name="more")
    _, more = aw.check(out, expected, 0.05, 50, now=T0 + dt.timedelta(hours=3))
    assert [a["_labels"] for a in more] == [65]
    assert len(sql(out, "SELECT * FROM alerts")) == 2


def test_the_jobs_watch_logs_a_failure_once_and_never_raises(tmp_path, caplog):
    watch = aw.AccuracyWatch(str(tmp_path / "missing"), expected_of({"v1": 0.9}), every_s=0)
    with caplog.at_level(logging.WARNING, logger="connectors.monitoring.accuracy_watch"):
        assert watch.check() == [] and watch.check(force=True) == []
    assert len([r for r in caplog.records if "accuracy watch" in r.getMessage()]) == 1
    out = str(tmp_path / "out")
    write_labels(out, labelled_posts(30, 30))
    watch = aw.AccuracyWatch(out, expected_of({"v1": 0.9}), every_s=3600)
    assert len(watch.check()) == 1
    assert watch.check() == []  # not due yet
    assert watch.check(force=True) == []  # due, but already written


# ---- pulse accuracy ---------------------------------------------------------------------------


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(["accuracy", *argv])
    return code, out.getvalue(), err.getvalue()


def test_pulse_accuracy_prints_the_table_and_the_alerts_it_wrote(tmp_path):
    out = str(tmp_path)
    version = ModelSpec.load(os.path.join(os.path.dirname(aw.__file__), "..", "..", "models", "bundled")).version
    write_labels(out, labelled_posts(30, 30, version=version))
    code, printed, err = run_cli("--output", out)
    assert (code, err) == (0, "")
    lines = printed.splitlines()
    assert lines[0].split() == ["model_version", "keyword", "lang", "labels", "contested", "accuracy", "macro_f1",
                                "f1_negative", "f1_neutral", "f1_positive", "evaluation"]
    overall = [line.split() for line in lines if line.startswith(version) and line.split()[1:3] == ["*", "*"]]
    [(f1,)] = [(r["macro_f1"],) for r in sql(out, "SELECT macro_f1 FROM model_accuracy "
                                                 f"WHERE model_version = '{version}' AND keyword = '*' AND lang = '*'")]
    assert overall[0][3] == "60" and overall[0][6] == f"{f1:.3f}" and overall[0][-1] == "0.718"
    assert "1 new model_degraded alert(s):" in printed and f"model {version}, keyword *" in printed
    code, printed, _ = run_cli("--output", out)
    assert code == 0 and "no new model_degraded alerts" in printed
    assert len(sql(out, "SELECT * FROM alerts")) == 1


@pytest.mark.parametrize("argv, message", [
    (["--output", "/nonexistent/out"], "no output directory"),
    (["--output", ".", "--model", "/nonexistent"], "no model.json there"),
])
def test_pulse_accuracy_mistakes_are_one_line(argv, message):
    code, printed, err = run_cli(*argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_pulse_accuracy_rejects_a_negative_margin():
    with pytest.raises(SystemExit) as raised:
        run_cli("--output", ".", "--margin", "-1")
    assert raised.value.code == 2


# ---- BigQuery (the emulator) -------------------------------------------------------------------


@pytest.fixture
def bq_labels_dataset(bq_emulator):
    from connectors.sinks import bigquery as cb
    from tests.fixtures.bigquery import PROJECT

    dataset = f"{PROJECT}:acc_{uuid.uuid4().hex[:8]}"
    cb.ensure_tables(dataset, endpoint=bq_emulator)
    return dataset, cb.bigquery_client(PROJECT, bq_emulator)


@pytest.mark.integration
def test_the_views_and_the_alert_on_bigquery_equal_duckdb(bq_labels_dataset, tmp_path):
    from connectors.sinks.bigquery import to_bq_row

    dataset, client = bq_labels_dataset
    rows = labelled_posts(30, 30) + labelled_posts(20, 5, version="v2", keyword="globex", start=100) + [
        label(900, "t1", "ana", "neutral"), label(901, "t1", "ben", "positive"),  # contested
        label(902, "t2", "ana", "skip"), label(903, "t3", "ana", "positive", None, None)]
    table_id = dataset.replace(":", ".") + ".labels"
    assert client.insert_rows_json(table_id, [to_bq_row("labels", r, "STREAMING_INSERTS") for r in rows]) == []
    write_labels(str(tmp_path), rows)
    bq_rows, bq_posts = aw.read(dataset, client)
    local_rows, local_posts = aw.read(str(tmp_path))

    def norm(rows_):
        return sorted((tuple((k, round(v, 12) if isinstance(v, float) else v) for k, v in sorted(r.items()))
                       for r in rows_), key=repr)
    assert norm(bq_rows) == norm(local_rows) and len(local_rows) > 8
    assert norm(bq_posts) == norm(local_posts)
    expected = expected_of({"v1": 0.9, "v2": 0.5})  # v2 does well enough
    _, written = aw.check(dataset, expected, 0.05, 20, now=T0, client=client)
    _, local_written = aw.check(str(tmp_path), expected, 0.05, 20, now=T0)
    assert sorted((a["_model_version"], a["keyword"]) for a in written) == \
        sorted((a["_model_version"], a["keyword"]) for a in local_written) == [("v1", "*")]  # acme is all of v1
    _, again = aw.check(dataset, expected, 0.05, 20, now=T0 + dt.timedelta(hours=1), client=client)
    assert again == []
    stored = [dict(r.items()) for r in client.query(f"SELECT keyword, kind, value FROM `{dataset.replace(':', '.')}"
                                                    ".alerts`").result()]
    assert [(r["keyword"], r["kind"], r["value"]) for r in stored] == [("*", "model_degraded", written[0]["value"])]


# ---- the running job ---------------------------------------------------------------------------


class _Result:
    """What CounterSnapshots reads of a PipelineResult: its metrics (Beam's own query result type)."""

    def metrics(self):
        from apache_beam.metrics.metric import MetricResults

        class _Empty(MetricResults):
            def query(self, filter=None):  # noqa: A002
                return {"counters": [], "distributions": [], "gauges": []}
        return _Empty()


def test_the_jobs_counter_snapshots_run_the_watch_at_the_end(tmp_path):
    from pipelines.sentiment_pipeline import CounterSnapshots

    out = str(tmp_path)
    spec = ModelSpec.load(os.path.join(os.path.dirname(aw.__file__), "..", "..", "models", "bundled"))
    write_labels(out, labelled_posts(30, 30, version=spec.version))
    snapshots = CounterSnapshots(out, "sample")
    snapshots.accuracy = aw.watch_for_job(out, spec, margin=0.05, min_labels=50)
    snapshots.write(_Result(), "DONE", force=True)
    stored = sql(out, "SELECT kind, keyword, baseline FROM alerts")
    assert [(r["kind"], r["keyword"], r["baseline"]) for r in stored] == [
        ("model_degraded", "*", spec.extra["evaluation"]["per_split"]["tweets"]["model"]["macro_f1"])]
    assert len(sql(out, "SELECT * FROM job_balance")) == 1  # the snapshot itself is still written
