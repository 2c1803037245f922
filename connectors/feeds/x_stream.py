"""X API v2 filtered stream -> Pub/Sub, through tweepy's `StreamingClient`.

    stream rules: one per keyword, value = tag = keyword     (GET/POST /2/tweets/search/stream/rules)
    {"data": tweet, "matching_rules": [{id, tag}]}            (GET /2/tweets/search/stream)
      -> one Post per matching rule of ours (tweet_to_post(tweet, keyword))
      -> Pub/Sub message, attributes {post_id, event_time, keyword, lang, post_key}  (as polling)

Where the account's access level includes it, the stream delivers posts as they are
written instead of one poll interval later, and costs no search requests.

Rules. `sync_rules` makes the app's rules match the keyword list: a rule whose tag equals
its value is one this tool wrote (that is how it writes them); such a rule for a keyword
no longer listed is deleted, a listed keyword without one gets one, and a rule that is
already right is left alone (its id, and so its matching, survives a restart). Rules that
other tools created (tag different from value, or no tag) are kept: the rules belong to
the whole X app, and deleting them would silently break whoever wrote them. They are
logged, they count against the app's rule limit, and the posts only they match arrive
on our connection too; those are not published (counted as `skipped`). Posts are
matched to keywords by the rule ids of our rules, so a foreign rule that happens to use
a keyword as its tag is not mistaken for ours.

Delivery. The stream has no `since_id` resume: posts written while no connection is
open (a restart, a network gap, a 429 wait) are not delivered later. `backfill_minutes`
(up to 5) exists only on some access levels; where it does not, run recent-search polling
(`pulse ingest` without `--stream`) over the gap if it matters. Each post is published
(and acknowledged by Pub/Sub) before the next line of the stream is read, so a post
counted as published is in Pub/Sub; a post in the middle of being published when the
process dies may be lost. Redelivered posts (backfill, a rerun of polling over the
same period) are de-duplicated by the job on post_id.

What is tweepy's and what is added here:
  - tweepy: the rule calls, the chunked stream, keep-alive handling, and reconnection
    after dropped connections, read timeouts and clean closes (its linear 0.25 s-step
    backoff up to 16 s, as X's guide for network errors says).
  - added: HTTP error statuses. tweepy passes `on_request_error` only the status code
    (no headers), then sleeps on its own fixed schedule (5 s doubling, 60 s first for
    429) with `time.sleep`: no x-rate-limit-reset, no jitter, no way to stop early, and
    it retries 401/403 forever. So `on_request_error` ends tweepy's connection loop and
    this module decides: 401/403/other 4xx -> Fatal; 429 -> the RateLimiter waits until
    x-rate-limit-reset plus jitter (the headers come from a requests response hook);
    5xx -> the project's Backoff, with `GaveUp` after max_attempts failures in a row.
    Both waits go through the injectable clock (tests do not sleep) and end on `stop`.
  - added: exceptions raised in a callback (a publish that was not acknowledged) are
    swallowed by tweepy (`on_exception` logs them); they are kept and re-raised here.
  - added: tweepy's StreamingClient hard-codes https://api.twitter.com like Client does;
    `make_stream_client` mounts the same BaseUrlAdapter on its single session (used
    for the rule calls and the stream alike; tweepy closes it after each connection,
    which only empties the adapter's pools).
  - added: stopping. `disconnect()` only takes effect at the next line or keep-alive
    (every 20 s on X); to stop at once, a stop also shuts down the socket of the open
    stream response, which tweepy then sees as the end of the stream.

The bearer token is masked in every log record and in error messages built from API answers
(protect_secret, api_detail), as for polling.
"""
from __future__ import annotations

import dataclasses
import logging
import random
import socket
import threading
from typing import Iterable
from urllib.parse import urlsplit

import requests
import tweepy

from connectors.feeds.publisher import Publisher, PublishError, post_message
from connectors.feeds.rate_limit import (ENDPOINT_LIMITS, Backoff, Clock, Fatal, GaveUp, RateLimited,
                                   RateLimiter, Stopped, SystemClock, Transient, call_with_retries)
from connectors.feeds.x_api import (TWEET_FIELDS, X_API_HOST, BaseUrlAdapter, api_detail, protect_secret,
                              translate_error, tweet_to_post)

