"""Event-time behaviour of WindowPosts + WindowedSentiment under TestStream.

Posts go through the real windowing, lateness gate and aggregation; the model is
replaced by a pure rule (text "bad ..." is negative, "good ..." positive) so the
expected figures are exact.
"""
import datetime as dt
import math

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from pipelines.direct_runner import metrics as direct_runner_metrics
from transforms.aggregate import WindowedSentiment
from transforms.records import Post
from transforms.windowing import WindowPosts, WindowSpec, is_too_late

UTC = dt.timezone.utc
T0 = 1_764_000_000  # 2025-11-24 16:00 UTC, a minute boundary in the past (future posts are dead letters)


def post(pid, seconds, text, watermark, keyword="acme", lang="en"):
    created = dt.datetime.fromtimestamp(T0 + seconds, tz=UTC)
    # None: before the source's first watermark (a recorded stream), so nothing is late yet.
    watermark = -math.inf if watermark is None else watermark
    return TimestampedValue(Post(pid, text, created, lang, keyword, None, watermark, pid.encode(), {}),
                            T0 + seconds)


def fake_score(p: Post) -> dict:
    label = "negative" if p.text.startswith("bad") else "positive"
    return {"post_id": p.post_id, "keyword": p.keyword, "lang": p.lang, "created_at": p.created_at,
            "label": label, "score": -0.5 if label == "negative" else 0.5, "confidence": 0.9,
            "token_count": 2, "oov_count": 1, "model_version": "rule", "beyond_lateness": p.beyond_lateness}


def run_windows(stream, spec=WindowSpec(size_s=60, allowed_lateness_s=120, early_firing_s=None), with_scored=False):
    direct_runner_metrics.install()
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    p = TestPipeline(runner="BundleBasedDirectRunner", options=options)
    windowed = p | "Stream" >> stream | "WindowPosts" >> WindowPosts(spec)
    scored = windowed["posts"] | "Score" >> beam.Map(fake_score)
    rows = scored | "Aggregate" >> WindowedSentiment(spec.aggregate_windows(), 0.5)
    if with_scored:
        return p, rows, windowed["dead_letters"], scored
    return p, rows, windowed["dead_letters"]


def summary(row):
    return (row["window_start"].timestamp() - T0, row["keyword"], row["lang"], row["pane_timing"],
            row["posts"], row["negative"], row["positive"])


def test_out_of_order_posts_land_in_their_own_windows():
    stream = (TestStream()
              .add_elements([post("a", 70, "bad x", None), post("b", 5, "good y", None),
                             post("c", 65, "good z", None), post("d", 10, "bad w", None)])
              .advance_watermark_to_infinity())
    p, rows, dead = run_windows(stream)
    mine = rows | beam.Filter(lambda r: r["lang"] == "*" and r["keyword"] == "acme") | beam.Map(summary)
    assert_that(mine, equal_to([(0, "acme", "*", "ON_TIME", 2, 1, 1), (60, "acme", "*", "ON_TIME", 2, 1, 1)]),
                label="CheckWindows")
    assert_that(dead, equal_to([]), label="NoDeadLetters")
    p.run()


def test_late_post_within_allowed_lateness_gives_a_corrected_late_pane():
    stream = (TestStream()
              .add_elements([post("a", 10, "good", None), post("b", 20, "good", None)])
              .advance_watermark_to(T0 + 90)  # window [0, 60) fires on time with 2 posts
              .add_elements([post("late", 30, "bad late", T0 + 90)])  # 30 s late, lateness 120 s
              .advance_watermark_to_infinity())
    p, rows, dead = run_windows(stream)
    mine = rows | beam.Filter(lambda r: r["lang"] == "*" and r["keyword"] == "acme") | beam.Map(summary)
    assert_that(mine, equal_to([(0, "acme", "*", "ON_TIME", 2, 0, 2), (0, "acme", "*", "LATE", 3, 1, 2)]),
                label="OnTimeThenCorrectedLatePane")
    assert_that(dead, equal_to([]), label="NothingDropped")
    p.run()


