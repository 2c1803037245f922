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
so TestStream is the only source on which event time progresses as recorded. A
TestStream carries its events in the pipeline graph, so the streaming replay reads the
file when it is built and the whole file travels in the pipeline proto (a 21 MB file
made a 30 MB proto): it is for the DirectRunner, which runs in the launching process.

On other runners (Dataflow, Flink, the portable job service) the replay is a bounded
collection with the same messages and timestamps (batch semantics: one on-time pane per
window); stream a file into those with `pulse publish` and Pub/Sub instead. There the
launcher only checks that the file exists (through Beam's `FileSystems`, so `gs://`
works); a worker reads it (`FileSystems.open`, a chunk at a time, never the whole file
in memory), and a reshuffle spreads the messages over the workers for scoring. One
worker reads the whole file, on purpose: a replay is played in its own order, and a
line's arrival time is the newest event time of the lines before it, a sequential clock
that a split read (`ReadFromText`) could not compute, and its messages are "line N".
The wall-clock "now" that `event_time_of` compares created_at against (posts too far in
the future are dead letters and do not move the clock) is taken when the worker starts
reading, where the streaming replay takes it when the pipeline is built.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from typing import Iterable, Iterator, NamedTuple

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


def split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    r"""Bytes cut anywhere -> their lines, without line ending (b"\n", or b"\r\n").

    A final newline adds no line (so a file that is only b"\n" has none); an empty line
    before it is a line. Holds one line at a time.
    """
    pending: list[bytes] = []  # the parts of the line being read (all non-empty)
    held = False  # the first line is empty: a line only if anything follows (as the whole-file split had it)
    started = False
    for chunk in chunks:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                if start < len(chunk):
                    pending.append(chunk[start:])
                break
            line = chunk[start:end]
            start = end + 1
            if pending:
                pending.append(line)
                line = b"".join(pending)
                pending = []
            if held:
                held = False
                yield b""
            if not started:
                started = True
                if not line:
                    held = True
                    continue
            yield line[:-1] if line.endswith(b"\r") else line
    if held and pending:
        yield b""
    if pending:
        line = b"".join(pending)
        yield line[:-1] if line.endswith(b"\r") else line


_CHUNK_BYTES = 1 << 20


def iter_file_lines(path: str) -> Iterator[bytes]:
    """The file's lines (as `split_lines` cuts them), read through Beam's FileSystems a chunk at a time.

    A file that cannot be read raises FileNotFoundError("cannot read input file PATH: why").
    """
    try:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            yield from split_lines(iter(lambda: f.read(_CHUNK_BYTES), b""))
    except (OSError, ValueError) as e:  # (BeamIOError is an OSError; ValueError: no file system for the scheme)
        raise FileNotFoundError(f"cannot read input file {path}: {e}") from None


def read_lines(path: str) -> list[bytes]:
    """The file's lines as bytes, without their line ending; a final newline adds no line."""
    return list(iter_file_lines(path))


def check_exists(path: str) -> None:
    """Raises FileNotFoundError (one line) unless Beam's FileSystems finds `path`; reads nothing."""
    try:
        found = FileSystems.exists(path)
        reason = "no such file"
    except Exception as e:  # noqa: BLE001  (no file system for the scheme, no credentials, ...)
        found, reason = False, " ".join(str(e).split()) or type(e).__name__
    if not found:
        raise FileNotFoundError(f"cannot read input file {path}: {reason}")


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


class Arrival(NamedTuple):
    number: int  # the line's number in the file, from 1 ("line N")
    line: bytes
    arrival: float  # the replay clock when the line arrives (0.0 before any usable event time)


def arrivals(lines: Iterable[bytes], now: float | None = None,
             max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S) -> Iterator[Arrival]:
    """Lines in arrival order -> when each arrives: the newest usable event time so far.

    Only usable event times move the clock (see `event_time_of`); a line before any arrives
    at 0.0. `now` (for the future-skew check) is taken once, when the first line is asked for.
    The one clock of the replay: `plan_replay` and the bounded read both play it.
    """
    now = time.time() if now is None else now
    clock = None
    for number, line in enumerate(lines, start=1):
        event_time = event_time_of(line, now, max_future_skew_s)
        if event_time is not None:
            clock = event_time if clock is None else max(clock, event_time)
        yield Arrival(number, line, clock if clock is not None else 0.0)


def plan_replay(lines: list[bytes], tick_s: float = 5.0, now: float | None = None,
                max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S) -> list[Tick]:
    """Lines in arrival order -> ticks of messages, each followed by a watermark.

    The message's publish time is the clock when it arrives (`arrivals`); the watermark
    after a tick is one tick behind the clock, so posts up to a tick out of order are on time.
    """
    if tick_s <= 0:
        raise ValueError("tick must be positive")
    now = time.time() if now is None else now
    ticks: list[Tick] = []
    current: list[RawMessage] = []
    current_tick = None
    watermark = -math.inf
    for number, line, arrival in arrivals(lines, now, max_future_skew_s):
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


class _ReadReplayFile(beam.DoFn):
    """(On a worker) a file path -> its lines as bounded-replay messages, stamped with their arrival.

    Streams the file through FileSystems; batch semantics, so the recorded watermark is minus
    infinity (nothing is late). The future-skew check's "now" is when this worker starts reading.
    """

    def __init__(self, max_future_skew_s: float):
        self.max_future_skew_s = max_future_skew_s

    def process(self, path: str):
        for number, line, arrival in arrivals(iter_file_lines(path), None, self.max_future_skew_s):
            message = RawMessage(data=line, attributes={}, publish_time=arrival, watermark=-math.inf,
                                 message_id=f"line {number}")
            yield TimestampedValue(message, message.publish_time or 0.0)


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
    """A JSON-lines file -> RawMessage, as an unbounded stream (DirectRunner) or bounded collection.

    Streaming (`bounded=False`) reads the file now and carries it in the pipeline (TestStream);
    bounded only checks that the file exists, and the workers read it.
    """

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
        if bounded:
            check_exists(path)  # the workers read the file: nothing of it goes into the pipeline
            self.lines = None
        else:
            self.lines = read_lines(path)  # read at construction: the plan is part of the pipeline

    def expand(self, pbegin):
        if self.bounded:
            return (pbegin
                    | "FilePath" >> beam.Create([self.path])
                    | "ReadFile" >> beam.ParDo(_ReadReplayFile(self.max_future_skew_s))
                    | "SpreadOverWorkers" >> beam.Reshuffle())
        ticks = plan_replay(self.lines, self.tick_s, max_future_skew_s=self.max_future_skew_s)
        messages = [m for tick in ticks for m in tick.messages]
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
