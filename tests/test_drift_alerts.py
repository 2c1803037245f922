"""Drift alerts (transforms/alerts.py): oov_drift, confidence_drift, class_mix_drift.

The pure `evaluate` for each kind: raises on a real shift, silent on a flat baseline and on a
noisy one (Hypothesis), a seeded false-alarm check for the class mix; and a TestStream
pipeline (posts -> windows -> aggregation -> DetectSurges) in which a vocabulary shift in
one window of one keyword raises exactly one oov_drift alert.
"""
import datetime as dt
import json
import math
import random
import statistics
import tempfile

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.aggregate import WindowedSentiment
from transforms.alerts import DRIFT_KINDS, KINDS, AlertSpec, DetectSurges, WindowFigures, evaluate
from transforms.windowing import WindowPosts, WindowSpec
from tests.test_windowing import T0, post

SIZE = 60.0
SPEC = AlertSpec()


def fig(i, negative, neutral, positive, confidence=0.8, oov=0.05, unsupported=0):
    n = negative + neutral + positive + unsupported
    return WindowFigures(i * SIZE, (i + 1) * SIZE, n, negative, ("p1",), 0, unsupported, positive=positive,
                         neutral=neutral, mean_confidence=confidence, oov_rate=oov)


def history(windows):
    return {w.start: w for w in windows}


def kinds_of(alerts):
    return sorted(a["kind"] for a in alerts)


def drift_only(alerts):
    return [a for a in alerts if a["kind"] in DRIFT_KINDS]


FLAT = [fig(i, 10, 10, 20) for i in range(10)]  # 40 posts a window, the same every time


# ---- oov_drift ----------------------------------------------------------------------------


def test_oov_drift_raises_on_a_vocabulary_shift_and_names_its_figures():
    current = fig(10, 10, 10, 20, oov=0.30)
    [alert] = drift_only(evaluate(current, history(FLAT), SPEC))
    assert alert["kind"] == "oov_drift"
    assert (alert["value"], alert["baseline"]) == (0.30, pytest.approx(0.05))
    floor = max(math.sqrt(0.05 * 0.95 / 40), SPEC.min_oov_std)  # flat baseline: the binomial floor
    assert alert["zscore"] == pytest.approx((0.30 - 0.05) / floor)


def test_oov_drift_is_silent_on_a_flat_baseline_within_its_floor_and_on_a_drop():
    floor = max(math.sqrt(0.05 * 0.95 / 40), SPEC.min_oov_std)
    assert drift_only(evaluate(fig(10, 10, 10, 20, oov=0.05 + 2.9 * floor), history(FLAT), SPEC)) == []
    assert drift_only(evaluate(fig(10, 10, 10, 20, oov=0.0), history(FLAT), SPEC)) == []  # fewer unknown words


def test_oov_drift_needs_min_posts_scored_and_a_baseline_with_rates():
    few = fig(10, 2, 2, 2, oov=0.9)
    assert drift_only(evaluate(few, history(FLAT), SPEC)) == []
    no_rates = [dataclass_replace(w, oov_rate=None) for w in FLAT]
    assert drift_only(evaluate(fig(10, 10, 10, 20, oov=0.9), history(no_rates), SPEC)) == []


def dataclass_replace(w, **changes):
    import dataclasses
    return dataclasses.replace(w, **changes)


rates = st.lists(st.floats(0.0, 0.6), min_size=SPEC.min_baseline_windows, max_size=30)
posts = st.integers(SPEC.min_posts, 500)


@settings(max_examples=200, deadline=None)
@given(rates, posts)
def test_oov_drift_is_silent_at_the_baseline_median_however_noisy(baseline, n):
    """|median - mean| <= pstdev for any numbers: a window at the baseline's median is at most 1 spread away."""
    windows = [dataclass_replace(fig(i, 0, n, 0), oov_rate=r) for i, r in enumerate(baseline)]
    current = dataclass_replace(fig(len(baseline), 0, n, 0), oov_rate=statistics.median(baseline))
    assert "oov_drift" not in kinds_of(evaluate(current, history(windows), SPEC))


@settings(max_examples=200, deadline=None)
@given(st.floats(0.0, 0.3), st.floats(0.0, 0.05), posts, st.floats(0.01, 0.5))
def test_oov_drift_raises_beyond_the_threshold_over_a_flat_baseline(rate, jitter, n, extra):
    windows = [dataclass_replace(fig(i, 0, n, 0), oov_rate=rate + (jitter if i % 2 else 0.0)) for i in range(10)]
    values = [w.oov_rate for w in windows]
    mean = statistics.fmean(values)
    spread = max(statistics.pstdev(values), math.sqrt(mean * (1 - mean) / n), SPEC.min_oov_std)
    current = dataclass_replace(fig(10, 0, n, 0), oov_rate=mean + SPEC.zscore * spread + extra)
    assert "oov_drift" in kinds_of(evaluate(current, history(windows), SPEC))


