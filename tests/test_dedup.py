"""Deduplicate on TestStream: one post per (post id, keyword), state bounded by its timer.

Posts go through the real WindowPosts and Deduplicate; the state of a key is checked the
only way a runner lets a test see it: a redelivery after the timer cleared it is new again,
one before is a duplicate, and `dedup_state_cleared` equals the keys ever held.
"""
import datetime as dt
import math

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from pipelines.direct_runner import metrics as direct_runner_metrics
from transforms.dedup import Deduplicate, forget_at
from transforms.records import Post
from transforms.windowing import StampEventTime, WindowSpec

UTC = dt.timezone.utc
T0 = 1_764_000_000  # a minute boundary in the past
SPEC = WindowSpec(size_s=60, allowed_lateness_s=120, early_firing_s=None)


def post(pid, seconds, keyword="acme", watermark=-math.inf):
    created = dt.datetime.fromtimestamp(T0 + seconds, tz=UTC)
    return TimestampedValue(Post(pid, "text", created, "en", keyword, None, watermark, pid.encode(), {}), T0 + seconds)


def run(stream):
    direct_runner_metrics.install()
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    p = TestPipeline(runner="BundleBasedDirectRunner", options=options)
    unique = (p | stream | StampEventTime(SPEC))["posts"] | Deduplicate(60, 120)
    return p, unique


def counter(result, name):
    return sum(c.committed for c in result.metrics().query(MetricsFilter().with_name(name))["counters"])


def test_forget_at_is_window_end_plus_lateness_plus_horizon():
    assert forget_at(T0 + 5, 60, 120, 120) == T0 + 60 + 240


def test_a_post_counts_once_per_keyword_and_its_state_is_cleared_by_its_timer():
    forget = forget_at(T0 + 5, 60, 120, 120)
    stream = (TestStream()
              .add_elements([post("a", 5), post("a", 5), post("a", 5, keyword="globex"), post("b", 30)])
              .advance_watermark_to(T0 + 200)  # window [0, 60) closed (60 + 120): a's state must still be held
              .add_elements([post("a", 5, watermark=T0 + 200)])  # a redelivery past the lateness: duplicate
              .advance_watermark_to(forget + 1)  # the timer cleared the state of both keys of a, and b's
              .add_elements([post("a", 5, watermark=forget + 1)])  # now it is new again (stored again)
              .advance_watermark_to_infinity())
    p, unique = run(stream)
    assert_that(unique | beam.Map(lambda x: (x.post_id, x.keyword, x.beyond_lateness)),
                equal_to([("a", "acme", False), ("a", "globex", False), ("b", "acme", False),
                          ("a", "acme", True)]))
    result = p.run()
    result.wait_until_finish()
    assert counter(result, "duplicates") == 2
    assert counter(result, "unique") == 4
    assert counter(result, "dedup_state_cleared") == 4  # every key ever held was cleared
