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
A window alerts at most once per kind, on the first pane (early panes included) that
crosses the threshold: that is how an analyst hears of a surge minutes after it starts.
State per keyword is bounded: only the windows a baseline or a late pane can still
need are kept.
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
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

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


class _DetectSurges(beam.DoFn):
    HISTORY = ReadModifyWriteStateSpec("history", PickleCoder())
    ALERTED = ReadModifyWriteStateSpec("alerted", PickleCoder())

    def __init__(self, spec: AlertSpec, allowed_lateness_s: int):
        self.spec = spec
        self.allowed_lateness_s = allowed_lateness_s
        self.alerts = Metrics.counter(NAMESPACE, "alerts")

    def process(self, keyed, history_state=beam.DoFn.StateParam(HISTORY),
                alerted_state=beam.DoFn.StateParam(ALERTED)):
        keyword, row = keyed
        current = WindowFigures(row["window_start"].timestamp(), row["window_end"].timestamp(),
                                row["posts"], row["negative"], tuple(row.get("_sample_post_ids") or ()))
        history = dict(history_state.read() or {})
        alerted = set(alerted_state.read() or ())
        history[current.start] = current  # panes accumulate: the latest pane is the window
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
        # Keep what a baseline or a late pane can still need.
        size = current.end - current.start
        horizon = max(history) - (self.spec.baseline_windows + 1) * size - self.allowed_lateness_s
        history_state.write({start: w for start, w in history.items() if start >= horizon})
        alerted_state.write({a for a in alerted if a[0] >= horizon})


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