# ---- confidence_drift ---------------------------------------------------------------------


def test_confidence_drift_raises_on_a_drop_only():
    floor = max(math.sqrt(0.8 * 0.2 / 40), SPEC.min_confidence_std)
    [alert] = drift_only(evaluate(fig(10, 10, 10, 20, confidence=0.55), history(FLAT), SPEC))
    assert (alert["kind"], alert["value"], alert["baseline"]) == ("confidence_drift", 0.55, pytest.approx(0.8))
    assert alert["zscore"] == pytest.approx((0.8 - 0.55) / floor)
    assert drift_only(evaluate(fig(10, 10, 10, 20, confidence=0.99), history(FLAT), SPEC)) == []  # a rise
    assert drift_only(evaluate(fig(10, 10, 10, 20, confidence=0.8 - 2.9 * floor), history(FLAT), SPEC)) == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.34, 1.0), min_size=SPEC.min_baseline_windows, max_size=30), posts)
def test_confidence_drift_is_silent_at_the_baseline_median_however_noisy(baseline, n):
    windows = [dataclass_replace(fig(i, 0, n, 0), mean_confidence=c) for i, c in enumerate(baseline)]
    current = dataclass_replace(fig(len(baseline), 0, n, 0), mean_confidence=statistics.median(baseline))
    assert "confidence_drift" not in kinds_of(evaluate(current, history(windows), SPEC))


# ---- class_mix_drift ----------------------------------------------------------------------


def test_class_mix_drift_raises_when_the_mix_turns_over():
    current = fig(10, 28, 8, 4)  # 70 % negative, 10 % positive against 25 % / 50 %
    alerts = evaluate(current, history(FLAT), SPEC)
    mix = [a for a in alerts if a["kind"] == "class_mix_drift"]
    assert len(mix) == 1 and "negative_surge" in kinds_of(alerts)
    assert mix[0]["value"] == pytest.approx(0.5 * (abs(0.7 - 0.25) + abs(0.2 - 0.25) + abs(0.1 - 0.5)))
    assert mix[0]["baseline"] == pytest.approx(0.0)  # the baseline never moved
    x2 = (28 - 10) ** 2 / 10 + (8 - 10) ** 2 / 10 + (4 - 20) ** 2 / 20
    assert mix[0]["zscore"] == pytest.approx(-statistics.NormalDist().inv_cdf(math.exp(-x2 / 2)))


def test_class_mix_drift_a_positive_swing_that_is_no_negative_surge():
    current = fig(10, 2, 2, 36)  # everyone happy: no surge, but the mix moved
    assert kinds_of(evaluate(current, history(FLAT), SPEC)) == ["class_mix_drift"]


def test_class_mix_uses_scored_posts_not_volume():
    """Posts with no label (unsupported_language) are out of the shares: the mix is the same."""
    current = fig(10, 10, 10, 20, unsupported=30)
    assert drift_only(evaluate(current, history(FLAT), SPEC)) == []


counts = st.tuples(st.integers(0, 60), st.integers(0, 60), st.integers(0, 60)).filter(lambda c: sum(c) >= 10)