log = logging.getLogger(__name__)

STREAM_PATH = "/2/tweets/search/stream"
RULES_WHAT = "the filtered stream rules"


def stream_limiters(clock: Clock, seed: int | None = None) -> tuple[RateLimiter, RateLimiter]:
    """(rules limiter, connect limiter), sized from the published limits."""
    rng = random.Random(seed)
    return (RateLimiter(ENDPOINT_LIMITS["stream_rules"], clock, rng=rng),
            RateLimiter(ENDPOINT_LIMITS["stream_connect"], clock, rng=rng))


def stream_backoff(rng: random.Random | None = None, max_attempts: int = 10) -> Backoff:
    """X's guide for HTTP errors on a stream: start at 5 s, double, up to 320 s."""
    return Backoff(base_s=5.0, factor=2.0, cap_s=320.0, max_attempts=max_attempts,
                   rng=rng or random.Random())


def translate_stream_error(exc: BaseException, what: str = RULES_WHAT) -> BaseException:
    """translate_error, with the stream's own message for 403."""
    if isinstance(exc, tweepy.Forbidden):
        return Fatal(forbidden_message("; ".join(str(m) for m in getattr(exc, "api_messages", []) or [])
                                       or str(exc)))
    return translate_error(exc, what)


def forbidden_message(detail: str) -> str:
    return (f"the X API refused access to the filtered stream (403 Forbidden: {api_detail(detail)}); "
            "the account's access level probably does not include the filtered stream: use "
            "recent-search polling (pulse ingest without --stream)")


def status_error(status: int, response: requests.Response | None) -> BaseException:
    """A non-200 answer to the stream connection -> RateLimited | Transient | Fatal."""
    headers = dict(response.headers) if response is not None else {}
    if status == 429:
        reset = headers.get("x-rate-limit-reset")
        try:
            reset_at = float(reset) if reset is not None else None
        except ValueError:
            reset_at = None
        return RateLimited(reset_at, headers)
    if status >= 500:
        return Transient(f"X API {status} on the filtered stream")
    detail = _problem_detail(response)
    if status == 401:
        return Fatal("the X API rejected the bearer token (401 Unauthorized): check X_BEARER_TOKEN "
                     "or --bearer_token_file")
    if status == 403:
        return Fatal(forbidden_message(detail or "Forbidden"))
    return Fatal(f"the X API answered {status} to the filtered stream connection: {api_detail(detail)}")


def _problem_detail(response: requests.Response | None) -> str:
    if response is None:
        return ""
    try:
        body = response.json()
    except ValueError:
        return response.reason or ""
    parts = [str(body.get(k)) for k in ("title", "reason", "detail") if body.get(k)]
    return ": ".join(parts) or (response.reason or "")


class _Stream(tweepy.StreamingClient):
    """tweepy's StreamingClient with its callbacks wired to a FilteredStream."""

    def __init__(self, bearer_token: str, **kwargs):
        super().__init__(bearer_token, return_type=requests.Response, wait_on_rate_limit=False, **kwargs)
        self.owner: FilteredStream | None = None
        self.last_stream_response: requests.Response | None = None
        self.session.hooks["response"].append(self._remember)

    def _remember(self, response, *args, **kwargs):
        if urlsplit(response.url).path == STREAM_PATH:
            self.last_stream_response = response
        return response

    # tweepy callbacks (all on the thread running filter())
    def on_connect(self):
        log.info("filtered stream connected")
        if self.owner is not None:
            self.owner._connected()

    def on_response(self, response):
        if self.owner is not None:
            self.owner._on_response(response)

    def on_keep_alive(self):
        if self.owner is not None and self.owner.stop.is_set():
            self.disconnect()

    def on_request_error(self, status_code):
        log.warning("filtered stream connection answered HTTP %d", status_code)
        if self.owner is not None:
            self.owner._failed(status_error(status_code, self.last_stream_response))
        self.disconnect()  # tweepy's own wait is skipped: see the module docstring

    def on_connection_error(self):
        if self.owner is not None and self.owner.stop.is_set():
            return  # our own interruption (see FilteredStream._interrupt)
        if self.owner is not None:
            self.owner.stats.reconnects += 1
        log.warning("filtered stream connection broke; tweepy reconnects")

    def on_closed(self, response):
        if self.owner is not None and not self.owner.stop.is_set():
            self.owner.stats.reconnects += 1
            log.warning("the X API closed the filtered stream; tweepy reconnects")

    def on_errors(self, errors):
        log.warning("filtered stream message with errors: %s", errors)

    def on_exception(self, exception):
        if self.owner is not None:
            self.owner._failed(exception)

    def on_disconnect(self):
        log.info("filtered stream disconnected")


