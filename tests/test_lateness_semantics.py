"""Lateness is judged against the source's event-time watermark, on every runner, never a wall clock.

The Pub/Sub read that Dataflow (and any runner but the DirectRunner) runs stamps each message
with its publish time and no timestamp attribute (connectors/sources/pubsub.py); `to_raw_message`
gives the lateness gate that publish time as the bound of the source's watermark. A backlog
read long after it was published (an outage longer than the allowed lateness) is then on time,
as the watermark holds it: before, the gate used the worker's clock and restamped every post of
the backlog as beyond the allowed lateness, out of every pane and alert.

The messages go through the job's own steps (ToRawMessage as ReadPosts applies it, ParsePosts,
WindowPosts, WindowedSentiment) under TestStream, with the watermark at the backlog's publish
time, as Pub/Sub's would be, on the same patched engine as `pulse run`.

    .venv/bin/pytest tests/test_lateness_semantics.py -q
"""
import datetime as dt
import json

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from connectors.sources.pubsub import to_raw_message
from pipelines import sentiment_pipeline
from pipelines.direct_runner import install_direct_runner_fixes
from transforms.aggregate import WindowedSentiment
from transforms.parse import ParsePosts
from transforms.windowing import WindowPosts, WindowSpec

UTC = dt.timezone.utc
T0 = 1_764_000_000  # 2025-11-24 16:00 UTC: a year before the tests run, so "now" is far past it
SPEC = WindowSpec(size_s=60, allowed_lateness_s=600, early_firing_s=None)


def message(pid: str, created: float, published: float, text: str = "good") -> TimestampedValue:
    body = {"id": pid, "text": text, "keyword": "acme", "lang": "en",
            "created_at": dt.datetime.fromtimestamp(created, tz=UTC).isoformat()}
    read = PubsubMessage(json.dumps(body).encode(), {"post_id": pid}, message_id=f"m-{pid}",
                         publish_time=dt.datetime.fromtimestamp(published, tz=UTC))
    return TimestampedValue(read, published)


def run_backlog(stream):
    install_direct_runner_fixes()
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    p = TestPipeline(runner="BundleBasedDirectRunner", options=options)
    raw = p | "Stream" >> stream | "ToRawMessage" >> beam.Map(to_raw_message)
    parsed = raw | "ParsePosts" >> ParsePosts()
    windowed = parsed["posts"] | "WindowPosts" >> WindowPosts(SPEC)
    rows = (windowed["posts"]
            | "Score" >> beam.Map(lambda post: {"post_id": post.post_id, "keyword": post.keyword, "lang": post.lang,
                                                "created_at": post.created_at, "label": "positive", "score": 0.5,
                                                "confidence": 0.9, "token_count": 1, "oov_count": 0,
                                                "model_version": "rule", "beyond_lateness": post.beyond_lateness}))
    panes = rows | "Aggregate" >> WindowedSentiment(SPEC.aggregate_windows(), 0.5)
    return p, rows, panes


def test_to_raw_message_bounds_the_watermark_by_the_publish_time():
    raw = to_raw_message(message("7", T0, T0 + 3).value)
    assert (raw.publish_time, raw.watermark, raw.message_id) == (T0 + 3, T0 + 3, "m-7")


def test_a_backlog_older_than_the_allowed_lateness_stays_on_time():
    """Published at minute 0-1 and read a year later: on time by the watermark (publish time)."""
    backlog = [message(f"p{i}", T0 + i, T0 + i + 2) for i in range(0, 50, 5)]
    # One post the collector held for 11 minutes before publishing: past its window's lateness
    # by the same watermark, so it is flagged (and still scored) while the backlog is not.
    held = message("held", T0 + 30, T0 + 30 + 660)
    stream = (TestStream()
              .advance_watermark_to(T0)
              .add_elements(backlog)
              .advance_watermark_to(T0 + 60 + 600)
              .add_elements([held])
              .advance_watermark_to_infinity())
    p, rows, panes = run_backlog(stream)
    assert_that(rows | beam.Map(lambda r: (r["post_id"], r["beyond_lateness"])),
                equal_to([(f"p{i}", False) for i in range(0, 50, 5)] + [("held", True)]), label="LatenessOfEach")
    assert_that(panes | beam.Filter(lambda r: r["keyword"] == "*" and r["lang"] == "*")
                | beam.Map(lambda r: (r["window_start"].timestamp() - T0, r["pane_timing"], r["posts"])),
                equal_to([(0, "ON_TIME", 10)]), label="TheBacklogIsInItsWindowsPane")
    result = p.run()
    assert sentiment_pipeline.counters(result).get("late_beyond_lateness") == 1