def test_post_later_than_allowed_lateness_is_scored_in_no_pane_and_counted():
    stream = (TestStream()
              .add_elements([post("a", 10, "good", None)])
              .advance_watermark_to(T0 + 600)  # window [0,60) expired at 60 + 120 s
              # "ok" is 10 s behind the watermark: late, but inside its window's allowed lateness.
              .add_elements([post("too-late", 15, "bad", T0 + 600), post("ok", 590, "bad", T0 + 600)])
              .advance_watermark_to_infinity())
    p, rows, dead, scored = run_windows(stream, with_scored=True)
    mine = rows | beam.Filter(lambda r: r["lang"] == "*" and r["keyword"] == "acme") | beam.Map(summary)
    assert_that(mine, equal_to([(0, "acme", "*", "ON_TIME", 1, 0, 1), (540, "acme", "*", "LATE", 1, 1, 0)]),
                label="TooLatePostInNoPane")
    assert_that(scored | beam.Map(lambda r: (r["post_id"], r["beyond_lateness"], r["created_at"].timestamp() - T0)),
                equal_to([("a", False, 10), ("too-late", True, 15), ("ok", False, 590)]),
                label="EveryPostScoredWithItsOwnEventTime")
    assert_that(dead, equal_to([]), label="NoDeadLetter")
    result = p.run()
    from apache_beam.metrics.metric import MetricsFilter
    counters = result.metrics().query(MetricsFilter().with_name("late_beyond_lateness"))["counters"]
    assert sum(c.committed for c in counters) == 1


def test_future_and_out_of_range_posts_are_dead_letters_and_move_nothing():
    future = dt.datetime.now(tz=UTC) + dt.timedelta(days=365 * 36)
    stream = (TestStream()
              .add_elements([post("a", 10, "good", None),
                             TimestampedValue(Post("future", "bad", future, "en", "acme", None, -math.inf, b"future", {}),
                                              T0 + 20),
                             TimestampedValue(Post("ancient", "bad", dt.datetime(1999, 1, 1, tzinfo=UTC), "en",
                                                   "acme", None, -math.inf, b"ancient", {}), T0 + 20)])
              .advance_watermark_to_infinity())
    p, rows, dead = run_windows(stream)
    mine = rows | beam.Filter(lambda r: r["lang"] == "*" and r["keyword"] == "acme") | beam.Map(summary)
    assert_that(mine, equal_to([(0, "acme", "*", "ON_TIME", 1, 0, 1)]), label="OnlyTheValidPost")
    assert_that(dead | beam.Map(lambda d: (d["stage"], d["payload"], d["reason"].split(":")[0])),
                equal_to([("window", b"future", "in the future"), ("window", b"ancient", "out of range")]),
                label="DeadLettersWithReasons")
    p.run()


def test_early_panes_fire_on_processing_time_and_accumulate():
    spec = WindowSpec(size_s=60, allowed_lateness_s=0, early_firing_s=10)
    stream = (TestStream()
              .add_elements([post("a", 1, "good", None)])
              .advance_processing_time(11)
              .advance_watermark_to(T0 + 5)
              .add_elements([post("b", 2, "bad", None)])
              .advance_processing_time(11)
              .advance_watermark_to(T0 + 10)
              .advance_watermark_to_infinity())
    p, rows, _ = run_windows(stream, spec)
    mine = rows | beam.Filter(lambda r: r["lang"] == "*" and r["keyword"] == "*") | beam.Map(
        lambda r: (r["pane_index"], r["pane_timing"], r["posts"]))
    assert_that(mine, equal_to([(0, "EARLY", 1), (1, "EARLY", 2), (2, "ON_TIME", 2)]), label="EarlyPanes")
    p.run()


def test_sliding_windows_count_each_post_in_every_window_it_falls_in():
    spec = WindowSpec(size_s=120, period_s=60, allowed_lateness_s=0, early_firing_s=None)
    stream = TestStream().add_elements([post("a", 70, "good", None)]).advance_watermark_to_infinity()
    p, rows, _ = run_windows(stream, spec)
    mine = rows | beam.Filter(lambda r: r["lang"] == "*" and r["keyword"] == "*") | beam.Map(
        lambda r: (r["window_start"].timestamp() - T0, r["window_end"].timestamp() - T0, r["posts"]))
    assert_that(mine, equal_to([(0, 120, 1), (60, 180, 1)]), label="TwoSlidingWindows")
    p.run()


@pytest.mark.parametrize("end,lateness,watermark,late", [
    (59.999, 120, 179.0, False), (59.999, 120, 180.5, True), (59.999, 0, 59.0, False)])
def test_is_too_late(end, lateness, watermark, late):
    assert is_too_late(end, lateness, watermark) is late


def test_window_spec_rejects_bad_combinations():
    with pytest.raises(ValueError, match="multiple"):
        WindowSpec(size_s=300, period_s=70)
    with pytest.raises(ValueError, match="lateness"):
        WindowSpec(allowed_lateness_s=-1)
