"""Aggregation arithmetic and alert rules, called without a pipeline."""
import datetime as dt

import pytest

from transforms.aggregate import SentimentStatsFn, Stats, add_post, keys_of, merge, window_row
from transforms.alerts import AlertSpec, WindowFigures, evaluate

UTC = dt.timezone.utc


def row(pid, label, score, confidence=0.9, keyword="acme", lang="en", tokens=4, oov=1):
    return {"post_id": pid, "label": label, "score": score, "confidence": confidence, "keyword": keyword,
            "lang": lang, "token_count": tokens, "oov_count": oov, "model_version": "v1"}


def test_each_post_counts_under_four_keys():
    assert [k for k, _ in keys_of(row("1", "positive", 0.5))] == [
        ("acme", "en"), ("acme", "*"), ("*", "en"), ("*", "*")]


def test_stats_arithmetic_and_row():
    fn = SentimentStatsFn(low_confidence_below=0.5)
    rows = [row("1", "negative", -0.8), row("2", "negative", -0.2, confidence=0.4),
            row("3", "positive", 0.6, tokens=6, oov=0), row("4", "neutral", 0.0), row("5", "negative", -0.9)]
    acc = fn.create_accumulator()
    for r in rows[:2]:
        acc = fn.add_input(acc, r)
    other = fn.create_accumulator()
    for r in rows[2:]:
        other = fn.add_input(other, r)
    stats = fn.extract_output(fn.merge_accumulators([acc, other]))
    assert (stats.posts, stats.positive, stats.neutral, stats.negative, stats.low_confidence) == (5, 1, 1, 3, 1)
    out = window_row(("acme", "*"), stats, 60.0, 120.0, 2, "LATE")
    assert out["mean_score"] == pytest.approx((-0.8 - 0.2 + 0.6 + 0.0 - 0.9) / 5)
    assert out["mean_confidence"] == pytest.approx((0.9 * 4 + 0.4) / 5)
    assert out["oov_rate"] == pytest.approx(4 / 22)
    assert out["_sample_post_ids"] == ["5", "1", "2"]  # most negative first
    assert out["window_start"] == dt.datetime(1970, 1, 1, 0, 1, tzinfo=UTC)
    assert (out["pane_index"], out["pane_timing"], out["model_version"]) == (2, "LATE", "v1")


def test_merge_is_order_independent():
    a = add_post(Stats(), row("1", "negative", -0.5), 0.5)
    b = add_post(add_post(Stats(), row("2", "positive", 0.5), 0.5), row("3", "negative", -0.7), 0.5)
    assert merge(a, b) == merge(b, a)


def test_empty_token_counts_give_no_oov_rate():
    stats = add_post(Stats(), row("1", "neutral", 0.0, tokens=None, oov=None), 0.5)
    assert window_row(("*", "*"), stats, 0, 60, 0, "ON_TIME")["oov_rate"] is None


def history(shares_and_volumes, size=60.0):
    return {i * size: WindowFigures(i * size, (i + 1) * size, n, round(n * share))
            for i, (share, n) in enumerate(shares_and_volumes)}


def test_negative_surge_against_baseline():
    hist = history([(0.2, 20)] * 10)
    current = WindowFigures(600.0, 660.0, 20, 16, ("p1",))
    kinds = {a["kind"]: a for a in evaluate(current, hist, AlertSpec())}
    assert set(kinds) == {"negative_surge"}
    assert kinds["negative_surge"]["value"] == pytest.approx(0.8)
    assert kinds["negative_surge"]["baseline"] == pytest.approx(0.2)
    assert kinds["negative_surge"]["zscore"] == pytest.approx((0.8 - 0.2) / (0.2 * 0.8 / 20) ** 0.5)


def test_a_small_window_needs_more_than_a_couple_of_negatives():
    hist = history([(0.05, 12)] * 10)
    assert evaluate(WindowFigures(600.0, 660.0, 12, 2), hist, AlertSpec()) == []
    assert [a["kind"] for a in evaluate(WindowFigures(600.0, 660.0, 12, 6), hist, AlertSpec())] == ["negative_surge"]


def test_volume_spike_uses_poisson_floor_and_counts_empty_windows():
    hist = history([(0.2, 10)] * 10)
    del hist[300.0]  # an empty window counts as zero posts; none exist before the first
    current = WindowFigures(600.0, 660.0, 40, 8)
    kinds = {a["kind"]: a for a in evaluate(current, hist, AlertSpec())}
    assert set(kinds) == {"volume_spike"}
    assert kinds["volume_spike"]["baseline"] == pytest.approx(9.0)


def test_no_alert_without_enough_posts_or_history():
    assert evaluate(WindowFigures(600.0, 660.0, 5, 5), history([(0.1, 20)] * 10), AlertSpec()) == []
    assert evaluate(WindowFigures(240.0, 300.0, 50, 50), history([(0.1, 20)] * 4), AlertSpec()) == []


class _State:
    """A ReadModifyWriteState's read/write, for calling the alert DoFn without a runner."""

    def __init__(self):
        self.value = None

    def read(self):
        return self.value

    def write(self, value):
        self.value = value


def _window(start_min, posts, negative, pane=0):
    start = dt.datetime(2026, 11, 24, 14, start_min, tzinfo=UTC)
    return {"window_start": start, "window_end": start + dt.timedelta(minutes=1), "keyword": "acme",
            "lang": "*", "posts": posts, "negative": negative, "pane_index": pane, "_sample_post_ids": ["p1"]}


def test_a_window_alerts_once_per_kind_whatever_its_panes():
    from transforms.alerts import _DetectSurges
    fn = _DetectSurges(AlertSpec(baseline_windows=10, min_baseline_windows=5, min_posts=10, zscore=3.0), 600)
    history, alerted = _State(), _State()
    alerts = []
    for minute in range(6):  # a quiet baseline: 4 posts a window, none negative
        alerts += list(fn.process(("acme", _window(minute, 4, 0)), history, alerted))
    assert alerts == []
    for pane, (posts, negative) in enumerate([(20, 15), (30, 25), (40, 35)]):  # every pane crosses
        alerts += list(fn.process(("acme", _window(6, posts, negative, pane)), history, alerted))
    assert sorted(a["kind"] for a in alerts) == ["negative_surge", "volume_spike"]
    assert {a["value"] for a in alerts if a["kind"] == "negative_surge"} == {15 / 20}  # the first pane's
    # The next window can alert again.
    more = list(fn.process(("acme", _window(7, 200, 55)), history, alerted))
    assert [a["kind"] for a in more] == ["volume_spike"]
