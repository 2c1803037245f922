"""The filtered stream through tweepy's StreamingClient against the local X API v2 server,
publishing into the Pub/Sub emulator; and `pulse ingest --stream`."""
import json
import logging
import os
import random
import signal
import threading
import time

import pytest

from connectors.feeds.publisher import Publisher
from connectors.feeds.rate_limit import Fatal, FakeClock
from connectors.feeds.x_stream import FilteredStream, make_stream_client, stream_backoff, stream_limiters
from pipelines.cli import ingest

pytestmark = pytest.mark.integration


def _stream(server, publisher, keywords=("acme", "globex"), *, clock=None, token=None, **kwargs):
    clock = clock or FakeClock()
    rules_limiter, connect_limiter = stream_limiters(clock, seed=1)
    client = make_stream_client(token or server.token, api_url=server.url, timeout_s=10)
    return FilteredStream(client, publisher, list(keywords), clock=clock, rules_limiter=rules_limiter,
                          connect_limiter=connect_limiter, backoff=stream_backoff(random.Random(2)),
                          **kwargs)


def _run(stream, timeout_s=60.0):
    """Runs the stream in a thread (so a hang fails the test instead of blocking it)."""
    result = {}

    def target():
        try:
            result["stats"] = stream.run()
        except BaseException as e:  # handed to the test
            result["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        stream.stop.set()
        thread.join(10)
        pytest.fail("the stream did not stop")
    if "error" in result:
        raise result["error"]
    return result["stats"]


@pytest.fixture
def topic_and_subscription(pubsub_env):
    topic = pubsub_env.topic("posts")
    return topic, pubsub_env.subscription(topic)


def test_rules_are_synced_stale_removed_missing_added_foreign_kept(x_api_server):
    acme = x_api_server.add_rule("acme", tag="acme")  # ours, from an earlier run
    stale = x_api_server.add_rule("oldco", tag="oldco")  # ours, keyword no longer listed
    foreign = x_api_server.add_rule("initech", tag="marketing-dashboard")  # another tool's
    untagged = x_api_server.add_rule("umbrella")
    stream = _stream(x_api_server, None)
    sync = stream.sync_rules()
    assert [r["id"] for r in sync.kept] == [acme]
    assert [r["id"] for r in sync.deleted] == [stale]
    assert [(r["value"], r["tag"]) for r in sync.added] == [("globex", "globex")]
    assert {r["id"] for r in sync.foreign} == {foreign, untagged}
    rules = {r["value"]: r for r in x_api_server.rules}
    assert set(rules) == {"acme", "globex", "initech", "umbrella"}
    assert rules["acme"]["id"] == acme  # left alone, not re-created
    assert stream.rule_keywords == {acme: "acme", rules["globex"]["id"]: "globex"}

    posts_before = sum(1 for r in x_api_server.requests if r.get("method") == "POST")
    again = _stream(x_api_server, None).sync_rules()  # nothing to change now
    assert not again.added and not again.deleted
    assert sum(1 for r in x_api_server.requests if r.get("method") == "POST") == posts_before


def test_refused_rule_is_fatal_with_the_apis_reason(x_api_server):
    x_api_server.add_rule("acme", tag="someone-else")  # the API refuses a second rule with this value
    with pytest.raises(Fatal, match="refused stream rules: 'acme': DuplicateRule"):
        _stream(x_api_server, None, ["acme"]).sync_rules()


def test_tweets_arrive_with_attributes_and_one_post_per_matching_rule(x_api_server, topic_and_subscription,
                                                                    pubsub_env):
    topic, subscription = topic_and_subscription
    x_api_server.add_rule("initech", tag="marketing-dashboard")
    only_foreign = x_api_server.add_tweets("initech", 1)
    x_api_server.add_tweets("nobody", 1)  # matches no rule: never delivered
    acme = x_api_server.add_tweets("acme", 3)
    globex = x_api_server.add_tweets("globex", 2, lang="de")
    both = x_api_server.add_tweets("acme", 1, text="acme beats globex today")
    publisher = Publisher(topic)
    try:
        stats = _run(_stream(x_api_server, publisher, max_posts=7))
    finally:
        publisher.close()
    assert stats.published == 7 and stats.skipped == 1 and stats.tweets == 7
    assert stats.per_keyword == {"acme": 4, "globex": 3}

    messages = pubsub_env.pull_posts(subscription)
    got = sorted((m.attributes["post_id"], m.attributes["keyword"]) for m in messages)
    expected = sorted([(i, "acme") for i in acme + both] + [(i, "globex") for i in globex + both])
    assert got == expected
    assert not {m.attributes["post_id"] for m in messages} & set(only_foreign)
    by_id = {(m.attributes["post_id"], m.attributes["keyword"]): m for m in messages}
    german = by_id[(globex[0], "globex")]
    assert german.attributes["lang"] == "de" and german.attributes["event_time"].endswith("Z")
    body = json.loads(german.data)
    assert set(body) == {"id", "text", "created_at", "lang", "author_id", "keyword"}

    connection = x_api_server.stream_connections[0]
    assert connection["params"]["tweet.fields"] == "created_at,lang,author_id"
    assert "expansions" not in connection["params"]


def test_dropped_connection_is_reconnected_and_nothing_after_it_is_lost(x_api_server, topic_and_subscription,
                                                                      pubsub_env):
    topic, subscription = topic_and_subscription
    x_api_server.stream_script.append(("drop_after", 2))
    before = x_api_server.add_tweets("acme", 4)
    after = []

    def post_after_reconnect():  # more posts once the second connection is open
        deadline = time.monotonic() + 30
        while len(x_api_server.stream_connections) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        after.extend(x_api_server.add_tweets("globex", 3))

    feeder = threading.Thread(target=post_after_reconnect, daemon=True)
    feeder.start()
    publisher = Publisher(topic)
    try:
        stats = _run(_stream(x_api_server, publisher, max_posts=7))
    finally:
        publisher.close()
    feeder.join(5)
    first, second = x_api_server.stream_connections[:2]
    assert first.get("dropped") and first["delivered"] == before[:2]
    assert second["status"] == 200 and len(x_api_server.stream_connections) == 2
    assert stats.connections == 2 and stats.reconnects == 1
    ids = [m.attributes["post_id"] for m in pubsub_env.pull_posts(subscription)]
    assert sorted(ids) == sorted(before + after)  # nothing lost, nothing twice


def test_429_waits_until_reset_and_503_backs_off_on_the_clock(x_api_server, topic_and_subscription, pubsub_env):
    topic, subscription = topic_and_subscription
    clock = FakeClock()
    x_api_server.clock = clock
    x_api_server.stream_script.extend([503, 429])
    ids = x_api_server.add_tweets("acme", 3)
    publisher = Publisher(topic)
    try:
        stream = _stream(x_api_server, publisher, clock=clock, max_posts=3)
        stats = _run(stream)
    finally:
        publisher.close()
    statuses = [c["status"] for c in x_api_server.stream_connections]
    assert statuses == [503, 429, 200]
    assert stats.rate_limited == 1 and stats.server_errors == 1 and stats.published == 3
    waits = stream.connect_limiter.waits
    backoffs = [w for why, w in waits if why == "backoff"]
    assert len(backoffs) == 1 and 2.5 <= backoffs[0] <= 5.0  # the stream backoff's first step
    rate_limited = [w for why, w in waits if why.startswith("429")]
    limited = x_api_server.stream_connections[1]
    assert len(rate_limited) == 1
    assert limited["reset"] - limited["time"] <= rate_limited[0] <= limited["reset"] - limited["time"] + 5
    assert x_api_server.stream_connections[2]["time"] >= limited["reset"]  # reconnected after the reset
    assert stream.connect_limiter.limit.requests == 50  # sized by x-rate-limit-limit
    assert sorted(m.attributes["post_id"] for m in pubsub_env.pull_posts(subscription)) == sorted(ids)


@pytest.mark.parametrize("status, message", [
    (401, "the X API rejected the bearer token (401 Unauthorized): check X_BEARER_TOKEN"),
    (403, "access level probably does not include the filtered stream: use recent-search polling"),
])
def test_401_and_403_on_the_stream_are_fatal_without_retry(x_api_server, status, message):
    x_api_server.stream_script.append(status)
    with pytest.raises(Fatal) as info:
        _run(_stream(x_api_server, None))
    assert message in str(info.value) and "\n" not in str(info.value)
    if status == 403:
        assert "client-not-enrolled" in str(info.value)
    assert [c["status"] for c in x_api_server.stream_connections] == [status]


def test_403_on_the_rules_says_the_access_level_lacks_the_stream(x_api_server):
    x_api_server.rules_script.append(403)
    with pytest.raises(Fatal) as info:
        _stream(x_api_server, None).sync_rules()
    assert str(info.value).startswith("the X API refused access to the filtered stream (403 Forbidden: ")
    assert "use recent-search polling (pulse ingest without --stream)" in str(info.value)
    assert x_api_server.rules == []


def test_stop_event_ends_an_idle_stream(x_api_server):
    x_api_server.stream_keepalive_s = 60  # no keep-alive comes to end tweepy's read
    stop = threading.Event()
    stream = _stream(x_api_server, None, stop=stop)
    thread = threading.Thread(target=stream.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while stream.stats.connections == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stream.stats.connections == 1
    stop.set()
    thread.join(30)
    assert not thread.is_alive()
    assert len(x_api_server.stream_connections) == 1  # stopped, not reconnected


def test_bearer_token_never_reaches_a_log_line(x_api_server, topic_and_subscription, caplog):
    topic, _ = topic_and_subscription
    x_api_server.stream_script.append(("drop_after", 1))
    x_api_server.add_tweets("acme", 2)
    caplog.set_level(logging.DEBUG)
    publisher = Publisher(topic)
    try:
        _run(_stream(x_api_server, publisher, max_posts=2))
    finally:
        publisher.close()
    assert "Making API request" in caplog.text and "Bearer ***" in caplog.text  # tweepy's rule calls
    assert "Connection error" in caplog.text  # tweepy's stream logging, after the drop
    assert x_api_server.token not in caplog.text


def _stream_argv(server, topic, *extra):
    return ["--stream", "--keywords", "acme,globex", "--topic", topic, "--api_url", server.url, *extra]


def test_cli_stream_end_to_end_with_max_posts(x_api_server, topic_and_subscription, pubsub_env, monkeypatch,
                                             capsys):
    topic, subscription = topic_and_subscription
    monkeypatch.setenv("X_BEARER_TOKEN", x_api_server.token)
    x_api_server.add_rule("oldco", tag="oldco")
    x_api_server.stream_script.append(("drop_after", 3))
    ids = x_api_server.add_tweets("acme", 4) + x_api_server.add_tweets("globex", 2)
    assert ingest.main(_stream_argv(x_api_server, topic, "--max_posts", "6")) == 0
    out = capsys.readouterr().out
    assert "published 6 posts from the filtered stream (2 connection(s), 1 reconnect(s))" in out
    assert sorted(m.attributes["post_id"] for m in pubsub_env.pull_posts(subscription)) == sorted(ids)
    assert sorted(r["value"] for r in x_api_server.rules) == ["acme", "globex"]


def test_cli_stream_stops_cleanly_on_sigint(x_api_server, topic_and_subscription, monkeypatch, capsys):
    topic, _ = topic_and_subscription
    monkeypatch.setenv("X_BEARER_TOKEN", x_api_server.token)
    x_api_server.add_tweets("acme", 2)

    def interrupt_once_published():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            connections = x_api_server.stream_connections
            if connections and len(connections[0]["delivered"]) == 2:
                break
            time.sleep(0.02)
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_once_published, daemon=True).start()
    assert ingest.main(_stream_argv(x_api_server, topic)) == 0
    assert "published 2 posts from the filtered stream" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_cli_stream_401_exits_with_one_clear_line(x_api_server, topic_and_subscription, monkeypatch, capsys):
    topic, _ = topic_and_subscription
    monkeypatch.setenv("X_BEARER_TOKEN", "revoked-token-0000")
    assert ingest.main(_stream_argv(x_api_server, topic, "--max_posts", "1")) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert lines[-1] == ("pulse ingest: error: the X API rejected the bearer token (401 Unauthorized): "
                         "check X_BEARER_TOKEN or --bearer_token_file")
    assert "revoked-token-0000" not in captured.err + captured.out
    assert x_api_server.stream_connections == []  # the rule sync already failed


@pytest.mark.parametrize("argv, expected", [
    (["--stream", "--checkpoint", "ck.json"], "--checkpoint is for recent-search polling; it cannot be used with --stream"),
    (["--stream", "--once"], "--once is for recent-search polling"),
    (["--stream", "--max_posts", "0"], "--max_posts must be positive"),
    (["--stream", "--backfill_minutes", "9"], "--backfill_minutes must be between 1 and 5"),
    (["--checkpoint", "ck.json", "--max_posts", "5"], "--max_posts needs --stream"),
    ([], "the following arguments are required: --checkpoint"),
])
def test_cli_stream_usage_errors_are_one_line_exit_2(capsys, monkeypatch, argv, expected):
    monkeypatch.setenv("X_BEARER_TOKEN", "t")
    code = ingest.main(["--keywords", "acme", "--topic", "projects/p/topics/t", *argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err
