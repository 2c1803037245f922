"""The streaming job against the Pub/Sub emulator on the DirectRunner.

One job run (module fixture) reads a subscription holding valid posts, malformed
messages and redelivered duplicates, writes Parquet tables, and publishes alerts to an
alerts topic. Beam's Python DirectRunner puts the Pub/Sub watermark at wall-clock time,
so the posts carry event times around "now": a quiet baseline in the last minute and a
burst for one keyword in a window that closes while the job runs.
"""
import datetime as dt
import json
import os
import time

import duckdb
import pytest

from connectors.feeds.publisher import Message, Publisher, post_message, rfc3339
from pipelines import sentiment_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WINDOW_S = 10
RUN_FOR_S = 45
TEXTS = ("I love this, best service ever", "worst delay, I hate this", "the flight is at noon",
         "great crew and great food", "terrible, my bag is lost again")
MALFORMED = [b"{not json", b"[1, 2]", json.dumps({"id": "no-text"}).encode(), b"\xff\xfe not utf-8",
             json.dumps({"id": "bad-time", "text": "t", "created_at": "noon"}).encode()]
# The hostile messages that once lost their valid neighbours on this path (named regressions).
HOSTILE_PARSE = [b"[" * 10_000 + b"]" * 10_000,
                 b'{"id": "big", "text": "t", "retweets": ' + b"9" * 5000 + b"}",
                 b'{"id": "kw-surrogate", "text": "t", "keyword": "\\udc00"}',
                 json.dumps({"id": "star-kw", "text": "t", "keyword": "*"}).encode(),
                 json.dumps({"id": "star-lang", "text": "t", "lang": "*"}).encode()]
HOSTILE_WINDOW = [json.dumps({"id": "year-1", "text": "t", "created_at": "0001-01-01T00:00:00+05:30"}).encode(),
                  json.dumps({"id": "y9999", "text": "t", "created_at": "9999-12-31T23:59:59-05:00"}).encode(),
                  json.dumps({"id": "end", "text": "t", "created_at": "9999-12-31T23:59:59Z"}).encode(),
                  json.dumps({"id": "2062", "text": "t", "created_at": "2062-01-01T00:00:00Z"}).encode()]


def half_emoji(created_at: str) -> bytes:
    """A valid post whose text ends in half an emoji (a lone surrogate escape): repaired and scored."""
    return (b'{"id": "half-emoji", "text": "hi \\ud83d", "keyword": "globex", "lang": "en", "created_at": "'
            + created_at.encode() + b'"}')


def posts_around(now: float) -> tuple[list[dict], float]:
    """Six quiet windows (2 posts each for 'acme', 1 for 'globex') right before a window
    that ends 20-30 s after `now` and holds 15 'acme' posts: a volume spike against a
    baseline of 2. Event times may lie a little ahead of the watermark; they are on time."""
    window = int(now) // WINDOW_S * WINDOW_S
    burst_start = window + 2 * WINDOW_S
    posts, n = [], 0

    def post(keyword, at):
        nonlocal n
        n += 1
        return {"id": f"p{n}", "text": TEXTS[n % len(TEXTS)], "keyword": keyword, "lang": "en",
                "author_id": str(n), "created_at": rfc3339(dt.datetime.fromtimestamp(at, tz=dt.timezone.utc))}

    for k in range(6, 0, -1):
        start = burst_start - k * WINDOW_S
        posts += [post("acme", start + 1), post("acme", start + 5), post("globex", start + 3)]
    posts += [post("acme", burst_start + 0.5 + i * 0.5) for i in range(15)]
    return posts, burst_start


@pytest.fixture(scope="module")
def job(pubsub_emulator, tiny_bundled_model, tmp_path_factory):
    previous = os.environ.get("PUBSUB_EMULATOR_HOST")
    os.environ["PUBSUB_EMULATOR_HOST"] = pubsub_emulator.host
    try:
        topic = pubsub_emulator.topic("posts")
        subscription = pubsub_emulator.subscription(topic)
        alerts_topic = pubsub_emulator.topic("alerts")
        alerts_subscription = pubsub_emulator.subscription(alerts_topic)
        posts, burst_start = posts_around(time.time())
        duplicates = [posts[0], posts[4], posts[-1]]
        messages = [post_message(p) for p in posts + duplicates] + [
            Message(m, {}) for m in MALFORMED + HOSTILE_PARSE + HOSTILE_WINDOW + [half_emoji(posts[0]["created_at"])]]
        publisher = Publisher(topic)
        publisher.publish(messages)
        publisher.close()
        out = str(tmp_path_factory.mktemp("pubsub_job") / "out")
        started = time.time()
        result = sentiment_pipeline.run([
            "--input", subscription, "--output", out, "--model", str(tiny_bundled_model),
            "--run_for", str(RUN_FOR_S), "--window_size", str(WINDOW_S), "--early_firing", "2",
            "--alerts_topic", alerts_topic, "--alert_baseline_windows", "6", "--alert_min_posts", "10"])
        alerts = pubsub_emulator.pull_all(alerts_subscription, idle_s=3)
        yield {"result": result, "posts": posts, "duplicates": duplicates, "out": out,
               "alerts": alerts, "burst_start": burst_start, "stop_requested_at": started + RUN_FOR_S}
    finally:
        if previous is None:
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = previous


