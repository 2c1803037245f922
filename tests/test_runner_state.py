"""What the DirectRunner keeps for a long job: no keys for expired windows, no per-bundle metric containers.

The whole job (`pulse run`'s entry point, the tiny model) replays posts spread over many
windows. Afterwards the runner's keyed state holds only what is meant to outlive a window:
the replay's watermark and one key per keyword for the alert baselines (bounded by their
own timer). Every window's aggregation state was dropped when the window expired
(pipelines/direct_runner/triggers.py), every dedup bucket was emptied by its timer, and the
keys left empty were forgotten (pipelines/direct_runner/state.py), so nothing stays behind
to be scanned on each pass of the runner's loop or to hold memory. And the number of live MetricsContainers
(pipelines/direct_runner/metrics.py) does not grow with the number of bundles: a run with
six times the bundles leaves as many as a short one. Nothing here is timed.
"""
import datetime as dt
import json

import pytest

from pipelines.direct_runner import metrics as direct_runner_metrics, state as direct_runner_state
from pipelines import sentiment_pipeline
from pipelines.sentiment_pipeline import counters

pytestmark = [pytest.mark.integration, pytest.mark.slow]
UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
# Keys meant to outlive the windows: the replay's watermark, the alert history of each keyword
# and of '*' (all keywords: the drift alerts).
LASTING = {"ReadPosts/PlayFile/_WatermarkController": 1, "Alert/CompareWithBaseline": 3}


def lines(posts: int, minutes: int) -> bytes:
    out = []
    for i in range(posts):
        created = T0 + dt.timedelta(seconds=i * minutes * 60 / posts)
        out.append(json.dumps({"id": f"p{i}", "text": ("good trip", "bad delay", "ok")[i % 3],
                               "created_at": created.isoformat(), "keyword": ("acme", "globex")[i % 2],
                               "lang": "en"}))
        if i % 50 == 0:
            out.append(out[-1])  # a redelivery
    return ("\n".join(out) + "\n").encode()


def replay(tmp_path, model, name, posts, minutes):
    src = tmp_path / f"{name}.jsonl"
    src.write_bytes(lines(posts, minutes))
    result = sentiment_pipeline.run(["--input", str(src), "--output", str(tmp_path / name), "--model", str(model),
                                     "--replay_tick", "10", "--allowed_lateness", "60"])
    c = counters(result)
    assert c["read"] == posts + (posts + 49) // 50 and c["scored"] == posts, c
    return result, c


def test_expired_windows_leave_no_keyed_state_and_containers_do_not_grow(tmp_path, tiny_bundled_model):
    short, _ = replay(tmp_path, tiny_bundled_model, "short", 300, 5)
    short_containers = direct_runner_metrics.live_containers()
    assert direct_runner_state.keyed_state_counts(short) == LASTING
    del short

    long, c = replay(tmp_path, tiny_bundled_model, "long", 3000, 30)
    # Every dedup pair held was forgotten by its timer, and every key of every stateful step
    # (dedup buckets, aggregation keys, alert keywords) was dropped once its state was empty.
    assert c["dedup_state_cleared"] == c["unique"] == 3000
    assert direct_runner_state.keyed_state_counts(long) == LASTING
    long_containers = direct_runner_metrics.live_containers()
    # The long run had about six times the bundles of every step; a container kept per bundle
    # would show as hundreds more.
    assert long_containers <= short_containers + 10, (short_containers, long_containers)
