"""The dashboard over a running Pub/Sub job (the emulator): the same page session shows new posts
as the job writes them, without a restart, never a half-written file, and the Health page
shows the running job's balance from the counters `pulse run` writes beside the tables.

    .venv/bin/pytest tests/test_dashboard_live.py -q
"""
import datetime as dt
import threading
import time

import pytest

from connectors.query import duckdb_sql
from connectors.feeds.publisher import Publisher, post_message, rfc3339
from pipelines import sentiment_pipeline
from tests.test_dashboard_app import app, metric_values, no_traceback

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def posts(prefix: str, n: int, keyword: str) -> list[dict]:
    now = time.time()
    return [{"id": f"{prefix}{i}", "text": ("great service", "awful delay, I hate it")[i % 2], "keyword": keyword,
             "lang": "en", "created_at": rfc3339(dt.datetime.fromtimestamp(now - 1 + i * 0.05, tz=dt.timezone.utc))}
            for i in range(n)]


def publish(topic: str, batch: list[dict]) -> None:
    publisher = Publisher(topic)
    publisher.publish([post_message(p) for p in batch])
    publisher.close()


CAPTIONS: list[str] = []


def wait_for_posts(at, expected: int, timeout_s: float = 90) -> list[str]:
    """Re-run the same page session (what its timer does) until it shows `expected` posts."""
    seen = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        at.run()
        no_traceback(at)
        assert not [w.value for w in at.warning if "skipped" in w.value]  # never a half-written file
        seen.append(metric_values(at).get("Posts in windows"))
        CAPTIONS.extend(c.value for c in at.caption)
        if seen[-1] == f"{expected:,}":
            return seen
        time.sleep(1)
    raise AssertionError(f"the page never showed {expected} posts: {seen}")


def test_the_page_follows_a_running_pubsub_job(pubsub_env, pubsub_emulator, tiny_bundled_model, tmp_path, monkeypatch):
    topic = pubsub_emulator.topic("dashboard")
    subscription = pubsub_emulator.subscription(topic)
    out = str(tmp_path / "out")
    stop = sentiment_pipeline.StopRequest()
    outcome = {}

    def job():
        outcome["result"] = sentiment_pipeline.run(
            ["--input", subscription, "--output", out, "--model", tiny_bundled_model, "--window_size", "10",
             "--early_firing", "1", "--run_for", "240"], stop=stop)

    publish(topic, posts("a", 12, "acme"))
    runner = threading.Thread(target=job, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 90
        while not duckdb_sql.table_files(out, "sentiment_windows") and time.monotonic() < deadline:
            time.sleep(0.5)
        at = app(monkeypatch, out)
        first = wait_for_posts(at, 12)
        publish(topic, posts("b", 20, "nimbus"))
        later = wait_for_posts(at, 32)
        assert first[-1] == "12" and later[-1] == "32"
        # The newest window was seen as its early pane, updating while the job ran.
        assert any(c.startswith("Current window") and "early pane" in c for c in CAPTIONS), CAPTIONS[-5:]
        health = app(monkeypatch, out, page="Health")
        no_traceback(health)
        balance = [m.value for m in health.markdown if m.value.startswith("**Latest run**")]
        assert balance and "(RUNNING" in balance[0], balance
    finally:
        stop.request("test over")
        runner.join(120)
    result = outcome["result"]
    assert result.pulse_end.drained
    at.run()
    [(total,)] = duckdb_sql.query(out, "SELECT sum(posts) FROM sentiment_windows_latest WHERE keyword = '*' "
                                       "AND lang = '*'")[1]
    assert metric_values(at)["Posts in windows"] == f"{total:,}" == "32"
    health = app(monkeypatch, out, page="Health")
    [line] = [m.value for m in health.markdown if m.value.startswith("**Latest run**")]
    assert "read 32 = scored 32 + duplicates 0 + dead letters 0 (balanced)" in line and "(DONE" in line
