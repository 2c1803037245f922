"""WindowPosts: event time checked and stamped, event-time windows, and the lateness gate.

    Post -> Post in a fixed event-time window                     (main output)
         -> DeadLetter row, stage "window"  (event time before 2006-03-21, or more than
            --max_future_skew ahead of the clock: "out of range" / "in the future")

Why these windows and triggers: analysts want a complaint surge minutes after it
starts, so every window fires early (every `early_firing_s` of processing time), on
time when the watermark passes its end, and once more per late element for
`allowed_lateness_s` after that (the aggregation sums each bundle's posts first, so that is
a late pane per bundle of late posts, see transforms/aggregate.py). Panes ACCUMULATE: each pane restates the whole window,
so the latest pane is the answer (`sentiment_windows_latest`).

A future-dated post never becomes an element timestamp, so it cannot move a watermark,
hold a window open or reset a keyword's alert history.

Late posts are valid posts. Beam drops a post whose window has expired (window end +
allowed lateness behind the watermark) without a trace, so the gate here finds such a
post first, counts it (`late_beyond_lateness`), flags it `beyond_lateness` and stamps it
at the source's watermark when it arrived: it is scored and stored in scored_posts
like any post, and Aggregate leaves it out of the streaming panes. Its window's final
figures are the view `sentiment_windows_final` (SQL over scored_posts). The gate
compares with the source's event-time watermark when the post arrived, never with a
wall clock: the watermark the source recorded with the message (the replay, the
DirectRunner's Pub/Sub reader), else the element's timestamp as the source gave it (a
Pub/Sub message's publish time, which the source's watermark never passes while the
message is still unacknowledged). So a backlog read long after it was published (a stall,
an update, an outage) is judged by its publish time, on every runner, as the watermark
judges it. Because a step's input watermark never runs ahead of its source's, a post that
passes the gate is never dropped by the aggregation downstream.

Sliding windows (`period_s`) are applied at aggregation only: each post is scored and
written once, in the fixed window of size `period_s` that contains it.
"""
from __future__ import annotations

import dataclasses
import math
import time

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration

from models.contracts import DEFAULT_MAX_FUTURE_SKEW_S, event_time_problem
from transforms.parse import NAMESPACE
from transforms.records import Post, dead_letter


@dataclasses.dataclass(frozen=True)
class WindowSpec:
    size_s: int = 60
    period_s: int | None = None  # sliding windows of size_s every period_s
    allowed_lateness_s: int = 600
    early_firing_s: int | None = 10  # None: no early panes

    def __post_init__(self):
        if self.size_s <= 0:
            raise ValueError("window size must be positive")
        if self.period_s is not None and not 0 < self.period_s <= self.size_s:
            raise ValueError("window period must be positive and at most the window size")
        if self.period_s is not None and self.size_s % self.period_s:
            raise ValueError("window size must be a whole multiple of the period")
        if self.allowed_lateness_s < 0:
            raise ValueError("allowed lateness cannot be negative")
        if self.early_firing_s is not None and self.early_firing_s <= 0:
            raise ValueError("early firing interval must be positive")

    @property
    def post_window_s(self) -> int:
        """The fixed window each post is processed in."""
        return self.period_s or self.size_s

    def trigger(self):
        early = trigger.AfterProcessingTime(self.early_firing_s) if self.early_firing_s else None
        return trigger.AfterWatermark(early=early, late=trigger.AfterCount(1))

    def window_into(self, windowfn) -> beam.WindowInto:
        return beam.WindowInto(
            windowfn,
            trigger=self.trigger(),
            accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
            allowed_lateness=Duration(seconds=self.allowed_lateness_s),
        )

    def post_windows(self) -> beam.WindowInto:
        return self.window_into(window.FixedWindows(self.post_window_s))

    def aggregate_windows(self) -> beam.WindowInto | None:
        """Re-windowing for aggregation (sliding only); None keeps the posts' windows."""
        if self.period_s is None or self.period_s == self.size_s:
            return None
        return self.window_into(window.SlidingWindows(self.size_s, self.period_s))


