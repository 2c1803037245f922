"""The replay plan: arrival order, watermark one tick behind the clock, nothing lost."""
import json
import math

from connectors.sources.replay import plan_replay, read_lines


def line(pid, t):
    return json.dumps({"id": pid, "text": "x", "created_at": f"2026-11-24T14:00:{t:02d}Z"}).encode()


def test_read_lines_keeps_every_line_byte_for_byte(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a": 1}\r\n\xff\xfe\n\n{"b": 2}\n')
    assert read_lines(str(path)) == [b'{"a": 1}', b"\xff\xfe", b"", b'{"b": 2}']


def test_plan_ticks_watermarks_and_late_lines():
    lines = [line("a", 1), line("b", 3), b"garbage", line("c", 12), line("late", 2), line("d", 21)]
    ticks = plan_replay(lines, tick_s=5)
    played = [m.data for t in ticks for m in t.messages]
    assert played == lines  # file order, nothing dropped
    assert ticks[-1].watermark == math.inf
    watermarks = [t.watermark for t in ticks[:-1]]
    assert watermarks == sorted(watermarks)
    by_data = {m.data: m for t in ticks for m in t.messages}
    # garbage arrives "now" on the clock; the late line arrives after the watermark passed its time.
    assert by_data[b"garbage"].publish_time == by_data[line("b", 3)].publish_time
    late = by_data[line("late", 2)]
    assert late.watermark is not None and late.watermark > late.publish_time - 10
    first_tick_times = {m.publish_time for m in ticks[0].messages}
    assert all(m.watermark is None for m in ticks[0].messages) and len(first_tick_times) == 2
