"""The dashboard's Accuracy page through Streamlit's AppTest: the figures on the page equal SQL over
the same views (model_accuracy, alerts_unique), the model's own evaluation beside them, the
model_degraded and drift alerts listed (and no other kind).

    .venv/bin/pytest tests/test_dashboard_accuracy.py -q
"""
import datetime as dt
import os

import pytest

from connectors.monitoring import accuracy_watch as aw
from connectors.sinks.parquet import to_table, write_atomically
from dashboard.safe_text import md
from models.contracts import ALERTS, SENTIMENT_WINDOWS, UTC, ModelSpec
from tests.test_accuracy_watch import T0, labelled_posts, sql, write_labels
from tests.test_dashboard_app import app, metric_values, no_traceback

pytestmark = pytest.mark.integration

BUNDLED = ModelSpec.load(os.path.join(os.path.dirname(aw.__file__), "..", "..", "models", "bundled"))
EVALUATION = BUNDLED.extra["evaluation"]["per_split"]["tweets"]["model"]["macro_f1"]


def window_row(keyword):
    return {"window_start": T0, "window_end": T0 + dt.timedelta(minutes=1), "keyword": keyword, "lang": "*",
            "posts": 1, "positive": 1, "neutral": 0, "negative": 0, "mean_score": 0.5, "mean_confidence": 0.9,
            "low_confidence": 0, "oov_rate": 0.0, "pane_index": 0, "pane_timing": "ON_TIME", "model_version": "v",
            "emitted_at": T0}


def alert_row(kind, keyword, minute):
    start = T0 + dt.timedelta(minutes=minute)
    return {"window_start": start, "window_end": start + dt.timedelta(minutes=1), "keyword": keyword, "kind": kind,
            "value": 0.3, "baseline": 0.05, "zscore": 6.0, "sample_post_ids": ["p1"], "emitted_at": start}


@pytest.fixture
def labelled_output(tmp_path):
    out = str(tmp_path / "out")
    write_labels(out, labelled_posts(30, 30, version=BUNDLED.version)
                 + labelled_posts(40, 10, version=BUNDLED.version, keyword="globex", start=200)
                 + labelled_posts(20, 0, version="old-1", start=400))
    write_atomically(f"{out}/sentiment_windows/w.parquet", to_table([window_row("acme"), window_row("globex")],
                                                                    SENTIMENT_WINDOWS))
    write_atomically(f"{out}/alerts/2026-11-24/job.parquet", to_table(
        [alert_row("oov_drift", "*", 3), alert_row("negative_surge", "acme", 4), alert_row("class_mix_drift", "acme", 5)],
        ALERTS))
    _, written = aw.check(out, aw.expected_from_spec(BUNDLED), 0.05, 50, now=T0 + dt.timedelta(hours=1))
    assert [a["keyword"] for a in written] == ["acme"]  # acme alone falls below; all keywords do not
    return out


def test_the_accuracy_page_shows_model_accuracy_beside_the_evaluation(monkeypatch, labelled_output):
    out = labelled_output
    at = app(monkeypatch, out, page="Accuracy")
    no_traceback(at)
    versions = at.dataframe[0].value
    want = sql(out, "SELECT model_version, labels, contested, macro_f1, f1_negative FROM model_accuracy "
                    "WHERE model_version != '*' AND keyword = '*' AND lang = '*' ORDER BY model_version")
    assert list(versions["model_version"]) == [r["model_version"] for r in want] == sorted([BUNDLED.version, "old-1"])
    for (_, shown), row in zip(versions.iterrows(), want):
        assert (shown["labels"], shown["contested"]) == (row["labels"], row["contested"])
        assert shown["macro_f1"] == pytest.approx(row["macro_f1"], rel=1e-12)
        assert shown["f1_negative"] == pytest.approx(row["f1_negative"], rel=1e-12)
    evaluation = dict(zip(versions["model_version"], versions["evaluation"]))
    assert evaluation[BUNDLED.version] == EVALUATION and evaluation["old-1"] != evaluation["old-1"]  # NaN: unknown
    bundled = next(r for r in want if r["model_version"] == BUNDLED.version)
    shown = metric_values(at)
    assert shown[f"Macro-F1 {md(BUNDLED.version)}"] == f"{bundled['macro_f1']:.3f}"
    detail = at.dataframe[1].value
    [(n,)] = [tuple(r.values()) for r in sql(out, "SELECT count(*) AS n FROM model_accuracy WHERE model_version != '*' "
                                                  "AND (keyword != '*' OR lang != '*')")]
    assert len(detail) == n > 0
    alerts = at.dataframe[2].value
    want_alerts = sql(out, "SELECT keyword, kind FROM alerts_unique WHERE kind != 'negative_surge' "
                           "ORDER BY window_start DESC, keyword, kind")
    assert list(zip(alerts["keyword"], alerts["kind"])) == [(r["keyword"], r["kind"]) for r in want_alerts]
    assert {r["kind"] for r in want_alerts} == {"model_degraded", "oov_drift", "class_mix_drift"}


def test_a_keyword_narrows_the_accuracy_page(monkeypatch, labelled_output):
    at = app(monkeypatch, labelled_output, page="Accuracy", keyword="acme")
    no_traceback(at)
    assert at.header[0].value == "Accuracy: acme"
    versions = at.dataframe[0].value
    want = sql(labelled_output, "SELECT model_version, labels, macro_f1 FROM model_accuracy WHERE keyword = 'acme' "
                                "AND lang = '*' AND model_version != '*' ORDER BY model_version")
    assert list(versions["model_version"]) == [r["model_version"] for r in want]
    assert list(versions["labels"]) == [r["labels"] for r in want] == [60, 20]
    assert list(versions["macro_f1"]) == pytest.approx([r["macro_f1"] for r in want], rel=1e-12)
    assert set(at.dataframe[2].value["keyword"]) == {"acme", "*"}


def test_no_labels_is_one_line_on_the_page(monkeypatch, tmp_path):
    out = str(tmp_path / "empty")
    os.makedirs(out)
    at = app(monkeypatch, out, page="Accuracy")
    no_traceback(at)
    assert any("No resolved labels" in c.value for c in at.caption)
    assert any("No model_degraded or drift alerts" in c.value for c in at.caption)


def test_a_figure_from_too_few_labels_says_so_without_a_delta(monkeypatch, tmp_path):
    """3 resolved labels, all wrong: the headline says too few labels (the accuracy watch's minimum,
    one constant) instead of a red delta against the evaluation; the table keeps the figure."""
    from dashboard import data

    assert data.MIN_LABELS == aw.DEFAULT_MIN_LABELS > 3
    out = str(tmp_path / "out")
    write_labels(out, labelled_posts(0, 3, version=BUNDLED.version))
    at = app(monkeypatch, out, page="Accuracy")
    no_traceback(at)
    [headline] = at.metric
    assert headline.label == f"Macro-F1 {md(BUNDLED.version)}"
    assert headline.value == f"too few labels (3 of {aw.DEFAULT_MIN_LABELS} needed)"
    assert not headline.proto.delta
    assert "not compared with the evaluation" in headline.proto.help
    assert at.dataframe[0].value["labels"].tolist() == [3]
