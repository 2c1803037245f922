"""Aggregation arithmetic and alert rules, called without a pipeline."""
import datetime as dt

import pytest

from apache_beam.transforms.window import IntervalWindow

from transforms.aggregate import MergeStatsFn, Stats, _StatsPerBundle, add_post, keys_of, merge, window_row
from transforms.alerts import AlertSpec, WindowFigures, evaluate

UTC = dt.timezone.utc


def row(pid, label, score, confidence=0.9, keyword="acme", lang="en", tokens=4, oov=1):
    return {"post_id": pid, "label": label, "score": score, "confidence": confidence, "keyword": keyword,
            "lang": lang, "token_count": tokens, "oov_count": oov, "model_version": "v1"}


def test_each_post_counts_under_four_keys():
    assert [k for k, _ in keys_of(row("1", "positive", 0.5))] == [
        ("acme", "en"), ("acme", "*"), ("*", "en"), ("*", "*")]


def bundle_partials(rows, win, low_confidence_below=0.5):
    """The lifted combine's first half over one bundle: {(window, key): Stats}."""
    fn = _StatsPerBundle(low_confidence_below)
    fn.start_bundle()
    for r in rows:
        assert list(fn.process(r, win=win) or ()) == []
    out = {}
    for wv in fn.finish_bundle():
        (key, stats), = [wv.value]
        assert wv.timestamp == win.max_timestamp() and list(wv.windows) == [win]
        out[(wv.windows[0], key)] = stats
    return out


def test_stats_arithmetic_and_row():
    rows = [row("1", "negative", -0.8), row("2", "negative", -0.2, confidence=0.4),
            row("3", "positive", 0.6, tokens=6, oov=0), row("4", "neutral", 0.0), row("5", "negative", -0.9)]
    win = IntervalWindow(60, 120)
    first, second = bundle_partials(rows[:2], win), bundle_partials(rows[2:], win)
    assert set(first) == {(win, key) for key, _ in keys_of(rows[0])}  # four keys per (keyword, lang)
    fn = MergeStatsFn()
    acc = fn.add_input(fn.create_accumulator(), first[(win, ("acme", "*"))])
    other = fn.add_input(fn.create_accumulator(), second[(win, ("acme", "*"))])
    stats = fn.extract_output(fn.merge_accumulators([acc, other]))
    assert (stats.posts, stats.positive, stats.neutral, stats.negative, stats.low_confidence) == (5, 1, 1, 3, 1)
    out = window_row(("acme", "*"), stats, 60.0, 120.0, 2, "LATE")
    assert out["mean_score"] == pytest.approx((-0.8 - 0.2 + 0.6 + 0.0 - 0.9) / 5)
    assert out["mean_confidence"] == pytest.approx((0.9 * 4 + 0.4) / 5)
    assert out["oov_rate"] == pytest.approx(4 / 22)
    assert out["_sample_post_ids"] == ["5", "1", "2"]  # most negative first
    assert out["window_start"] == dt.datetime(1970, 1, 1, 0, 1, tzinfo=UTC)
    assert (out["pane_index"], out["pane_timing"], out["model_version"]) == (2, "LATE", "v1")


def test_a_bundle_sums_each_key_once_and_leaves_out_posts_beyond_lateness():
    win = IntervalWindow(0, 60)
    rows = [row("1", "negative", -0.5), row("2", "positive", 0.5, keyword="globex"),
            row("3", "neutral", 0.0, lang="de"), {**row("4", "negative", -0.9), "beyond_lateness": True}]
    partials = bundle_partials(rows, win)
    posts = {key: stats.posts for (_, key), stats in partials.items()}
    assert posts == {("acme", "en"): 1, ("acme", "*"): 2, ("*", "en"): 2, ("*", "*"): 3,
                     ("globex", "en"): 1, ("globex", "*"): 1, ("acme", "de"): 1, ("*", "de"): 1}
    one_by_one = Stats()
    for r in rows[:3]:
        one_by_one = add_post(one_by_one, r, 0.5)
    assert partials[(win, ("*", "*"))] == one_by_one


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


