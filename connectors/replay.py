"""ReplayPosts: a JSON-lines file of posts played as an unbounded stream.

    PBegin -> RawMessage (timestamped with its simulated arrival time)

    pulse run --input data/sample_stream.jsonl --output out --speedup 0

Every line of the file is one message, byte for byte (a line that is not a valid post
becomes a dead letter downstream, like a bad Pub/Sub message). The file is played in
its own order, which is the arrival order: `make data` writes the sample in event-time
order with a few posts deliberately placed later than their event time (late data).

The simulated clock is the newest event time seen so far. Lines are released in ticks
of `tick_s` seconds of that clock; after each tick the watermark moves to one tick
behind the clock, and processing time moves by the same amount, so early panes fire as
they would in production. A line without a readable `created_at` arrives "now" on the
clock, as a Pub/Sub message without an event time would. At the end of the file the
watermark goes to infinity: every window fires (late panes included) and the job ends.

`speedup` paces the replay against the wall clock: 60 plays an hour in a minute; 0
plays as fast as the runner goes (the default, and what the tests use).

Why TestStream: Beam's Python DirectRunner holds a splittable DoFn's output watermark
at minus infinity until it finishes, and uses wall-clock time as Pub/Sub's watermark,
so TestStream is the only source on which event time progresses as recorded. On other
runners (Dataflow, Flink, the portable job service) the replay reads the file as a
bounded collection with the same timestamps (batch semantics: one on-time pane per
window); stream a file into those with `pulse publish` and Pub/Sub instead.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue

from models.contracts import DEFAULT_MAX_FUTURE_SKEW_S, RawMessage, event_time_problem, parse_rfc3339

MAX_LINE_BYTES = 256 * 1024  # longer lines are dead letters (transforms/parse.py MAX_PAYLOAD_BYTES)

_LOG = logging.getLogger(__name__)


class Tick(NamedTuple):
    messages: list  # RawMessage, in arrival order
    watermark: float  # where the watermark moves after these messages


def read_lines(path: str) -> list[bytes]:
    """The file's lines as bytes, without their line ending; a final newline adds no line."""
    try:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            data = f.read()
    except (OSError, IOError) as e:
        raise FileNotFoundError(f"cannot read input file {path}: {e}") from None
    if data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        return []
    return [line[:-1] if line.endswith(b"\r") else line for line in data.split(b"\n")]


def event_time_of(line: bytes, now: float | None = None,
                  max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S) -> float | None:
    """The line's created_at as epoch seconds, or None when it has none that parses and is usable.

    Whatever the line holds (deep nesting, huge numbers, bad bytes), this never raises. A
    created_at out of range or ahead of the wall clock by more than `max_future_skew_s`
    is None too: such a post is a dead letter and must not move the replay's clock.
    """
    if len(line) > MAX_LINE_BYTES or line.count(b"[") + line.count(b"{") > 64:
        return None
    try:
        body = json.loads(line)
        event_time = parse_rfc3339(body["created_at"]).timestamp()
    except Exception:  # noqa: BLE001  (any line may be hostile; ParsePosts says why)
        return None
    now = time.time() if now is None else now
    return None if event_time_problem(event_time, now, max_future_skew_s) else event_time


def plan_replay(lines: list[bytes], tick_s: float = 5.0, now: float | None = None,
                max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S) -> list[Tick]:
    """Lines in arrival order -> ticks of messages, each followed by a watermark.

    The message's publish time is the clock when it arrives; the watermark after a tick
    is one tick behind the clock, so posts up to a tick out of order are on time. Only
    usable event times move the clock (see `event_time_of`).
    """
    if tick_s <= 0:
        raise ValueError("tick must be positive")
    now = time.time() if now is None else now
    ticks: list[Tick] = []
    clock = None
    current: list[RawMessage] = []
    current_tick = None
    watermark = -math.inf
    for number, line in enumerate(lines, start=1):
        event_time = event_time_of(line, now, max_future_skew_s)
        if event_time is not None:
            clock = event_time if clock is None else max(clock, event_time)
        arrival = clock if clock is not None else 0.0
        tick = math.floor(arrival / tick_s)
        if current_tick is not None and tick != current_tick and current:
            watermark = max(watermark, (tick - 1) * tick_s)
            ticks.append(Tick(current, watermark))
            current = []
        current_tick = tick
        current.append(RawMessage(line, {}, arrival, watermark if watermark > -math.inf else None,
                                  f"line {number}"))
    if current:
        ticks.append(Tick(current, math.inf))
    return ticks


