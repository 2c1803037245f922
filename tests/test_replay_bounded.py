"""The bounded replay (every non-Direct runner): the workers read the file, the pipeline carries only its path.

The launcher checks that the file exists through Beam's FileSystems; a worker streams it
and plays the replay's clock (`arrivals`, the one `plan_replay` uses), so the messages
are exactly those of the streaming plan, with batch semantics (watermark minus infinity).

    .venv/bin/pytest tests/test_replay_bounded.py -q
"""
import datetime as dt
import json
import math

import apache_beam as beam
import pytest
from apache_beam.io.localfilesystem import LocalFileSystem
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils.timestamp import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.sources import replay
from connectors.sources.replay import MAX_LINE_BYTES, ReplayPosts, arrivals, plan_replay, read_lines, split_lines

T0 = dt.datetime(2026, 11, 24, 14, 0, tzinfo=dt.timezone.utc)
NOW = (T0 + dt.timedelta(days=1)).timestamp()


def post(pid: str, seconds: float | None, **extra) -> bytes:
    body = {"id": pid, "text": "a post", "keyword": "acme", **extra}
    if seconds is not None:
        body["created_at"] = (T0 + dt.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
    return json.dumps(body).encode()


def observed(message, timestamp=beam.DoFn.TimestampParam):
    """What a message is, as a comparable tuple (RawMessage holds a dict)."""
    return (message.message_id, message.data, sorted(message.attributes.items()), message.publish_time,
            message.watermark, timestamp.micros)


def expected_from_plan(path: str, tick_s: float = 5.0) -> list[tuple]:
    """The messages the bounded replay gave when it was a Create of the streaming plan."""
    messages = [m._replace(watermark=-math.inf) for tick in plan_replay(read_lines(path), tick_s)
                for m in tick.messages]
    return [(m.message_id, m.data, [], m.publish_time, m.watermark, Timestamp.of(m.publish_time or 0.0).micros)
            for m in messages]


def run_bounded(path: str, expected: list) -> None:
    """The bounded replay through a real runner gives exactly `expected` (as `observed` tuples)."""
    source = ReplayPosts(path, bounded=True)
    assert source.lines is None  # the launcher holds nothing of the file
    with beam.Pipeline(runner=FnApiRunner()) as p:
        assert_that(p | source | beam.Map(observed), equal_to(expected))


# A file with a bit of everything: lines before any event time, late lines, lines without
# created_at, a future post (a dead letter that must not move the clock), a CRLF line, an
# empty line in the middle, invalid UTF-8, deep nesting, a line over MAX_LINE_BYTES.
HOSTILE_FILE = b"\n".join([
    b"not json, before any event time",
    post("no-time-first", None),
    post("a", 10),
    post("b", 40) + b"\r",  # a CRLF line
    post("late", 5),  # late: the clock stays at 40
    b"",  # an empty line in the middle
    b"\xff\xfe not utf-8",
    b"[" * 50_000 + b"]" * 50_000,
    post("future", None, created_at="2062-01-01T00:00:00Z"),
    post("huge", 60, text="y" * (MAX_LINE_BYTES + 10)),  # past the cap: no event time
    post("no-time", None),
    post("c", 75),
    post("after-c", 70),
]) + b"\n"


def test_bounded_read_gives_the_messages_the_old_bounded_path_gave(tmp_path, monkeypatch):
    path = tmp_path / "in.jsonl"
    path.write_bytes(HOSTILE_FILE)
    monkeypatch.setattr(replay, "_CHUNK_BYTES", 7)  # lines cut across many reads
    got = expected_from_plan(str(path))
    run_bounded(str(path), got)
    # ... and those are the right messages, not only the same.
    t0 = T0.timestamp()
    assert [row[0] for row in got] == [f"line {n}" for n in range(1, 14)]  # the final newline adds no line
    assert [row[3] for row in got] == [0.0, 0.0, t0 + 10, t0 + 40, t0 + 40, t0 + 40, t0 + 40, t0 + 40,
                                       t0 + 40, t0 + 40, t0 + 40, t0 + 75, t0 + 75]
    assert got[3][1] == post("b", 40) and got[5][1] == b"" and got[6][1] == b"\xff\xfe not utf-8"
    assert all(row[4] == -math.inf and row[2] == [] for row in got)


def test_the_launcher_reads_nothing_and_the_worker_reads_the_file_when_the_job_runs(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(post("old", 1) + b"\n")
    source = ReplayPosts(str(path), bounded=True)
    path.write_bytes(post("new", 2) + b"\n" + post("newer", 3) + b"\n")  # after the pipeline was built
    with beam.Pipeline(runner=FnApiRunner()) as p:
        assert_that(p | source | beam.Map(lambda m: m.data), equal_to([post("new", 2), post("newer", 3)]))


def test_a_large_file_stays_out_of_the_bounded_pipeline_proto(tmp_path):
    """Only the path travels to a remote runner. The streaming replay (TestStream) carries every
    line in the graph: that is why it is the DirectRunner's, which runs where it was built."""
    path = tmp_path / "big.jsonl"
    lines = [post(f"p{i}", i % 3600, text="x" * 200) for i in range(20_000)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    size = path.stat().st_size
    assert size > 5_000_000

    def proto_bytes(bounded: bool) -> int:
        p = beam.Pipeline()
        _ = p | ReplayPosts(str(path), bounded=bounded) | beam.Map(lambda m: None)
        return p.to_runner_api().ByteSize()

    bounded, streaming = proto_bytes(True), proto_bytes(False)
    print(f"file {size} B, bounded pipeline proto {bounded} B, streaming {streaming} B")
    assert bounded < 100_000
    assert streaming > size


def test_a_missing_file_fails_at_construction_in_one_line(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    for bounded in (True, False):
        with pytest.raises(FileNotFoundError) as e:
            ReplayPosts(missing, bounded=bounded)
        assert str(e.value).startswith(f"cannot read input file {missing}: ") and "\n" not in str(e.value)
        # A scheme no file system serves is asked of Beam's FileSystems, and said in one line too.
        with pytest.raises(FileNotFoundError, match=r"^cannot read input file nofs://b/in.jsonl: [^\n]+$"):
            ReplayPosts("nofs://b/in.jsonl", bounded=bounded)


class _CountingFileSystem(LocalFileSystem):
    """`replaytest:///abs/path` -> the local file, with every call logged: a stand-in for gs://.

    Beam picks a FileSystem by the path's scheme among FileSystem's subclasses, so defining it
    registers it (for this scheme only)."""

    calls: list = []

    @classmethod
    def scheme(cls):
        return "replaytest"

    @staticmethod
    def _local(path):
        return path[len("replaytest://"):]

    def exists(self, path):
        _CountingFileSystem.calls.append(("exists", path))
        return super().exists(self._local(path))

    def open(self, path, *args, **kwargs):
        _CountingFileSystem.calls.append(("open", path))
        return super().open(self._local(path), *args, **kwargs)


def test_the_file_is_found_and_read_through_beam_filesystems(tmp_path):
    local = tmp_path / "in.jsonl"
    local.write_bytes(HOSTILE_FILE)
    url = f"replaytest://{local}"  # an absolute path behind a scheme, as gs://bucket/in.jsonl would be
    _CountingFileSystem.calls.clear()
    source = ReplayPosts(url, bounded=True)
    assert _CountingFileSystem.calls == [("exists", url)]  # construction opens nothing
    with beam.Pipeline(runner=FnApiRunner()) as p:
        assert_that(p | source | beam.Map(observed), equal_to(expected_from_plan(str(local))))
    assert _CountingFileSystem.calls == [("exists", url), ("open", url)]  # the worker read it, once


# Lines as a replay file holds them (no b"\n" inside): posts at any time (late ones
# included), posts without or with a broken created_at, hostile bytes.
LINES = st.one_of(
    st.builds(post, st.sampled_from(["a", "b", "c"]), st.one_of(st.none(), st.floats(-4e8, 1e6))),
    st.builds(post, st.just("f"), st.none(),
              created_at=st.sampled_from(["2062-01-01T00:00:00Z", "yesterday", "", "2026-13-01T00:00:00Z"])),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
    st.sampled_from([b"", b"\r", b"null", b"[" * 70 + b"]" * 70, b'{"created_at": 1}', b"\xff\xfe"]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(LINES, max_size=40), tick_s=st.sampled_from([0.5, 5.0, 60.0]))
def test_the_arrival_clock_is_the_one_plan_replay_plays(lines, tick_s):
    played = list(arrivals(lines, now=NOW))
    planned = [(int(m.message_id.split()[1]), m.data, m.publish_time)
               for tick in plan_replay(lines, tick_s, now=NOW) for m in tick.messages]
    assert [tuple(a) for a in played] == planned
    assert [a.line for a in played] == lines
    clock = [a.arrival for a in played]
    assert clock == sorted(clock)  # the clock never goes back
    usable = [replay.event_time_of(line, NOW) for line in lines]
    for a, seen in zip(played, (max([t for t in usable[:n] if t is not None], default=0.0)
                                for n in range(1, len(lines) + 1))):
        assert a.arrival == seen


def old_read_lines(data: bytes) -> list[bytes]:
    """read_lines as it was: the whole file split at once."""
    if data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        return []
    return [line[:-1] if line.endswith(b"\r") else line for line in data.split(b"\n")]


@settings(max_examples=500, deadline=None)
@given(data=st.lists(st.sampled_from([b"\n", b"\r", b"\r\n", b"\n\n", b"a", b"bc", b"\xff", b"{}"]))
       .map(b"".join), cuts=st.lists(st.integers(0, 64), max_size=12))
def test_lines_read_a_chunk_at_a_time_are_the_lines_of_the_whole_file(data, cuts):
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in zip(points, points[1:])] + [b""]
    assert list(split_lines(chunks)) == old_read_lines(data)


def test_read_lines_is_unchanged_on_a_real_file(tmp_path, monkeypatch):
    path = tmp_path / "in.jsonl"
    path.write_bytes(HOSTILE_FILE)
    monkeypatch.setattr(replay, "_CHUNK_BYTES", 3)
    assert read_lines(str(path)) == old_read_lines(HOSTILE_FILE)