T0 = dt.datetime(2026, 11, 24, 14, 0, tzinfo=UTC)


def _window(minute, posts, negative, pane=0, timing="ON_TIME"):
    start = T0 + dt.timedelta(minutes=minute)
    return {"window_start": start, "window_end": start + dt.timedelta(minutes=1), "keyword": "acme",
            "lang": "*", "posts": posts, "negative": negative, "pane_index": pane, "pane_timing": timing,
            "_sample_post_ids": ["p1"]}


def _at_end(row):
    """A pane as the aggregation emits it: timestamped at the end of its window."""
    from apache_beam.transforms.window import TimestampedValue
    return TimestampedValue(row, row["window_end"].timestamp() - 1e-6)


class _Record(object):
    """Appends each alert to a file (assert_that's own grouping would drop what the end-of-stream
    timer emits at the end of the global window)."""

    def __init__(self, path):
        self.path = path

    def __call__(self, alert):
        import json
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps([(alert["window_start"] - T0).total_seconds() // 60, alert["kind"], alert["value"]]) + "\n")


def _assert_alerts(stream, expected):
    import json
    import tempfile

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.testing.test_pipeline import TestPipeline

    from transforms.alerts import DetectSurges
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    p = TestPipeline(runner="BundleBasedDirectRunner", options=options)
    spec = AlertSpec(baseline_windows=10, min_baseline_windows=5, min_posts=10, zscore=3.0)
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as out:
        _ = p | stream | DetectSurges(spec, 600) | beam.Map(_Record(out.name))
        p.run().wait_until_finish()
        with open(out.name, encoding="utf-8") as f:
            got = sorted(tuple(json.loads(line)) for line in f)
    assert got == sorted(expected)


QUIET = [_window(minute, 4, 0) for minute in range(6)]  # a quiet baseline: 4 posts a window, none negative
SURGE = [_window(6, 20, 15, 0, "EARLY"), _window(6, 30, 25, 1, "EARLY"), _window(6, 40, 35, 2, "ON_TIME")]


def test_a_window_alerts_once_per_kind_on_its_complete_figures_whatever_its_panes():
    from apache_beam.testing.test_stream import TestStream
    stream = (TestStream()
              .add_elements([_at_end(r) for r in QUIET])
              .advance_watermark_to((T0 + dt.timedelta(minutes=6)).timestamp())
              .add_elements([_at_end(r) for r in SURGE])  # every pane crosses the threshold
              .advance_watermark_to((T0 + dt.timedelta(minutes=7, seconds=1)).timestamp())
              .add_elements([_at_end(_window(6, 50, 45, 3, "LATE"))])  # a correction: no second alert
              .advance_watermark_to_infinity())
    _assert_alerts(stream, [(6, "negative_surge", 35 / 40), (6, "volume_spike", 40.0)])


def test_the_same_panes_in_another_order_give_the_same_alerts():
    from apache_beam.testing.test_stream import TestStream
    # The burst window's panes arrive before most of its baseline's (all before the watermark
    # passes them): judged on arrival, the baseline would be half there.
    stream = (TestStream()
              .add_elements([_at_end(SURGE[0]), _at_end(QUIET[5]), _at_end(SURGE[1])])
              .add_elements([_at_end(r) for r in reversed(QUIET[:5])] + [_at_end(SURGE[2])])
              .advance_watermark_to_infinity())
    _assert_alerts(stream, [(6, "negative_surge", 35 / 40), (6, "volume_spike", 40.0)])


def test_a_late_correction_that_crosses_alerts_then():
    from apache_beam.testing.test_stream import TestStream
    stream = (TestStream()
              .add_elements([_at_end(r) for r in QUIET] + [_at_end(_window(6, 5, 0, 0, "ON_TIME"))])
              .advance_watermark_to((T0 + dt.timedelta(minutes=7, seconds=1)).timestamp())
              .add_elements([_at_end(_window(6, 40, 35, 1, "LATE"))])
              .advance_watermark_to_infinity())
    _assert_alerts(stream, [(6, "negative_surge", 35 / 40), (6, "volume_spike", 40.0)])
