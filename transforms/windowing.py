"""WindowPosts: event-time windows right after parsing, and the lateness gate.

    Post (timestamped) -> Post in a fixed event-time window   (main output)
                       -> DeadLetter row, stage "window"       (posts later than allowed lateness)

Why these windows and triggers: analysts want a complaint surge minutes after it
starts, so every window fires early (every `early_firing_s` of processing time), on
time when the watermark passes its end, and once more per late post for
`allowed_lateness_s` after that. Panes ACCUMULATE: each pane restates the whole window,
so the latest pane is the answer (`sentiment_windows_latest`).

Beam drops a post whose window has expired (window end + allowed lateness behind the
watermark) without a trace. The gate here removes such posts first and dead-letters
them with a reason, so "read = scored + duplicates + dead letters" always holds and
every window matches SQL over scored_posts. The gate compares with the source's
watermark when the post arrived (the replay source records it; for Pub/Sub the
processing time stands in, as Beam's DirectRunner uses it as the Pub/Sub watermark).
Because a step's input watermark never runs ahead of its source's, a post that passes
the gate is never dropped by the aggregation downstream.

Sliding windows (`period_s`) are applied at aggregation only: each post is scored and
written once, in the fixed window of size `period_s` that contains it.
"""
from __future__ import annotations

import dataclasses
import time

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.utils.timestamp import Duration, Timestamp

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


class _LatenessGate(beam.DoFn):
    def __init__(self, allowed_lateness_s: int):
        self.allowed_lateness_s = allowed_lateness_s
        self.too_late = Metrics.counter(NAMESPACE, "dropped_late")

    def process(self, post: Post, win=beam.DoFn.WindowParam):
        watermark = post.watermark if post.watermark is not None else time.time()
        end = float(win.max_timestamp()) if isinstance(win, window.BoundedWindow) else float("inf")
        if is_too_late(end, self.allowed_lateness_s, watermark):
            self.too_late.inc()
            yield beam.pvalue.TaggedOutput("dead_letters", dead_letter(
                "window",
                f"too late: event time {post.created_at.isoformat()} is in a window that closed "
                f"(end + {self.allowed_lateness_s} s allowed lateness) before the watermark "
                f"{Timestamp(watermark).to_rfc3339()}",
                post.raw, post.attributes))
            return
        yield post


class WindowPosts(beam.PTransform):
    """Post -> {"posts": windowed Posts, "dead_letters": too-late posts as DeadLetter rows}."""

    def __init__(self, spec: WindowSpec):
        super().__init__()
        self.spec = spec

    def expand(self, posts):
        windowed = posts | "WindowByEventTime" >> self.spec.post_windows()
        gated = windowed | "DropTooLateWithReason" >> beam.ParDo(
            _LatenessGate(self.spec.allowed_lateness_s)).with_outputs("dead_letters", main="posts")
        return {"posts": gated.posts, "dead_letters": gated.dead_letters}
