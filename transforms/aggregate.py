"""Aggregate: SentimentWindow rows per event-time window, keyword and language.

    ScoredPost row (windowed) -> SentimentWindow row (dict, models.contracts.SENTIMENT_WINDOWS)
                                 one per (window, keyword, lang) pane

Each post counts under four keys: (keyword, lang), (keyword, '*'), ('*', lang) and
('*', '*'). The combine is lifted by hand: each bundle's posts are first summed per
window and key (`_StatsPerBundle`, one partial Stats per window and key per bundle), and
the GroupByKey merges those. Beam's Python DirectRunner does not lift combiners in a
streaming job, and grouping every post four times cost a trigger evaluation per post and
key (11 % of the job's time); a post that arrives after its window's on-time pane then
fires one late pane per bundle, not one per post. Panes accumulate (see
transforms/windowing.py), so every pane restates the
window in full and carries its index and timing (EARLY, ON_TIME, LATE). The figures are
plain sums that SQL over scored_posts reproduces exactly (connectors/query/ and the end-to-end test).

The accumulator also keeps the most negative post ids of the window, which alerts
quote as samples; they are not part of the SentimentWindow row.

A post no model labelled (a `skip_reason`, e.g. unsupported_language: label, score and
confidence NULL) counts in `posts` (the window's volume) and in `unsupported`, and in nothing
else: positive + neutral + negative = posts - unsupported, and the means, low_confidence and
oov_rate are over the labelled posts only (NULL when there are none).
"""
from __future__ import annotations

import dataclasses
import heapq

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.windowed_value import PaneInfoTiming, WindowedValue

from transforms.parse import NAMESPACE
from transforms.records import now_utc, utc_from_epoch

ALL = "*"
SAMPLE_POSTS = 3
_TIMING = {
    PaneInfoTiming.EARLY: "EARLY",
    PaneInfoTiming.ON_TIME: "ON_TIME",
    PaneInfoTiming.LATE: "LATE",
    PaneInfoTiming.UNKNOWN: "UNKNOWN",
}


@dataclasses.dataclass
class Stats:
    posts: int = 0
    unsupported: int = 0  # posts no model labelled (skip_reason set)
    positive: int = 0
    neutral: int = 0
    negative: int = 0
    score_sum: float = 0.0
    confidence_sum: float = 0.0
    low_confidence: int = 0
    tokens: int = 0
    oov: int = 0
    model_versions: frozenset = frozenset()
    most_negative: tuple = ()  # up to SAMPLE_POSTS (score, post_id), lowest score first


def keys_of(row: dict) -> list[tuple[tuple[str, str], dict]]:
    """A scored post -> the four (keyword, lang) keys it counts under (none if it arrived
    past its window's allowed lateness: no streaming pane can take it, see transforms/windowing.py)."""
    if row.get("beyond_lateness"):
        return []
    return [(key, row) for key in four_keys(row["keyword"], row["lang"])]


def four_keys(keyword: str, lang: str) -> tuple:
    return (keyword, lang), (keyword, ALL), (ALL, lang), (ALL, ALL)


def unlabelled(row: dict) -> bool:
    """A stored post no model labelled: a skip_reason (unsupported_language), or no label at all."""
    return row.get("skip_reason") is not None or row.get("label") is None


def add_post(stats: Stats, row: dict, low_confidence_below: float) -> Stats:
    if unlabelled(row):
        version = row.get("model_version")  # None for unsupported_language rows
        return dataclasses.replace(stats, posts=stats.posts + 1, unsupported=stats.unsupported + 1,
                                   model_versions=stats.model_versions | ({version} if version else set()))
    label = row["label"]
    negatives = stats.most_negative
    if label == "negative":
        negatives = tuple(heapq.nsmallest(SAMPLE_POSTS, negatives + ((row["score"], row["post_id"]),)))
    return Stats(
        posts=stats.posts + 1,
        unsupported=stats.unsupported,
        positive=stats.positive + (label == "positive"),
        neutral=stats.neutral + (label == "neutral"),
        negative=stats.negative + (label == "negative"),
        score_sum=stats.score_sum + row["score"],
        confidence_sum=stats.confidence_sum + row["confidence"],
        low_confidence=stats.low_confidence + (row["confidence"] < low_confidence_below),
        tokens=stats.tokens + (row.get("token_count") or 0),
        oov=stats.oov + (row.get("oov_count") or 0),
        model_versions=stats.model_versions | {row["model_version"]},
        most_negative=negatives,
    )


def merge(a: Stats, b: Stats) -> Stats:
    return Stats(
        posts=a.posts + b.posts,
        unsupported=a.unsupported + b.unsupported,
        positive=a.positive + b.positive,
        neutral=a.neutral + b.neutral,
        negative=a.negative + b.negative,
        score_sum=a.score_sum + b.score_sum,
        confidence_sum=a.confidence_sum + b.confidence_sum,
        low_confidence=a.low_confidence + b.low_confidence,
        tokens=a.tokens + b.tokens,
        oov=a.oov + b.oov,
        model_versions=a.model_versions | b.model_versions,
        most_negative=tuple(heapq.nsmallest(SAMPLE_POSTS, a.most_negative + b.most_negative)),
    )


