"""`pulse ingest` end to end: local X API v2 server -> tweepy -> Pub/Sub emulator.

Proves the backoff waits (on the shared fake clock), no post is lost, and none is
published twice across a stop and a restart from the checkpoint.
"""
import random
import threading

import pytest

from connectors.feeds.checkpoint import Checkpoint
from connectors.feeds.publisher import Publisher
from connectors.feeds.rate_limit import Backoff, FakeClock
from connectors.feeds.x_api import Ingester, RecentSearch, make_client, search_limiter
from pipelines.cli import ingest

pytestmark = pytest.mark.integration


def _ingest_argv(server, topic, checkpoint, *extra):
    return ["--keywords", "acme,globex", "--topic", topic, "--checkpoint", str(checkpoint),
            "--api_url", server.url, "--settle_s", "0", "--backfill_pages", "10", *extra]


def _published(emulator, subscription):
    return [m.attributes["post_id"] for m in emulator.pull_posts(subscription)]


def test_stop_and_restart_lose_nothing_and_repeat_nothing(x_api_server, pubsub_env, tmp_path, monkeypatch):
    clock = FakeClock()
    x_api_server.clock = clock
    monkeypatch.setenv("X_BEARER_TOKEN", x_api_server.token)
    topic = pubsub_env.topic("posts")
    subscription = pubsub_env.subscription(topic)
    checkpoint_path = tmp_path / "ingest.json"
    x_api_server.add_tweets("acme", 230)
    x_api_server.add_tweets("globex", 120)

    # Run 1 stops (as on SIGTERM) after 3 acknowledged batches of 50: mid-way through "acme".
    stop = threading.Event()
    search = RecentSearch(make_client(x_api_server.token, api_url=x_api_server.url),
                          search_limiter(clock, seed=1), Backoff(rng=random.Random(1)), clock, stop=stop)
    publisher = Publisher(topic)
    first = Ingester(search, publisher, Checkpoint(str(checkpoint_path)), ["acme", "globex"], clock=clock,
                     batch_size=50, backfill_pages=10, stop=stop, max_batches=3).run()
    publisher.close()
    assert first.published == 150
    assert Checkpoint(str(checkpoint_path)).get("globex") is None

    # While it is down, more posts arrive; run 2 meets a 503 and a 429 on its way.
    clock.advance(60)
    x_api_server.add_tweets("acme", 40)
    x_api_server.add_tweets("globex", 15)
    x_api_server.script.extend([503, None, 429])
    sleeps_before = len(clock.sleeps)
    assert ingest.main(_ingest_argv(x_api_server, topic, checkpoint_path, "--once"), clock=clock) == 0

    published = _published(pubsub_env, subscription)
    assert len(published) == len(set(published)), "a post was published twice"
    assert set(published) == x_api_server.all_ids(), "a post was lost"

    # The waits happened on the clock the server also reads.
    waits = clock.sleeps[sleeps_before:]
    assert any(0.5 <= w <= 1.0 for w in waits)  # backoff after the 503
    assert any(w >= 800 for w in waits)  # the 429 wait ran until x-rate-limit-reset

    # Run 3 from the same checkpoint, nothing new upstream: nothing is published again.
    clock.advance(60)
    assert ingest.main(_ingest_argv(x_api_server, topic, checkpoint_path, "--once"), clock=clock) == 0
    assert _published(pubsub_env, subscription) == []
    newest = {k: max(t["id"] for t in v) for k, v in x_api_server.tweets.items()}
    assert Checkpoint(str(checkpoint_path)).snapshot() == newest


def test_unacknowledged_publish_leaves_checkpoint_alone(x_api_server, pubsub_env, tmp_path, monkeypatch, capsys):
    clock = FakeClock()
    x_api_server.clock = clock
    monkeypatch.setenv("X_BEARER_TOKEN", x_api_server.token)
    x_api_server.add_tweets("acme", 20)
    missing = f"projects/{pubsub_env.project}/topics/never-created"
    checkpoint_path = tmp_path / "ingest.json"
    assert ingest.main(_ingest_argv(x_api_server, missing, checkpoint_path, "--once"), clock=clock) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not acknowledged" in err[0] and "NotFound" in err[0]
    assert not checkpoint_path.exists()


def test_401_exits_with_one_clear_line(x_api_server, pubsub_env, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("X_BEARER_TOKEN", "revoked-token-0000")
    topic = pubsub_env.topic("posts")
    assert ingest.main(_ingest_argv(x_api_server, topic, tmp_path / "ck.json", "--once"), clock=FakeClock()) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert lines[-1] == ("pulse ingest: error: the X API rejected the bearer token (401 Unauthorized): "
                         "check X_BEARER_TOKEN or --bearer_token_file")
    assert "revoked-token-0000" not in captured.err + captured.out
