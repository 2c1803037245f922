"""Deduplicate on TestStream: one post per (post id, keyword), state bounded by its timer.

Posts go through the real WindowPosts and Deduplicate; the state of a key is checked the
only way a runner lets a test see it: a redelivery after the timer cleared it is new again,
one before is a duplicate, and `dedup_state_cleared` equals the keys ever held.
"""
import datetime as dt
import math

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from pipelines.direct_runner import install_direct_runner_fixes
from transforms.dedup import Deduplicate, forget_at
from transforms.records import Post
from transforms.windowing import StampEventTime, WindowSpec

UTC = dt.timezone.utc
T0 = 1_764_000_000  # a minute boundary in the past
SPEC = WindowSpec(size_s=60, allowed_lateness_s=120, early_firing_s=None)


def post(pid, seconds, keyword="acme", watermark=-math.inf):
    created = dt.datetime.fromtimestamp(T0 + seconds, tz=UTC)
    return TimestampedValue(Post(pid, "text", created, "en", keyword, None, watermark, pid.encode(), {}), T0 + seconds)


def run(stream, per_pair=False):
    install_direct_runner_fixes()  # the same patched engine as `pulse run`
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    p = TestPipeline(runner="BundleBasedDirectRunner", options=options)
    unique = (p | stream | StampEventTime(SPEC))["posts"] | Deduplicate(60, 120, per_pair=per_pair)
    return p, unique


def counter(result, name):
    return sum(c.committed for c in result.metrics().query(MetricsFilter().with_name(name))["counters"])


def test_forget_at_is_window_end_plus_lateness_plus_horizon():
    assert forget_at(T0 + 5, 60, 120, 120) == T0 + 60 + 240


@pytest.mark.parametrize("per_pair", [False, True], ids=["buckets", "pairs"])
def test_a_post_counts_once_per_keyword_and_its_state_is_cleared_by_its_timer(per_pair):
    forget = forget_at(T0 + 5, 60, 120, 120)
    stream = (TestStream()
              .add_elements([post("a", 5), post("a", 5), post("a", 5, keyword="globex"), post("b", 30)])
              .advance_watermark_to(T0 + 200)  # window [0, 60) closed (60 + 120): a's state must still be held
              .add_elements([post("a", 5, watermark=T0 + 200)])  # a redelivery past the lateness: duplicate
              .advance_watermark_to(forget + 1)  # the timer cleared the state of both keys of a, and b's
              .add_elements([post("a", 5, watermark=forget + 1)])  # now it is new again (stored again)
              .advance_watermark_to_infinity())
    p, unique = run(stream, per_pair)
    assert_that(unique | beam.Map(lambda x: (x.post_id, x.keyword, x.beyond_lateness)),
                equal_to([("a", "acme", False), ("a", "globex", False), ("b", "acme", False),
                          ("a", "acme", True)]))
    result = p.run()
    result.wait_until_finish()
    assert counter(result, "duplicates") == 2
    assert counter(result, "unique") == 4
    assert counter(result, "dedup_state_cleared") == 4  # every key ever held was cleared


def test_a_pair_matches_only_itself_in_a_shared_bucket():
    """Post 7 for `acme` is not post 7 for `acme-236`, nor post 7157 for `acme`: all three share
    a state bucket, where each pair's bytes lie inside another's; each is kept, each duplicate not."""
    from transforms.dedup import bucket_of

    pairs = [("7", "acme-236"), ("7157", "acme"), ("7", "acme")]
    assert len({bucket_of(f"{pid}\x1f{keyword}") for pid, keyword in pairs}) == 1
    stream = (TestStream()
              .add_elements([post("7", 5, keyword="acme-236"), post("7157", 5)])
              .add_elements([post("7", 5)])
              .add_elements([post("7", 5), post("7157", 5), post("7", 5, keyword="acme-236")])
              .advance_watermark_to_infinity())
    p, unique = run(stream)
    assert_that(unique | beam.Map(lambda x: (x.post_id, x.keyword)), equal_to(pairs))
    result = p.run()
    result.wait_until_finish()
    assert (counter(result, "unique"), counter(result, "duplicates")) == (3, 3)


@pytest.mark.parametrize("per_pair", [False, True], ids=["buckets", "pairs"])
def test_a_timer_forgets_only_the_pairs_due_then(per_pair):
    """Two pairs (in one bucket), due at different times: the first timer clears the first only,
    so the second's redelivery (still within its horizon) stays a duplicate."""
    from transforms.dedup import bucket_of

    assert bucket_of("7\x1facme") == bucket_of("7157\x1facme")
    early, late = forget_at(T0 + 5, 60, 120, 120), forget_at(T0 + 125, 60, 120, 120)
    stream = (TestStream()
              .add_elements([post("7", 5), post("7157", 125)])
              .advance_watermark_to(early + 1)  # 7's forget time passed, 7157's not
              .add_elements([post("7157", 125, watermark=early + 1), post("7", 5, watermark=early + 1)])
              .advance_watermark_to(late - 1)  # one second before 7157 may be forgotten
              .add_elements([post("7157", 125, watermark=late - 1)])
              .advance_watermark_to_infinity())
    p, unique = run(stream, per_pair)
    assert_that(unique | beam.Map(lambda x: (x.post_id, x.beyond_lateness)),
                equal_to([("7", False), ("7157", False), ("7", True)]))
    result = p.run()
    result.wait_until_finish()
    assert counter(result, "duplicates") == 2


def test_the_job_keys_dedup_by_pair_on_other_runners_and_by_bucket_on_the_direct_runner():
    """Each state write on Dataflow, Flink or Prism is one pair's flag, not a bucket's pickled map."""
    from apache_beam.runners.portability.prism_runner import PrismRunner

    for runner, step in (("BundleBasedDirectRunner", "KeyByBucket"), (PrismRunner(), "KeyByPair")):
        p = beam.Pipeline(runner=runner)
        _ = p | beam.Create([]) | "Deduplicate" >> Deduplicate(60, 120)
        labels = {t.unique_name for t in p.to_runner_api().components.transforms.values()}
        assert f"Deduplicate/{step}" in labels and "Deduplicate/KeepFirstCopy" in labels, labels