def is_too_late(window_max_timestamp: float, allowed_lateness_s: float, watermark: float) -> bool:
    """True when Beam would already have expired the window: end + lateness behind the watermark."""
    return window_max_timestamp + allowed_lateness_s < watermark


def fixed_window_max_timestamp(event_time: float, size_s: float) -> float:
    """The last instant (epoch seconds) of the fixed window of `size_s` that holds `event_time`."""
    start = math.floor(event_time / size_s) * size_s
    return start + size_s - 1e-6


def source_watermark_bound(timestamp) -> float:
    """The element's timestamp from its source (seconds) as the bound of the source's watermark
    when it arrived; minus infinity for an element without one (nothing is late before the
    first watermark)."""
    if timestamp is None or not -2**62 < timestamp.micros < 2**62:
        return -math.inf
    return float(timestamp)


class _EventTimeGate(beam.DoFn):
    """Checks a post's event time, then stamps it as the element's timestamp.

    Out of range or in the future: a dead letter (stage "window"). Past its window's
    allowed lateness: stamped at the source's watermark instead, flagged `beyond_lateness`,
    so it is scored and stored but changes no streaming pane (Beam would drop it).
    """

    def __init__(self, spec: WindowSpec, max_future_skew_s: float, clock=time.time):
        self.spec = spec
        self.max_future_skew_s = max_future_skew_s
        self.clock = clock
        self.dead = Metrics.counter(NAMESPACE, "dead_letter_window")
        self.beyond = Metrics.counter(NAMESPACE, "late_beyond_lateness")

    def process(self, post: Post, timestamp=beam.DoFn.TimestampParam):
        now = self.clock()
        event_time = post.created_at.timestamp()
        problem = event_time_problem(event_time, now, self.max_future_skew_s)
        if problem is not None:
            self.dead.inc()
            yield beam.pvalue.TaggedOutput("dead_letters", dead_letter(
                "window", f"{problem}: created_at {post.created_at.isoformat()}", post.raw, post.attributes,
                message_id=post.message_id))
            return
        watermark = post.watermark if post.watermark is not None else source_watermark_bound(timestamp)
        end = fixed_window_max_timestamp(event_time, self.spec.post_window_s)
        if is_too_late(end, self.spec.allowed_lateness_s, watermark):
            self.beyond.inc()
            arrival = min(max(watermark, event_time), now + self.max_future_skew_s)
            yield TimestampedValue(post._replace(beyond_lateness=True), arrival)
            return
        yield TimestampedValue(post, event_time)


class StampEventTime(beam.PTransform):
    """Post -> {"posts": Posts stamped with their event time (still in the source's global window),
    "dead_letters": posts whose event time is unusable}. See `_EventTimeGate`.

    The job de-duplicates between this step and the windowing (dedup state lives in the
    global window), so the two are separate steps there.
    """

    def __init__(self, spec: WindowSpec, max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S):
        super().__init__()
        self.spec = spec
        self.max_future_skew_s = max_future_skew_s

    def expand(self, posts):
        gated = posts | "CheckAndStampEventTime" >> beam.ParDo(
            _EventTimeGate(self.spec, self.max_future_skew_s)).with_outputs("dead_letters", main="posts")
        return {"posts": gated.posts, "dead_letters": gated.dead_letters}


class WindowPosts(beam.PTransform):
    """Post -> {"posts": Posts in event-time windows, "dead_letters": posts whose event time is unusable}.

    StampEventTime, then the windows. A post later than the allowed lateness stays a post.
    """

    def __init__(self, spec: WindowSpec, max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S):
        super().__init__()
        self.spec = spec
        self.max_future_skew_s = max_future_skew_s

    def expand(self, posts):
        gated = posts | "StampEventTime" >> StampEventTime(self.spec, self.max_future_skew_s)
        windowed = gated["posts"] | "WindowByEventTime" >> self.spec.post_windows()
        return {"posts": windowed, "dead_letters": gated["dead_letters"]}