def _with_watermark(message: RawMessage) -> RawMessage:
    # Before the first tick the watermark is at minus infinity: nothing can be late yet.
    return message if message.watermark is not None else message._replace(watermark=-math.inf)


_PROGRESS: dict[str, list] = {}  # per replay: [messages seen, next share to report]
_PROGRESS_LOCK = threading.Lock()


class _Pace(beam.DoFn):
    """Holds each message until its arrival time, scaled by the speed-up, has come on the wall clock.

    Also logs progress every 10 %. The DirectRunner deserialises a DoFn per bundle, so the
    tally lives at module level, keyed by this replay's id (the replay runs in one process).
    """

    def __init__(self, speedup: float, first_arrival: float, total: int):
        self.speedup = speedup
        self.first_arrival = first_arrival
        self.total = total
        self.replay_id = uuid.uuid4().hex

    def process(self, message: RawMessage):
        if self.speedup > 0 and message.publish_time is not None:
            with _PROGRESS_LOCK:
                tally = _PROGRESS.setdefault(self.replay_id, [0, 0.0, time.monotonic()])
            due = tally[2] + (message.publish_time - self.first_arrival) / self.speedup
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        with _PROGRESS_LOCK:
            tally = _PROGRESS.setdefault(self.replay_id, [0, 0.0, time.monotonic()])
            tally[0] += 1
            seen, share = tally[0], tally[0] / self.total
            report = share >= tally[1] or seen == self.total
            if report:
                tally[1] = share + 0.1
        if report:
            _LOG.info("replay: %d/%d messages (%.0f%%)", seen, self.total, 100 * share)
        yield message


class ReplayPosts(beam.PTransform):
    """A JSON-lines file -> RawMessage, as an unbounded stream (DirectRunner) or bounded collection."""

    def __init__(self, path: str, speedup: float = 0.0, tick_s: float = 5.0, bounded: bool = False,
                 max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S):
        super().__init__()
        self.max_future_skew_s = max_future_skew_s
        if speedup < 0:
            raise ValueError("speedup cannot be negative")
        self.path = path
        self.speedup = speedup
        self.tick_s = tick_s
        self.bounded = bounded
        self.lines = read_lines(path)  # read at construction: the plan is part of the pipeline

    def expand(self, pbegin):
        ticks = plan_replay(self.lines, self.tick_s, max_future_skew_s=self.max_future_skew_s)
        messages = [m for tick in ticks for m in tick.messages]
        if self.bounded:
            # Batch semantics: nothing is late, so the watermark recorded on messages is minus infinity.
            return (pbegin
                    | "ReadFile" >> beam.Create([m._replace(watermark=-math.inf) for m in messages])
                    | "StampArrivalTime" >> beam.Map(lambda m: TimestampedValue(m, m.publish_time or 0.0)))
        stream = TestStream()
        previous = None
        for tick in ticks:
            stream.add_elements([TimestampedValue(_with_watermark(m), m.publish_time or 0.0)
                                 for m in tick.messages])
            if math.isinf(tick.watermark):
                break
            if previous is not None and tick.watermark > previous:
                stream.advance_processing_time(tick.watermark - previous)
            stream.advance_watermark_to(tick.watermark)
            previous = tick.watermark
        stream.advance_watermark_to_infinity()
        first = messages[0].publish_time if messages else 0.0
        return (pbegin
                | "PlayFile" >> stream
                | "PaceAndReport" >> beam.ParDo(_Pace(self.speedup, first or 0.0, max(len(messages), 1))))