@settings(max_examples=200, deadline=None)
@given(st.lists(counts, min_size=SPEC.min_baseline_windows, max_size=30), st.data())
def test_class_mix_drift_is_silent_on_a_typical_baseline_window_however_noisy(baseline, data):
    """A window equal to the baseline window of median chi-square: X2 <= 2 * mean (Markov), and the
    statistic is divided by mean / 2 (or X2 <= 4 when that is below 1): X2 <= 4, p >= 0.135."""
    from transforms.alerts import _chi_square
    windows = [fig(i, *c) for i, c in enumerate(baseline)]
    shares = [(w.negative / sum(c), w.neutral / sum(c), w.positive / sum(c)) for w, c in zip(windows, baseline)]
    base = [statistics.fmean(s[i] for s in shares) for i in range(3)]
    floored = [max(q, SPEC.min_share_std) for q in base]
    p = tuple(q / sum(floored) for q in floored)
    ranked = sorted(windows, key=lambda w: _chi_square(w, p))
    typical = ranked[(len(ranked) - 1) // 2]
    current = dataclass_replace(typical, start=len(baseline) * SIZE, end=(len(baseline) + 1) * SIZE)
    assert "class_mix_drift" not in kinds_of(evaluate(current, history(windows), SPEC))


def test_class_mix_false_alarms_are_rare_on_a_steady_multinomial_stream():
    """Seeded: 400 windows of 10-80 posts drawn from the same mix; at z = 3 a false alarm has
    p ~ 0.0013 (a little more: the baseline mean is itself estimated)."""
    rng = random.Random(7)
    windows = []
    for i in range(400):
        n = rng.randint(10, 80)
        c = [0, 0, 0]
        for _ in range(n):
            c[rng.choices((0, 1, 2), weights=(0.25, 0.35, 0.40))[0]] += 1
        windows.append(fig(i, *c))
    spec = AlertSpec(baseline_windows=30)
    hist = history(windows)
    alarms = sum("class_mix_drift" in kinds_of(evaluate(w, hist, spec)) for w in windows[30:])
    assert alarms <= 4  # 370 windows judged; expectation about 0.5


# ---- who is judged --------------------------------------------------------------------------


def test_the_all_keywords_row_is_judged_for_drift_only():
    current = fig(10, 28, 8, 4, oov=0.4)
    assert set(kinds_of(evaluate(current, history(FLAT), SPEC))) == {"negative_surge", "oov_drift",
                                                                      "class_mix_drift"}
    assert kinds_of(evaluate(current, history(FLAT), SPEC, DRIFT_KINDS)) == ["class_mix_drift", "oov_drift"]
    assert set(KINDS) == {"negative_surge", "volume_spike", *DRIFT_KINDS}


def test_rows_without_the_new_figures_raise_no_drift():
    """Old rows (no positive/neutral/mean_confidence/oov_rate): the surge kinds only, as before."""
    old = {i * SIZE: WindowFigures(i * SIZE, (i + 1) * SIZE, 20, 4) for i in range(10)}
    assert evaluate(WindowFigures(600.0, 660.0, 20, 16), old, SPEC) == [
        a for a in evaluate(WindowFigures(600.0, 660.0, 20, 16), old, SPEC) if a["kind"] == "negative_surge"]
    assert kinds_of(evaluate(WindowFigures(600.0, 660.0, 20, 16), old, SPEC)) == ["negative_surge"]


# ---- TestStream: a vocabulary shift through the real aggregation --------------------------


def rule_score(p):
    """'odd ...' posts are full of words the model never saw (3 of 4 tokens unknown)."""
    odd = p.text.startswith("odd")
    label = ("negative", "neutral", "positive")[int(p.post_id.rsplit("-", 1)[1]) % 3]
    return {"post_id": p.post_id, "keyword": p.keyword, "lang": p.lang, "created_at": p.created_at,
            "label": label, "score": 0.0, "confidence": 0.8, "token_count": 4, "oov_count": 3 if odd else 0,
            "model_version": "rule", "beyond_lateness": p.beyond_lateness}


class _Record:
    def __init__(self, path):
        self.path = path

    def __call__(self, alert):
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps([(alert["window_start"].timestamp() - T0) // 60, alert["keyword"], alert["kind"],
                                alert["value"]]) + "\n")


def test_a_vocabulary_shift_in_one_window_raises_exactly_one_oov_drift_alert():
    """acme: 60 posts a minute, never odd. globex: 10 a minute, one odd post every other minute
    (3 of 40 tokens unknown), then 4 odd posts in minute 7 (30 %). globex alerts; the
    all-keywords row moves from about 0.5 % to 4.3 % unknown, under 3 x its floor of 2 points."""
    elements = []
    for minute in range(9):
        for k in range(60):
            elements.append(post(f"a{minute}-{k}", minute * 60 + k * 0.9, "fine words", None, keyword="acme"))
        for k in range(10):
            odd = (minute == 7 and k < 4) or (k == 0 and minute % 2 == 0)
            text = "odd zxq vrk" if odd else "fine words"
            elements.append(post(f"g{minute}-{k}", minute * 60 + k * 5.5, text, None, keyword="globex"))
    stream = TestStream().add_elements(elements).advance_watermark_to_infinity()
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    p = TestPipeline(runner="BundleBasedDirectRunner", options=options)
    wspec = WindowSpec(size_s=60, allowed_lateness_s=120, early_firing_s=None)
    spec = AlertSpec(baseline_windows=10, min_baseline_windows=5, min_posts=10)
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as out:
        windowed = p | "Stream" >> stream | "WindowPosts" >> WindowPosts(wspec)
        (windowed["posts"] | "Score" >> beam.Map(rule_score)
         | "Aggregate" >> WindowedSentiment(wspec.aggregate_windows(), 0.5)
         | "Alert" >> DetectSurges(spec, 120) | beam.Map(_Record(out.name)))
        p.run().wait_until_finish()
        with open(out.name, encoding="utf-8") as f:
            got = [tuple(json.loads(line)) for line in f]
    assert [g for g in got if g[2] == "oov_drift"] == [(7, "globex", "oov_drift", 0.3)]
    assert got == [(7, "globex", "oov_drift", 0.3)]  # the mix is steady: nothing else
