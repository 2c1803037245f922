"""Alert: surges against a trailing baseline, per keyword.

    SentimentWindow row (keyword != '*', lang == '*') -> Alert row (models.contracts.ALERTS)

Two kinds, each judged by a z-score against the same keyword's previous
`baseline_windows` windows (windows with no posts since the keyword's first window
count as zero volume):

- negative_surge: the window's share of negative posts, against the mean and spread of
  that share in the baseline windows that had posts. The spread is at least the
  binomial standard error of a share over this window's post count (sqrt(p(1-p)/n)),
  so 2 negatives out of 12 posts is not a surge, and at least `min_share_std`, so a
  keyword that was always 0 % negative does not alert on one post.
- volume_spike: the window's post count, against the baseline's mean count; the spread
  is floored at the Poisson spread sqrt(mean), since counts of independent posts
  vary at least that much.

Both need `min_posts` in the window and `min_baseline_windows` windows of history.
A window is judged when the watermark passes its end (its on-time pane: a minute after
a surge starts with the default windows), in event-time order, so the same panes in any
arrival order give the same alerts; a late pane judges its window again. A window
alerts at most once per kind. Early panes still update the window rows (and the
dashboard) as posts arrive; they no longer alert on a half-counted window against a
half-arrived baseline. State per keyword is bounded: an event-time timer prunes it to
the windows a baseline or a late pane can still need.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
import typing

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms import window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from transforms.aggregate import ALL
from transforms.parse import NAMESPACE
from transforms.records import now_utc, utc_from_epoch


@dataclasses.dataclass(frozen=True)
class AlertSpec:
    baseline_windows: int = 30
    min_baseline_windows: int = 5
    min_posts: int = 10
    zscore: float = 3.0
    min_share_std: float = 0.05

    def __post_init__(self):
        if self.baseline_windows < 1 or not 1 <= self.min_baseline_windows <= self.baseline_windows:
            raise ValueError("alert baseline needs 1 <= min_baseline_windows <= baseline_windows")
        if self.min_posts < 1 or self.zscore <= 0:
            raise ValueError("alert min_posts and zscore must be positive")


@dataclasses.dataclass(frozen=True)
class WindowFigures:
    start: float
    end: float
    posts: int
    negative: int
    sample_post_ids: tuple = ()
    pane_index: int = 0


def evaluate(current: WindowFigures, history: dict[float, WindowFigures], spec: AlertSpec) -> list[dict]:
    """The alerts (kind, value, baseline, zscore) one window raises against its history.

    `history` maps window start -> figures; the baseline is the `baseline_windows`
    windows of the same size that end at or before `current.start`.
    """
    if current.posts < spec.min_posts:
        return []
    size = current.end - current.start
    first = min(history, default=current.start)  # before the keyword's first window there is no history
    starts = (current.start - k * size for k in range(1, spec.baseline_windows + 1))
    previous = [history.get(start) for start in starts if start >= first]
    seen = [w for w in previous if w is not None and w.posts > 0]
    if len(seen) < spec.min_baseline_windows:
        return []
    alerts = []

    share = current.negative / current.posts
    shares = [w.negative / w.posts for w in seen]
    mean_share = statistics.fmean(shares)
    p = min(max(mean_share, spec.min_share_std), 1 - spec.min_share_std)
    binomial = math.sqrt(p * (1 - p) / current.posts)
    std_share = max(statistics.pstdev(shares), binomial, spec.min_share_std)
    z = (share - mean_share) / std_share
    if z >= spec.zscore:
        alerts.append({"kind": "negative_surge", "value": share, "baseline": mean_share, "zscore": z})

    volumes = [w.posts if w is not None else 0 for w in previous]
    mean_volume = statistics.fmean(volumes)
    std_volume = max(statistics.pstdev(volumes), math.sqrt(max(mean_volume, 1.0)))
    z = (current.posts - mean_volume) / std_volume
    if z >= spec.zscore:
        alerts.append({"kind": "volume_spike", "value": float(current.posts), "baseline": mean_volume,
                       "zscore": z})
    return alerts


def _figures(row: dict) -> WindowFigures:
    return WindowFigures(row["window_start"].timestamp(), row["window_end"].timestamp(), row["posts"],
                         row["negative"], tuple(row.get("_sample_post_ids") or ()), int(row.get("pane_index") or 0))


class _DetectSurges(beam.DoFn):
    """Per keyword: keeps each window's latest pane, judges windows in event-time order.

    A window is judged when the watermark passes its end (an event-time timer): by then its
    on-time pane and every earlier window's are here, whatever order the panes came in, so
    the baseline is complete and the same panes give the same alerts. A late pane (a
    correction) judges its window again on the new figures. Each (window, kind) alerts once.
    The timer also prunes the state to what a baseline or a late pane can still need.
    """

    WINDOWS = ReadModifyWriteStateSpec("windows", PickleCoder())  # start -> WindowFigures (latest pane)
    PENDING = ReadModifyWriteStateSpec("pending", PickleCoder())  # starts not judged yet
    ALERTED = ReadModifyWriteStateSpec("alerted", PickleCoder())  # (start, kind) already alerted
    DUE = TimerSpec("due", TimeDomain.WATERMARK)
    # At the end of the stream (a drained job, a replayed file) the watermark jumps to the end
    # of time at once; a timer the DUE callback sets then may never fire, so this one judges
    # whatever is left (the pattern GroupIntoBatches uses to flush).
    FLUSH = TimerSpec("flush", TimeDomain.WATERMARK)

    def __init__(self, spec: AlertSpec, allowed_lateness_s: int):
        self.spec = spec
        self.allowed_lateness_s = allowed_lateness_s
        self.alerts = Metrics.counter(NAMESPACE, "alerts")

    def process(self, keyed, windows=beam.DoFn.StateParam(WINDOWS), pending=beam.DoFn.StateParam(PENDING),
                alerted=beam.DoFn.StateParam(ALERTED), due=beam.DoFn.TimerParam(DUE),
                flush=beam.DoFn.TimerParam(FLUSH), win=beam.DoFn.WindowParam):
        keyword, row = keyed
        flush.set(win.max_timestamp())
        current = _figures(row)
        history = dict(windows.read() or {})
        known = history.get(current.start)
        if known is None or current.pane_index >= known.pane_index:  # panes accumulate: the latest is the window
            history[current.start] = current
        windows.write(history)
        waiting = set(pending.read() or ())
        if row.get("pane_timing") == "LATE" and current.start not in waiting:
            # A correction of a window already judged: judge it again, now.
            yield from self._judge(keyword, [current.start], history, alerted)
            return
        waiting.add(current.start)
        pending.write(waiting)
        due.set(Timestamp.of(min(history[start].end for start in waiting)))

    @on_timer(DUE)
    def judge_due_windows(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
                          windows=beam.DoFn.StateParam(WINDOWS), pending=beam.DoFn.StateParam(PENDING),
                          alerted=beam.DoFn.StateParam(ALERTED), due=beam.DoFn.TimerParam(DUE)):
        history = dict(windows.read() or {})
        waiting = set(pending.read() or ())
        ready = sorted(start for start in waiting if history[start].end <= float(fired))
        yield from self._judge(key, ready, history, alerted)
        waiting -= set(ready)
        pending.write(waiting)
        if waiting:
            due.set(Timestamp.of(min(history[start].end for start in waiting)))
        if ready:  # keep what a baseline or a late pane can still need
            size = history[ready[-1]].end - history[ready[-1]].start
            horizon = ready[-1] - (self.spec.baseline_windows + 1) * size - self.allowed_lateness_s
            windows.write({start: w for start, w in history.items() if start >= horizon or start in waiting})
            alerted.write({a for a in (alerted.read() or ()) if a[0] >= horizon})

    @on_timer(FLUSH)
    def judge_the_rest(self, key=beam.DoFn.KeyParam, windows=beam.DoFn.StateParam(WINDOWS),
                       pending=beam.DoFn.StateParam(PENDING), alerted=beam.DoFn.StateParam(ALERTED)):
        history = dict(windows.read() or {})
        yield from self._judge(key, sorted(pending.read() or ()), history, alerted)
        pending.write(set())

    def _judge(self, keyword, starts, history, alerted_state):
        alerted = set(alerted_state.read() or ())
        for start in starts:
            current = history[start]
            for alert in evaluate(current, history, self.spec):
                if (current.start, alert["kind"]) in alerted:
                    continue
                alerted.add((current.start, alert["kind"]))
                self.alerts.inc()
                yield {
                    "window_start": utc_from_epoch(current.start),
                    "window_end": utc_from_epoch(current.end),
                    "keyword": keyword,
                    **alert,
                    "sample_post_ids": list(current.sample_post_ids),
                    "emitted_at": now_utc(),
                }
        alerted_state.write(alerted)


class DetectSurges(beam.PTransform):
    """SentimentWindow rows -> Alert rows (per keyword, all languages together)."""

    def __init__(self, spec: AlertSpec, allowed_lateness_s: int):
        super().__init__()
        self.spec = spec
        self.allowed_lateness_s = allowed_lateness_s

    def expand(self, windows):
        return (windows
                | "PerKeywordAllLanguages" >> beam.Filter(
                    lambda row: row["keyword"] != ALL and row["lang"] == ALL)
                | "KeyByKeyword" >> beam.Map(lambda row: (row["keyword"], row)).with_output_types(
                    typing.Tuple[str, typing.Any])  # deterministic state key coder
                | "IntoGlobalWindow" >> beam.WindowInto(window.GlobalWindows())
                | "CompareWithBaseline" >> beam.ParDo(_DetectSurges(self.spec, self.allowed_lateness_s)))
