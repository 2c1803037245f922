"""The X API connector through tweepy against the local X API v2 server, and the checkpoint."""
import json
import logging
import random

import pytest

from connectors.feeds.checkpoint import Checkpoint, CheckpointError
from connectors.feeds.rate_limit import Backoff, Fatal, FakeClock, GaveUp
from connectors.feeds.x_api import RecentSearch, make_client, search_limiter, tweet_to_post


def test_tweet_to_post_keeps_contract_fields():
    tweet = {"id": "1790000000000000007", "text": "acme is great", "created_at": "2026-11-25T07:47:19.000Z",
             "lang": "en", "author_id": "42", "edit_history_tweet_ids": ["1790000000000000007"]}
    assert tweet_to_post(tweet, "acme") == {
        "id": "1790000000000000007", "text": "acme is great", "created_at": "2026-11-25T07:47:19.000Z",
        "lang": "en", "author_id": "42", "keyword": "acme"}
    assert tweet_to_post({"id": 5, "text": "x"}, "k") == {"id": "5", "text": "x", "keyword": "k"}


def test_checkpoint_advances_atomically_and_only_forward(tmp_path):
    path = tmp_path / "state" / "ck.json"
    ck = Checkpoint(str(path))
    assert ck.get("acme") is None
    assert ck.advance("acme", "1790000000000000100")
    # Numeric, not string, order: "99..." < "1790..." as ids although it sorts after as text.
    assert not ck.advance("acme", "999999999999999999")
    assert ck.advance("globex", "5")
    assert json.loads(path.read_text())["since_id"] == {"acme": "1790000000000000100", "globex": "5"}
    assert Checkpoint(str(path)).snapshot() == ck.snapshot()
    assert [p.name for p in path.parent.iterdir()] == ["ck.json"]  # no temporary file left


def test_checkpoint_rejects_foreign_file(tmp_path):
    path = tmp_path / "ck.json"
    path.write_text('{"acme": 3}')
    with pytest.raises(CheckpointError, match="not a sentiment-pulse checkpoint"):
        Checkpoint(str(path))
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        Checkpoint(str(path))


def _search(server, clock, **kwargs):
    client = make_client(server.token, api_url=server.url, timeout_s=10)
    limiter = search_limiter(clock, seed=1)
    backoff = Backoff(rng=random.Random(2), max_attempts=kwargs.pop("max_attempts", 8))
    return RecentSearch(client, limiter, backoff, clock, **kwargs)


@pytest.mark.integration
def test_pages_through_everything_newer_than_since_id(x_api_server):
    clock = FakeClock()
    x_api_server.clock = clock
    old = x_api_server.add_tweets("acme", 5)
    new = x_api_server.add_tweets("acme", 230)
    x_api_server.add_tweets("globex", 7)
    search = _search(x_api_server, clock, max_results=100)
    posts = search.fetch_new("acme", since_id=old[-1])
    assert [p["id"] for p in posts] == new  # oldest first, nothing missing, nothing repeated
    assert {p["keyword"] for p in posts} == {"acme"}
    assert all(p["created_at"].endswith("Z") and p["lang"] == "en" and p["author_id"] for p in posts)
    calls = [r for r in x_api_server.requests if r["status"] == 200]
    assert len(calls) == 3  # 100 + 100 + 30
    assert all(r["params"]["since_id"] == old[-1] for r in calls)
    assert "next_token" not in calls[0]["params"] and calls[1]["params"]["next_token"]
    assert calls[0]["params"]["tweet.fields"] == "created_at,lang,author_id"


@pytest.mark.integration
def test_first_poll_without_checkpoint_takes_backfill_pages(x_api_server):
    clock = FakeClock()
    x_api_server.clock = clock
    ids = x_api_server.add_tweets("acme", 150)
    posts = _search(x_api_server, clock, max_results=100).fetch_new("acme", None, max_pages=1)
    assert [p["id"] for p in posts] == ids[-100:]


@pytest.mark.integration
def test_end_time_lag_leaves_fresh_posts_for_the_next_poll(x_api_server):
    clock = FakeClock()
    x_api_server.clock = clock
    settled = x_api_server.add_tweets("acme", 12)
    clock.advance(30)
    fresh = x_api_server.add_tweets("acme", 3)
    search = _search(x_api_server, clock, max_results=10, settle_s=15)
    assert [p["id"] for p in search.fetch_new("acme", None, max_pages=5)] == settled
    clock.advance(20)
    assert [p["id"] for p in search.fetch_new("acme", settled[-1])] == fresh


@pytest.mark.integration
def test_429_waits_for_reset_and_503_backs_off_without_losing_pages(x_api_server):
    clock = FakeClock()
    x_api_server.clock = clock
    ids = x_api_server.add_tweets("acme", 250)
    # A 503 then a dropped connection on the first page, a 429 in the middle of the pagination.
    x_api_server.script.extend([503, "drop", None, 429])
    search = _search(x_api_server, clock, max_results=100)
    start = clock.now()
    posts = search.fetch_new("acme", since_id="1")
    assert [p["id"] for p in posts] == ids
    waits = search.limiter.waits
    backoffs = [w for why, w in waits if why == "backoff"]
    assert len(backoffs) == 2 and 0.5 <= backoffs[0] <= 1.0 and 1.0 <= backoffs[1] <= 2.0
    rate_limited = [w for why, w in waits if why.startswith("429")]
    assert len(rate_limited) == 1
    reset = x_api_server.requests[-2]["time"]  # the 429 came at this server time ...
    window_end = start + x_api_server.window_s  # ... and the window resets here
    assert rate_limited[0] >= window_end - reset - 1  # waited (at least) until x-rate-limit-reset
    assert x_api_server.answered(429) == 1 and x_api_server.answered(503) == 1


@pytest.mark.integration
def test_401_is_fatal_with_a_clear_message_and_no_retry(x_api_server):
    clock = FakeClock()
    x_api_server.clock = clock
    client = make_client("wrong-token-abcdef", api_url=x_api_server.url)
    search = RecentSearch(client, search_limiter(clock), Backoff(), clock)
    with pytest.raises(Fatal, match="401 Unauthorized.*X_BEARER_TOKEN") as info:
        search.fetch_new("acme", None)
    assert "wrong-token" not in str(info.value)
    assert len(x_api_server.requests) == 1


@pytest.mark.integration
def test_persistent_503_gives_up(x_api_server):
    clock = FakeClock()
    x_api_server.clock = clock
    x_api_server.script.extend([503] * 10)
    search = _search(x_api_server, clock, max_attempts=4)
    with pytest.raises(GaveUp):
        search.fetch_new("acme", None)
    assert x_api_server.answered(503) == 4


@pytest.mark.integration
def test_bearer_token_never_reaches_a_log_line(x_api_server, caplog):
    clock = FakeClock()
    x_api_server.clock = clock
    x_api_server.add_tweets("acme", 3)
    caplog.set_level(logging.DEBUG)
    _search(x_api_server, clock, max_results=10).fetch_new("acme", None)
    assert "Making API request" in caplog.text  # tweepy logged the request headers ...
    assert "Bearer ***" in caplog.text
    assert x_api_server.token not in caplog.text  # ... with the token masked
