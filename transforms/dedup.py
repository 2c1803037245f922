"""Deduplicate: drop repeated posts by (post id, keyword), counting each duplicate.

    Post (stamped, global window) -> Post (the first copy of each (id, keyword))

Pub/Sub delivers at least once and the X API connector may see a post twice. A post
collected for two keywords is published once per keyword and counts once for each:
it is the pair that is unique, as scored_posts' key is. On Dataflow the read also
passes the `post_key` attribute (id and keyword) as `id_label`, but Beam's Python
DirectRunner rejects `id_label`, so the job de-duplicates itself with a stateful DoFn.

The state is kept in the global window, so a redelivery is caught whichever window it
lands in (one that arrives past the allowed lateness is stamped at its arrival, see
transforms/windowing.py). A post may be forgotten once the watermark has passed its
window end + allowed lateness + `redelivery_horizon_s` (default: the allowed lateness
again); an event-time timer clears it then, so memory stays bounded in a job that runs
for months (`dedup_state_cleared` counts the posts forgotten). A copy that arrives later
than that is stored again; the SQL views keep one row per (post id, keyword). A
duplicate is counted (`duplicates`) rather than dead-lettered: it is the same post,
already accounted for.

The state is keyed by a bucket of the (post id, keyword) pair (`BUCKETS` buckets, a
stable CRC-32 of the pair), not by the pair itself: one key per post made the number of
keys, and with them the runner's timer scans, grow with the traffic (the DirectRunner
scans every key's timers on each pass: 46 % of the job's time after a minute at 450
msg/s). Per bucket the state maps each forget time to the pairs to forget then, as one
byte string of separated pairs (a pair cannot hold a control character, ParsePosts
checks), so a lookup is a substring search and a state write one copy, whatever the
number of pairs; one timer per bucket fires at the earliest forget time.

Buckets pay on the DirectRunner only. On a runner with a real state backend (Dataflow,
Flink, Prism) a bucket's state is rewritten whole on every commit (at 10k msg/s about 1.5 MB
per key per write), so there the state is keyed by the pair itself: one byte of state and
one timer per (post id, keyword), each write one byte (`_FirstSeenPerPair`). `per_pair`
chooses; by default the DirectRunner gets buckets and every other runner pairs.
"""
from __future__ import annotations

import math
import typing
import zlib

import apache_beam as beam
from apache_beam.coders import BooleanCoder, PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from transforms.parse import NAMESPACE
from transforms.records import Post

BUCKETS = 256  # state keys of the dedup step, whatever the traffic
SEP = b"\x1e"


def forget_at(timestamp: float, window_s: float, allowed_lateness_s: float, horizon_s: float) -> float:
    """When the first copy of a post stamped `timestamp` may be forgotten (epoch seconds)."""
    end = math.floor(timestamp / window_s) * window_s + window_s
    return end + allowed_lateness_s + horizon_s


class _Dedup(beam.DoFn):
    """What both ways of keeping first copies share: the forget rule's settings and the counters."""

    def __init__(self, window_s: float, allowed_lateness_s: float, horizon_s: float):
        self.window_s = window_s
        self.allowed_lateness_s = allowed_lateness_s
        self.horizon_s = horizon_s
        self.duplicates = Metrics.counter(NAMESPACE, "duplicates")
        self.unique = Metrics.counter(NAMESPACE, "unique")
        self.cleared = Metrics.counter(NAMESPACE, "dedup_state_cleared")


