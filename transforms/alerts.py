"""Alert: surges against a trailing baseline, per keyword.

    SentimentWindow row (keyword != '*', lang == '*') -> Alert row (models.contracts.ALERTS)

Two kinds, each judged by a z-score against the same keyword's previous
`baseline_windows` windows (windows with no posts since the keyword's first window
count as zero volume):

- negative_surge: the window's share of negative posts among its labelled posts (posts
  marked unsupported_language have no label and are left out, here and in the baseline; the
  window needs `min_posts` labelled posts, its volume counts every post), against the mean and spread of
  that share in the baseline windows that had posts. The spread is at least the
  binomial standard error of a share over this window's post count (sqrt(p(1-p)/n)),
  so 2 negatives out of 12 posts is not a surge, and at least `min_share_std`, so a
  keyword that was always 0 % negative does not alert on one post.
- volume_spike: the window's post count, against the baseline's mean count; the spread
  is floored at the Poisson spread sqrt(mean), since counts of independent posts
  vary at least that much.

Both need `min_posts` in the window and `min_baseline_windows` windows of history.

Drift kinds, judged the same way (on-time pane, same keyword's baseline, `min_posts` scored
posts, `min_baseline_windows`, once per window) for each keyword and for the all-keywords row
(keyword '*': drift is model-wide; '*' raises drift kinds only), against the baseline windows
that had posts and carry the figure (`drift_alerts`). n is the window's scored posts
(negative + neutral + positive):

- oov_drift: the window's oov_rate rising above the baseline mean. The spread is at least
  sqrt(p(1-p)/n) for the baseline rate p (a post's share of unknown tokens lies in [0, 1]
  with mean p, so its variance is at most p(1-p)), and at least `min_oov_std` (0.02), so a
  baseline that was flat at 1 % does not alert on a few odd posts.
- confidence_drift: the window's mean_confidence dropping below the baseline mean, the spread
  floored the same way (a confidence lies in [0, 1]: variance at most m(1-m), Bhatia-Davis)
  and at `min_confidence_std` (0.03).
- class_mix_drift: the window's (negative, neutral, positive) counts against the baseline's mean
  shares (each floored at `min_share_std`, renormalised), by Pearson's chi-square at n. The
  statistic is divided by the baseline's own overdispersion (the mean chi-square of its
  windows against the same shares, over 2, its expectation under a multinomial; at least 1),
  so a keyword whose mix always wanders does not alert on its usual wander. With 2 degrees of
  freedom the p-value is exp(-X2/2); zscore is the normal quantile of that p-value (zscore 3.0
  means p <= 0.00135, X2 >= 13.2). value: the total variation distance of the window's shares
  from the baseline's (the share of posts that would have to change class); baseline: the
  mean of that distance over the baseline windows (its usual size).
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
    min_oov_std: float = 0.02
    min_confidence_std: float = 0.03

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
    unsupported: int = 0  # posts no model labelled: in the volume, not in the negative share
    positive: int | None = None  # None: the row did not say (class mix not judged)
    neutral: int | None = None
    mean_confidence: float | None = None  # over scored posts
    oov_rate: float | None = None

    @property
    def labelled(self) -> int:
        return self.posts - self.unsupported


SURGE_KINDS = ("negative_surge", "volume_spike")
DRIFT_KINDS = ("oov_drift", "confidence_drift", "class_mix_drift")
KINDS = SURGE_KINDS + DRIFT_KINDS


def evaluate(current: WindowFigures, history: dict[float, WindowFigures], spec: AlertSpec,
             kinds: tuple = KINDS) -> list[dict]:
    """The alerts (kind, value, baseline, zscore) of `kinds` one window raises against its history.

    `history` maps window start -> figures; the baseline is the `baseline_windows`
    windows of the same size that end at or before `current.start`.
    """
    # A share needs min_posts labelled posts; a volume spike min_posts posts of any language.
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

    # The negative share is over labelled posts (unsupported_language posts have no label).
    labelled = [w for w in seen if w.labelled > 0]
    if current.labelled >= spec.min_posts and len(labelled) >= spec.min_baseline_windows:
        share = current.negative / current.labelled
        shares = [w.negative / w.labelled for w in labelled]
        mean_share = statistics.fmean(shares)
        p = min(max(mean_share, spec.min_share_std), 1 - spec.min_share_std)
        binomial = math.sqrt(p * (1 - p) / current.labelled)
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
    alerts += drift_alerts(current, seen, spec)
    return [a for a in alerts if a["kind"] in kinds]


def _scored(w: WindowFigures) -> int | None:
    """Posts with a label (negative + neutral + positive), or None when the row does not say."""
    if w.positive is None or w.neutral is None:
        return None
    return w.positive + w.neutral + w.negative


def _mix(w: WindowFigures) -> tuple[float, float, float]:
    n = _scored(w)
    return (w.negative / n, w.neutral / n, w.positive / n)


def _chi_square(w: WindowFigures, p: tuple[float, ...]) -> float:
    n = _scored(w)
    return sum((o - n * q) ** 2 / (n * q) for o, q in zip((w.negative, w.neutral, w.positive), p))


def _baseline(values: list[float], n: int, floor: float) -> tuple[float, float]:
    """(mean, spread) of a [0, 1] figure: spread max(pstdev, sqrt(m(1-m)/n), floor)."""
    mean = statistics.fmean(values)
    m = min(max(mean, 0.0), 1.0)
    return mean, max(statistics.pstdev(values), math.sqrt(m * (1 - m) / n), floor)


def drift_alerts(current: WindowFigures, seen: list[WindowFigures], spec: AlertSpec) -> list[dict]:
    """oov_drift, confidence_drift, class_mix_drift of `current` against the baseline windows
    `seen` (those with posts); each needs `min_baseline_windows` of them that carry its figure,
    and `current` needs `min_posts` scored posts."""
    n = _scored(current)
    n = current.posts - current.unsupported if n is None else n
    if n < spec.min_posts:
        return []
    alerts = []

    rates = [w.oov_rate for w in seen if w.oov_rate is not None]
    if current.oov_rate is not None and len(rates) >= spec.min_baseline_windows:
        mean, std = _baseline(rates, n, spec.min_oov_std)
        z = (current.oov_rate - mean) / std
        if z >= spec.zscore:
            alerts.append({"kind": "oov_drift", "value": current.oov_rate, "baseline": mean, "zscore": z})

    confidences = [w.mean_confidence for w in seen if w.mean_confidence is not None]
    if current.mean_confidence is not None and len(confidences) >= spec.min_baseline_windows:
        mean, std = _baseline(confidences, n, spec.min_confidence_std)
        z = (mean - current.mean_confidence) / std  # a drop
        if z >= spec.zscore:
            alerts.append({"kind": "confidence_drift", "value": current.mean_confidence, "baseline": mean,
                           "zscore": z})

    mixed = [w for w in seen if (_scored(w) or 0) > 0]
    if _scored(current) and len(mixed) >= spec.min_baseline_windows:
        shares = [_mix(w) for w in mixed]
        base = [statistics.fmean(s[i] for s in shares) for i in range(3)]
        floored = [max(q, spec.min_share_std) for q in base]
        p = tuple(q / sum(floored) for q in floored)
        dispersion = max(1.0, statistics.fmean(_chi_square(w, p) for w in mixed) / 2)
        x2 = _chi_square(current, p) / dispersion
        p_value = min(max(math.exp(-x2 / 2), 1e-300), 0.5)  # chi-square with 2 degrees of freedom
        z = -statistics.NormalDist().inv_cdf(p_value)
        if z >= spec.zscore:
            tvd = 0.5 * sum(abs(a - b) for a, b in zip(_mix(current), base))
            usual = statistics.fmean(0.5 * sum(abs(a - b) for a, b in zip(s, base)) for s in shares)
            alerts.append({"kind": "class_mix_drift", "value": tvd, "baseline": usual, "zscore": z})
    return alerts


def _figures(row: dict) -> WindowFigures:
    return WindowFigures(row["window_start"].timestamp(), row["window_end"].timestamp(), row["posts"],
                         row["negative"], tuple(row.get("_sample_post_ids") or ()), int(row.get("pane_index") or 0),
                         int(row.get("unsupported") or 0), positive=row.get("positive"), neutral=row.get("neutral"),
                         mean_confidence=row.get("mean_confidence"), oov_rate=row.get("oov_rate"))


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
        kinds = DRIFT_KINDS if keyword == ALL else KINDS  # all keywords together: drift only
        for start in starts:
            current = history[start]
            for alert in evaluate(current, history, self.spec, kinds):
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
    """SentimentWindow rows -> Alert rows (per keyword and for all keywords ('*': drift kinds only),
    all languages together)."""

    def __init__(self, spec: AlertSpec, allowed_lateness_s: int):
        super().__init__()
        self.spec = spec
        self.allowed_lateness_s = allowed_lateness_s

    def expand(self, windows):
        return (windows
                | "PerKeywordAllLanguages" >> beam.Filter(lambda row: row["lang"] == ALL)
                | "KeyByKeyword" >> beam.Map(lambda row: (row["keyword"], row)).with_output_types(
                    typing.Tuple[str, typing.Any])  # deterministic state key coder
                | "IntoGlobalWindow" >> beam.WindowInto(window.GlobalWindows())
                | "CompareWithBaseline" >> beam.ParDo(_DetectSurges(self.spec, self.allowed_lateness_s)))