class _StatsPerBundle(beam.DoFn):
    """ScoredPost rows (windowed) -> ((keyword, lang), Stats) per window and key, once per bundle.

    The four keys of `keys_of` are derived from the bundle's (keyword, lang) partials in
    finish_bundle, so each post is added once. Outputs carry their window and its last instant.
    """

    def __init__(self, low_confidence_below: float):
        self.low_confidence_below = low_confidence_below
        self._partials: dict = {}

    def start_bundle(self):
        self._partials = {}

    def process(self, row: dict, win=beam.DoFn.WindowParam):
        if row.get("beyond_lateness"):
            return  # no streaming pane can take it (see keys_of)
        key = (win, row["keyword"], row["lang"])
        self._partials[key] = add_post(self._partials.get(key) or Stats(), row, self.low_confidence_below)

    def finish_bundle(self):
        keyed: dict = {}
        for (win, keyword, lang), stats in self._partials.items():
            for key in four_keys(keyword, lang):
                known = keyed.get((win, key))
                keyed[(win, key)] = stats if known is None else merge(known, stats)
        self._partials = {}
        for (win, key), stats in keyed.items():
            yield WindowedValue((key, stats), win.max_timestamp(), (win,))


class MergeStatsFn(beam.CombineFn):
    """Partial Stats -> their sum (the second half of the lifted combine)."""

    def create_accumulator(self):
        return Stats()

    def add_input(self, acc, stats):
        return merge(acc, stats)

    def merge_accumulators(self, accs):
        out = Stats()
        for acc in accs:
            out = merge(out, acc)
        return out

    def extract_output(self, acc):
        return acc


def window_row(key: tuple[str, str], stats: Stats, window_start: float, window_end: float,
               pane_index: int, pane_timing: str, emitted_at=None) -> dict:
    """(key, Stats) of one pane -> a SentimentWindow row (plus the private `_sample_post_ids`)."""
    keyword, lang = key
    n = stats.posts - stats.unsupported  # the labelled posts: the means are theirs
    return {
        "window_start": utc_from_epoch(window_start),
        "window_end": utc_from_epoch(window_end),
        "keyword": keyword,
        "lang": lang,
        "posts": stats.posts,
        "unsupported": stats.unsupported,
        "positive": stats.positive,
        "neutral": stats.neutral,
        "negative": stats.negative,
        "mean_score": stats.score_sum / n if n else None,
        "mean_confidence": stats.confidence_sum / n if n else None,
        "low_confidence": stats.low_confidence,
        "oov_rate": stats.oov / stats.tokens if stats.tokens else None,
        "pane_index": pane_index,
        "pane_timing": pane_timing,
        "model_version": ",".join(sorted(stats.model_versions)) or None,
        "emitted_at": emitted_at or now_utc(),
        "_sample_post_ids": [post_id for _, post_id in stats.most_negative],
    }


class _ToWindowRow(beam.DoFn):
    def __init__(self):
        self.emitted = Metrics.counter(NAMESPACE, "windows_emitted")

    def process(self, keyed, win=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
        key, stats = keyed
        self.emitted.inc()
        yield window_row(key, stats, float(win.start), float(win.end), pane.index,
                         _TIMING.get(pane.timing, "UNKNOWN"))


def public_row(row: dict) -> dict:
    """Drop the private fields (leading underscore) before a row is written."""
    return {k: v for k, v in row.items() if not k.startswith("_")}


class WindowedSentiment(beam.PTransform):
    """ScoredPost rows (already in event-time windows) -> SentimentWindow rows, one per key and pane.

    With sliding windows the posts are re-stamped with their event time and re-windowed
    here (RunInference's batching stamps outputs with the window's end).
    """

    def __init__(self, rewindow: beam.WindowInto | None, low_confidence_below: float):
        super().__init__()
        self.rewindow = rewindow
        self.low_confidence_below = low_confidence_below

    def expand(self, scored):
        if self.rewindow is not None:
            scored = (scored
                      | "LeaveOutBeyondLateness" >> beam.Filter(lambda row: not row.get("beyond_lateness"))
                      | "StampEventTime" >> beam.Map(
                          lambda row: TimestampedValue(row, row["created_at"].timestamp()))
                      | "SlidingWindows" >> self.rewindow)
        return (scored
                | "StatsPerBundle" >> beam.ParDo(_StatsPerBundle(self.low_confidence_below))
                | "CombineStats" >> beam.CombinePerKey(MergeStatsFn())
                | "ToWindowRows" >> beam.ParDo(_ToWindowRow()))