class _FirstSeen(_Dedup):
    # forget time (epoch seconds) -> b"\x1epair\x1epair...\x1e" (the pairs first seen with that forget time)
    SEEN = ReadModifyWriteStateSpec("seen", PickleCoder())
    FORGET = TimerSpec("forget", TimeDomain.WATERMARK)

    def process(self, keyed: tuple[int, Post], timestamp=beam.DoFn.TimestampParam,
                seen=beam.DoFn.StateParam(SEEN), forget=beam.DoFn.TimerParam(FORGET)):
        _, post = keyed
        pair = dedup_key(post).encode("utf-8")
        held = seen.read() or {}
        needle = SEP + pair + SEP
        if any(needle in pairs for pairs in held.values()):
            self.duplicates.inc()
            return
        when = forget_at(float(timestamp), self.window_s, self.allowed_lateness_s, self.horizon_s)
        held[when] = held.get(when, SEP) + pair + SEP
        seen.write(held)
        forget.set(Timestamp.of(min(held)))
        self.unique.inc()
        yield post

    @on_timer(FORGET)
    def forget_first_copies(self, fired=beam.DoFn.TimestampParam, seen=beam.DoFn.StateParam(SEEN),
                            forget=beam.DoFn.TimerParam(FORGET)):
        held = seen.read() or {}
        for when in [when for when in held if when <= float(fired)]:
            self.cleared.inc(held.pop(when).count(SEP) - 1)
        if held:
            seen.write(held)
            forget.set(Timestamp.of(min(held)))
        else:
            seen.clear()


class _FirstSeenPerPair(_Dedup):
    """Keyed by the (post id, keyword) pair: whether its first copy was seen, and one timer that
    forgets it at `forget_at`."""
    SEEN = ReadModifyWriteStateSpec("seen", BooleanCoder())
    FORGET = TimerSpec("forget", TimeDomain.WATERMARK)

    def process(self, keyed: tuple[str, Post], timestamp=beam.DoFn.TimestampParam,
                seen=beam.DoFn.StateParam(SEEN), forget=beam.DoFn.TimerParam(FORGET)):
        _, post = keyed
        if seen.read():
            self.duplicates.inc()
            return
        seen.write(True)
        forget.set(Timestamp.of(forget_at(float(timestamp), self.window_s, self.allowed_lateness_s, self.horizon_s)))
        self.unique.inc()
        yield post

    @on_timer(FORGET)
    def forget_first_copy(self, seen=beam.DoFn.StateParam(SEEN)):
        if seen.read():
            self.cleared.inc()
        seen.clear()


def bucket_of(pair: str, buckets: int = BUCKETS) -> int:
    """The dedup state key of a (post id, keyword) pair: stable across processes and runs."""
    return zlib.crc32(pair.encode("utf-8")) % buckets


def dedup_key(post: Post) -> str:
    """(post id, keyword) as one str; neither can hold a control character (ParsePosts checks)."""
    return f"{post.post_id}\x1f{post.keyword}"


class Deduplicate(beam.PTransform):
    """Post stamped with its event time, in the global window (StampEventTime's output) -> Post,
    one per (post id, keyword). The job windows the posts after this step."""

    def __init__(self, window_s: float, allowed_lateness_s: float, redelivery_horizon_s: float | None = None,
                 per_pair: bool | None = None):
        super().__init__()
        self.window_s = window_s
        self.allowed_lateness_s = allowed_lateness_s
        self.horizon_s = allowed_lateness_s if redelivery_horizon_s is None else redelivery_horizon_s
        self.per_pair = per_pair  # None: pairs everywhere but on the Python DirectRunner

    def expand(self, posts):
        per_pair = self.per_pair
        if per_pair is None:
            from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner, SwitchingDirectRunner

            per_pair = not isinstance(posts.pipeline.runner, (BundleBasedDirectRunner, SwitchingDirectRunner))
        if per_pair:
            return (posts
                    | "KeyByPair" >> beam.Map(lambda post: (dedup_key(post), post)).with_output_types(
                        typing.Tuple[str, typing.Any])
                    | "KeepFirstCopy" >> beam.ParDo(
                        _FirstSeenPerPair(self.window_s, self.allowed_lateness_s, self.horizon_s)))
        return (posts
                # An int key gets Beam's deterministic VarIntCoder for the state key.
                | "KeyByBucket" >> beam.Map(lambda post: (bucket_of(dedup_key(post)), post)).with_output_types(
                    typing.Tuple[int, typing.Any])
                | "KeepFirstCopy" >> beam.ParDo(_FirstSeen(self.window_s, self.allowed_lateness_s, self.horizon_s)))