def sql(out: str, query: str):
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    for table in ("scored_posts", "sentiment_windows", "dead_letters", "alerts"):
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM "
                    f"read_parquet('{out}/{table}/**/*.parquet', union_by_name=true)")
    return con.execute(query).fetchall()


def test_tables_hold_every_post_once_and_every_bad_message(job):
    out, posts = job["out"], job["posts"]
    scored = sql(out, "SELECT post_id, keyword, lang FROM scored_posts")
    assert sorted(r[0] for r in scored) == sorted([p["id"] for p in posts] + ["half-emoji"])  # none lost
    assert {(r[0], r[1]) for r in scored} == {(p["id"], p["keyword"]) for p in posts} | {("half-emoji", "globex")}
    assert sql(out, "SELECT text FROM scored_posts WHERE post_id = 'half-emoji'") == [("hi \ufffd",)]

    dead = sql(out, "SELECT stage, payload FROM dead_letters")
    assert sorted(bytes(payload) for _, payload in dead) == sorted(MALFORMED + HOSTILE_PARSE + HOSTILE_WINDOW)
    assert sorted(bytes(p) for stage, p in dead if stage == "window") == sorted(HOSTILE_WINDOW)
    assert {stage for stage, _ in dead} == {"parse", "window"}

    # The latest pane of each window counts every post of that window exactly once.
    latest = sql(out, """
        SELECT keyword, sum(posts) FROM (
            SELECT keyword, window_start, max(posts) AS posts FROM sentiment_windows
            WHERE lang = '*' GROUP BY keyword, window_start)
        GROUP BY keyword ORDER BY keyword""")
    expected = {"globex": 1}  # the half-emoji post
    for p in posts:
        expected[p["keyword"]] = expected.get(p["keyword"], 0) + 1
    expected["*"] = len(posts) + 1
    assert dict(latest) == expected

    counters = sentiment_pipeline.counters(job["result"])
    ok, line = sentiment_pipeline.accounting(counters)
    assert ok, line
    assert counters["read"] == len(posts) + len(job["duplicates"]) + len(MALFORMED + HOSTILE_PARSE + HOSTILE_WINDOW) + 1
    assert counters["duplicates"] == len(job["duplicates"])


def test_panes_fire_on_time_after_traffic_stops(job):
    """Every message was published before the job started; nothing arrives after. The burst
    window still gets its on-time pane when the clock passes its end, while the job runs,
    not only when the drain at --run_for closes every window (a quiet keyword must not look frozen)."""
    window_start = dt.datetime.fromtimestamp(job["burst_start"], tz=dt.timezone.utc)
    panes = sql(job["out"], f"""
        SELECT pane_timing, posts, epoch(emitted_at) FROM sentiment_windows
        WHERE keyword = 'acme' AND lang = '*' AND window_start = TIMESTAMP '{window_start:%Y-%m-%d %H:%M:%S}'
        ORDER BY pane_index""")
    on_time = [(posts, at) for timing, posts, at in panes if timing == "ON_TIME"]
    assert on_time, panes
    posts, emitted_at = on_time[0]
    assert posts == 15
    assert job["burst_start"] + WINDOW_S <= emitted_at < job["stop_requested_at"], (panes, job["stop_requested_at"])


def test_alerts_arrive_on_the_alerts_topic(job):
    assert job["alerts"], "no alert reached the alerts topic"
    bodies = [json.loads(m.data) for m in job["alerts"]]
    spikes = [b for b in bodies if b["kind"] == "volume_spike"]
    assert [b["keyword"] for b in spikes] == ["acme"]
    spike = spikes[0]
    assert dt.datetime.fromisoformat(spike["window_start"]).timestamp() == job["burst_start"]
    assert spike["value"] == 15.0 and spike["baseline"] == pytest.approx(2.0) and spike["zscore"] >= 3
    burst_ids = {p["id"] for p in job["posts"][-15:]}
    assert set(spike["sample_post_ids"]) <= burst_ids
    message = next(m for m in job["alerts"] if json.loads(m.data)["kind"] == "volume_spike")
    assert message.attributes["keyword"] == "acme" and message.attributes["kind"] == "volume_spike"
    window_start = dt.datetime.fromtimestamp(job["burst_start"], tz=dt.timezone.utc).isoformat()
    assert message.attributes["alert_id"] == f"acme|{window_start}|volume_spike"
    # The same alert is in the alerts table.
    table = sql(job["out"], "SELECT keyword, kind, value FROM alerts WHERE kind = 'volume_spike'")
    assert table == [("acme", "volume_spike", 15.0)]