def make_stream_client(bearer_token: str, api_url: str | None = None, timeout_s: float = 30.0,
                       chunk_size: int = 512) -> _Stream:
    """A tweepy StreamingClient pointed at `api_url` (a local server in tests)."""
    if not bearer_token:
        raise Fatal("no X API bearer token")
    protect_secret(bearer_token)
    stream = _Stream(bearer_token, chunk_size=chunk_size)
    # BaseClient and BaseStream each make a session; BaseStream's (made last) is the one
    # both the rule calls and the stream connection use.
    stream.session.mount(X_API_HOST, BaseUrlAdapter(api_url, timeout_s))
    return stream


@dataclasses.dataclass
class RuleSync:
    kept: list[dict]
    added: list[dict]
    deleted: list[dict]
    foreign: list[dict]


@dataclasses.dataclass
class StreamStats:
    connections: int = 0
    reconnects: int = 0  # by tweepy, after a broken or closed connection
    rate_limited: int = 0
    server_errors: int = 0
    tweets: int = 0
    skipped: int = 0  # tweets matched only by rules that are not ours
    published: int = 0
    per_keyword: dict = dataclasses.field(default_factory=dict)


class FilteredStream:
    """Syncs the rules to `keywords`, then publishes matching posts until stopped."""

    def __init__(self, stream: _Stream, publisher: Publisher, keywords: Iterable[str], *,
                 clock: Clock | None = None, rules_limiter: RateLimiter | None = None,
                 connect_limiter: RateLimiter | None = None, backoff: Backoff | None = None,
                 stop: threading.Event | None = None, max_posts: int | None = None,
                 backfill_minutes: int | None = None):
        self.keywords = list(dict.fromkeys(k for k in keywords if k))
        if not self.keywords:
            raise ValueError("at least one keyword is needed")
        if max_posts is not None and max_posts < 1:
            raise ValueError("max_posts must be positive")
        self.stream = stream
        stream.owner = self
        self.publisher = publisher
        self.stop = stop or threading.Event()
        self.clock = clock or SystemClock(self.stop)
        default_rules, default_connect = stream_limiters(self.clock)
        self.rules_limiter = rules_limiter or default_rules
        self.connect_limiter = connect_limiter or default_connect
        self.backoff = backoff or stream_backoff()
        self.max_posts = max_posts
        self.backfill_minutes = backfill_minutes
        self.rule_keywords: dict[str, str] = {}  # rule id -> keyword, our rules only
        self.stats = StreamStats()
        self._error: BaseException | None = None
        self._failures = 0  # consecutive 5xx answers

    # --- rules ---------------------------------------------------------------------------------
    def _rules_call(self, fn) -> dict:
        def call():
            try:
                response = fn()
                body = response.json()
            except Exception as e:
                raise translate_stream_error(e) from e
            return response, body

        response, body = call_with_retries(call, self.rules_limiter, self.backoff,
                                           headers_of=lambda r: r[0].headers, stop=self.stop)
        return body

    def sync_rules(self) -> RuleSync:
        body = self._rules_call(self.stream.get_rules)
        rules = body.get("data") or []
        ours = [r for r in rules if r.get("tag") is not None and r.get("tag") == r.get("value")]
        foreign = [r for r in rules if r not in ours]
        wanted = set(self.keywords)
        stale = [r for r in ours if r["value"] not in wanted]
        kept = [r for r in ours if r["value"] in wanted]
        have = {r["value"] for r in kept}
        missing = [k for k in self.keywords if k not in have]
        for r in foreign:
            log.warning("keeping stream rule %s %r (tag %r): not written by this tool; posts only it "
                        "matches are not published", r.get("id"), r.get("value"), r.get("tag"))
        if stale:
            self._rules_call(lambda: self.stream.delete_rules([r["id"] for r in stale]))
            log.info("deleted stale stream rules %s", [r["value"] for r in stale])
        added = []
        if missing:
            body = self._rules_call(lambda: self.stream.add_rules(
                [tweepy.StreamRule(value=k, tag=k) for k in missing]))
            errors = body.get("errors") or []
            if errors:
                raise Fatal("the X API refused stream rules: " + api_detail("; ".join(
                    f"{e.get('value', e.get('id', '?'))!r}: {e.get('title') or e.get('detail') or e}"
                    for e in errors), limit=600))
            added = [r for r in body.get("data") or [] if r.get("value") in missing]
            log.info("added stream rules %s", [r["value"] for r in added])
        self.rule_keywords = {str(r["id"]): r["value"] for r in kept + added}
        return RuleSync(kept=kept, added=added, deleted=stale, foreign=foreign)

    # --- the stream ----------------------------------------------------------------------------
    def _connected(self) -> None:
        self.stats.connections += 1
        self._failures = 0
        if self.stop.is_set():
            self.stream.disconnect()

    def _failed(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self.stream.disconnect()

    def _on_response(self, response) -> None:
        if self.stop.is_set():
            self.stream.disconnect()
            return
        tweet = response.data
        if tweet is None:
            return
        self.stats.tweets += 1
        keywords = list(dict.fromkeys(self.rule_keywords[str(rule.id)] for rule in response.matching_rules
                                      if str(rule.id) in self.rule_keywords))
        if not keywords:
            self.stats.skipped += 1
            return
        posts = [tweet_to_post(tweet.data, keyword) for keyword in keywords]
        self.publisher.publish([post_message(p) for p in posts])  # raises unless all acked
        self.stats.published += len(posts)
        for keyword in keywords:
            self.stats.per_keyword[keyword] = self.stats.per_keyword.get(keyword, 0) + 1
        if self.max_posts is not None and self.stats.published >= self.max_posts:
            self.stop.set()
            self.stream.disconnect()

    def _interrupt(self) -> None:
        """On stop: end tweepy's loop and unblock its read of the open stream response."""
        self.stream.disconnect()
        response = self.stream.last_stream_response
        try:
            sock = response.raw.connection.sock if response is not None and response.raw.connection else None
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
        except (AttributeError, OSError):
            pass  # already closed; otherwise the next keep-alive ends it

    def run(self) -> StreamStats:
        """Blocks until `stop` is set or max_posts are published; raises Fatal (GaveUp
        included) or a publishing error. Stopping while waiting to reconnect is not an error."""
        done = threading.Event()
        watcher = threading.Thread(target=self._watch_stop, args=(done,), daemon=True, name="x-stream-stop")
        watcher.start()
        params = {"tweet_fields": list(TWEET_FIELDS)}
        if self.backfill_minutes:
            params["backfill_minutes"] = self.backfill_minutes
        try:
            if not self.rule_keywords:
                self.sync_rules()
            while not self.stop.is_set():
                self.connect_limiter.before_request()
                if self.stop.is_set():
                    break
                self._error = None
                self.stream.filter(**params)
                error, self._error = self._error, None
                if error is None:
                    continue  # tweepy gave up (max_retries) or was stopped
                if isinstance(error, RateLimited):
                    self.stats.rate_limited += 1
                    self.connect_limiter.observe(error.headers)
                    self.connect_limiter.wait_for_reset(error.reset_at)
                elif isinstance(error, Transient):
                    self.stats.server_errors += 1
                    self._failures += 1
                    if self._failures >= self.backoff.max_attempts:
                        raise GaveUp(f"giving up after {self._failures} attempts: {error}")
                    delay = self.backoff.delay(self._failures)
                    log.warning("%s; reconnecting in %.1f s", error, delay)
                    self.connect_limiter.waits.append(("backoff", delay))
                    self.clock.sleep(delay)
                elif self.stop.is_set() and not isinstance(error, (Fatal, PublishError)):
                    break  # fallout of our own interruption of the socket
                else:
                    raise error
        except Stopped:
            pass
        finally:
            done.set()
            watcher.join()
        return self.stats

    def _watch_stop(self, done: threading.Event) -> None:
        while not done.is_set():
            if self.stop.wait(0.1):
                self._interrupt()
                return
