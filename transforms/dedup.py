"""Deduplicate: drop repeated posts by (post id, keyword), counting each duplicate.

    Post (stamped, global window) -> Post (the first copy of each (id, keyword))

Pub/Sub delivers at least once and the X API connector may see a post twice. A post
collected for two keywords is published once per keyword and counts once for each:
it is the pair that is unique, as scored_posts' key is. On Dataflow the read also
passes the `post_key` attribute (id and keyword) as `id_label`, but Beam's Python
DirectRunner rejects `id_label`, so the job de-duplicates itself with a stateful DoFn.

The state is one boolean per (post id, keyword), kept in the global window, so a
redelivery is caught whichever window it lands in (one that arrives past the allowed
lateness is stamped at its arrival, see transforms/windowing.py). An event-time timer
clears it once the watermark has passed the post's window end + allowed lateness +
`redelivery_horizon_s` (default: the allowed lateness again), so memory stays bounded
in a job that runs for months (`dedup_state_cleared` counts the clears). A copy that
arrives later than that is stored again; the SQL views keep one row per (post id,
keyword). A duplicate is counted (`duplicates`) rather than dead-lettered: it is the
same post, already accounted for.
"""
from __future__ import annotations

import math
import typing

import apache_beam as beam
from apache_beam.coders import BooleanCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from transforms.parse import NAMESPACE
from transforms.records import Post


def forget_at(timestamp: float, window_s: float, allowed_lateness_s: float, horizon_s: float) -> float:
    """When the first copy of a post stamped `timestamp` may be forgotten (epoch seconds)."""
    end = math.floor(timestamp / window_s) * window_s + window_s
    return end + allowed_lateness_s + horizon_s


class _FirstSeen(beam.DoFn):
    SEEN = ReadModifyWriteStateSpec("seen", BooleanCoder())
    FORGET = TimerSpec("forget", TimeDomain.WATERMARK)

    def __init__(self, window_s: float, allowed_lateness_s: float, horizon_s: float):
        self.window_s = window_s
        self.allowed_lateness_s = allowed_lateness_s
        self.horizon_s = horizon_s
        self.duplicates = Metrics.counter(NAMESPACE, "duplicates")
        self.unique = Metrics.counter(NAMESPACE, "unique")
        self.cleared = Metrics.counter(NAMESPACE, "dedup_state_cleared")

    def process(self, keyed: tuple[str, Post], timestamp=beam.DoFn.TimestampParam,
                seen=beam.DoFn.StateParam(SEEN), forget=beam.DoFn.TimerParam(FORGET)):
        _, post = keyed
        if seen.read():
            self.duplicates.inc()
            return
        seen.write(True)
        forget.set(Timestamp.of(forget_at(float(timestamp), self.window_s, self.allowed_lateness_s,
                                          self.horizon_s)))
        self.unique.inc()
        yield post

    @on_timer(FORGET)
    def forget_first_copy(self, seen=beam.DoFn.StateParam(SEEN)):
        seen.clear()
        self.cleared.inc()


def dedup_key(post: Post) -> str:
    """(post id, keyword) as one str; neither can hold a control character (ParsePosts checks)."""
    return f"{post.post_id}\x1f{post.keyword}"


class Deduplicate(beam.PTransform):
    """Post stamped with its event time, in the global window (StampEventTime's output) -> Post,
    one per (post id, keyword). The job windows the posts after this step."""

    def __init__(self, window_s: float, allowed_lateness_s: float, redelivery_horizon_s: float | None = None):
        super().__init__()
        self.window_s = window_s
        self.allowed_lateness_s = allowed_lateness_s
        self.horizon_s = allowed_lateness_s if redelivery_horizon_s is None else redelivery_horizon_s

    def expand(self, posts):
        return (posts
                # A str key gets Beam's deterministic StrUtf8Coder for the state key.
                | "KeyByPostIdAndKeyword" >> beam.Map(lambda post: (dedup_key(post), post)).with_output_types(
                    typing.Tuple[str, typing.Any])
                | "KeepFirstCopy" >> beam.ParDo(_FirstSeen(self.window_s, self.allowed_lateness_s, self.horizon_s)))
