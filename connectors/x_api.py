"""X API v2 -> Pub/Sub: recent-search polling per keyword through tweepy, at-least-once
with an exact resume point.

    X API tweet {id, text, created_at, lang, author_id}   (GET /2/tweets/search/recent)
      -> Post dict {id, text, created_at, lang, author_id, keyword}   (tweet_to_post)
      -> Pub/Sub message, attributes {post_id, event_time, keyword, lang}

One poll of a keyword fetches every page newer than the keyword's checkpointed
`since_id` (following `meta.next_token`), then publishes them oldest first in batches
and advances the checkpoint after each acknowledged batch. Ids are snowflakes, so
"everything up to the checkpoint is published" holds after every batch: a stop or a
crash at any point resumes without losing or repeating a post (a crash in the instant
between an acknowledgement and the checkpoint write repeats at most one batch, which
the job de-duplicates by post_id).

tweepy's `Client` has no host setting (api.twitter.com is written into
`BaseClient.request`), so `make_client` mounts a requests transport adapter on the
client's session that sends api.twitter.com requests to `api_url` instead (the local
test server) and gives every request a timeout (tweepy sets none).

The bearer token is sent only in the Authorization header; `protect_secret` installs a
logging filter that masks it, because tweepy's DEBUG log prints request headers.

    X_BEARER_TOKEN=... python -m pipelines.ingest --keywords acme,globex --topic projects/p/topics/posts --checkpoint ck.json --once
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import random
import threading
from typing import Iterable

import requests
import tweepy
from requests.adapters import HTTPAdapter

from connectors.checkpoint import Checkpoint
from connectors.publisher import Publisher, post_message, rfc3339
from connectors.rate_limit import (ENDPOINT_LIMITS, Backoff, Clock, Fatal, RateLimited,
                                   RateLimiter, SystemClock, Transient, call_with_retries)

log = logging.getLogger(__name__)

X_API_HOST = "https://api.twitter.com"
TWEET_FIELDS = ("created_at", "lang", "author_id")
TWEPY_LOGGERS = ("tweepy", "tweepy.client", "tweepy.streaming", "tweepy.asynchronous.client")


class BaseUrlAdapter(HTTPAdapter):
    """Sends requests for X_API_HOST to `base_url` (a local server in tests) with a timeout."""

    def __init__(self, base_url: str | None, timeout_s: float = 30.0, **kwargs):
        super().__init__(**kwargs)
        self.base_url = base_url.rstrip("/") if base_url else None
        self.timeout_s = timeout_s

    def send(self, request, **kwargs):
        if self.base_url and request.url.startswith(X_API_HOST):
            request.url = self.base_url + request.url[len(X_API_HOST):]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout_s
        return super().send(request, **kwargs)


class RedactSecret(logging.Filter):
    """Masks a secret in log records (message and arguments) before any handler sees them."""

    def __init__(self, secret: str):
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secret:
            message = record.getMessage()
            if self.secret in message:
                record.msg = message.replace(self.secret, "***")
                record.args = ()
        return True


def protect_secret(secret: str, loggers: Iterable[str] = TWEPY_LOGGERS) -> RedactSecret:
    redactor = RedactSecret(secret)
    for name in loggers:
        logging.getLogger(name).addFilter(redactor)
    return redactor


def make_client(bearer_token: str, api_url: str | None = None, timeout_s: float = 30.0) -> tweepy.Client:
    """A tweepy Client returning raw `requests.Response`s (the rate-limit headers are needed)."""
    if not bearer_token:
        raise Fatal("no X API bearer token")
    protect_secret(bearer_token)
    client = tweepy.Client(bearer_token=bearer_token, return_type=requests.Response,
                           wait_on_rate_limit=False)  # our RateLimiter waits, with jitter
    client.session.mount(X_API_HOST, BaseUrlAdapter(api_url, timeout_s))
    return client


def tweet_to_post(tweet: dict, keyword: str) -> dict:
    """X API v2 tweet object + the keyword it was collected for -> Post dict."""
    post = {"id": str(tweet["id"]), "text": tweet.get("text", "")}
    for field in ("created_at", "lang", "author_id"):
        if tweet.get(field) is not None:
            post[field] = str(tweet[field])
    post["keyword"] = keyword
    return post


def translate_error(exc: BaseException, keyword: str) -> BaseException:
    """tweepy / requests exception -> RateLimited | Transient | Fatal (rate_limit's vocabulary)."""
    if isinstance(exc, tweepy.TooManyRequests):
        return RateLimited(exc.reset_time, exc.response.headers)
    if isinstance(exc, tweepy.TwitterServerError):
        return Transient(f"X API {exc.response.status_code} {exc.response.reason}")
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return Transient(f"network error: {type(exc).__name__}")
    if isinstance(exc, ValueError):  # a 2xx body that is not JSON (a proxy's error page)
        return Transient("X API response is not JSON")
    detail = "; ".join(getattr(exc, "api_messages", []) or []) or str(exc)
    if isinstance(exc, tweepy.Unauthorized):
        return Fatal("the X API rejected the bearer token (401 Unauthorized): check X_BEARER_TOKEN "
                     "or --bearer_token_file")
    if isinstance(exc, tweepy.Forbidden):
        return Fatal(f"the X API refused access (403 Forbidden: {detail}); the account's access "
                     "level may not include recent search")
    if isinstance(exc, tweepy.BadRequest):
        return Fatal(f"the X API rejected the query for keyword {keyword!r} (400: {detail})")
    if isinstance(exc, tweepy.HTTPException):
        return Fatal(f"the X API answered {exc.response.status_code} for keyword {keyword!r}: {detail}")
    return exc


class RecentSearch:
    """Pages through GET /2/tweets/search/recent for one keyword under the rate limiter."""

    def __init__(self, client: tweepy.Client, limiter: RateLimiter, backoff: Backoff,
                 clock: Clock, max_results: int = 100, settle_s: float = 0.0,
                 stop: threading.Event | None = None):
        if not 10 <= max_results <= 100:
            raise ValueError("max_results must be between 10 and 100 (the API's bounds)")
        self.client = client
        self.limiter = limiter
        self.backoff = backoff
        self.clock = clock
        self.max_results = max_results
        self.settle_s = settle_s
        self.stop = stop
        self.requests = 0

    def _page(self, keyword: str, params: dict) -> dict:
        def call():
            try:
                response = self.client.search_recent_tweets(keyword, **params)
                body = response.json()
            except Exception as e:  # translated; anything unknown is re-raised unchanged
                raise translate_error(e, keyword) from e
            self.requests += 1
            return response, body

        response, body = call_with_retries(call, self.limiter, self.backoff,
                                           headers_of=lambda r: r[0].headers, stop=self.stop)
        return body

    def fetch_new(self, keyword: str, since_id: str | None, max_pages: int | None = None) -> list[dict]:
        """Every tweet newer than `since_id` (all pages; with no since_id, `max_pages` pages
        of the newest), oldest first, as Post dicts."""
        params = {"max_results": self.max_results, "tweet_fields": list(TWEET_FIELDS)}
        if since_id:
            params["since_id"] = since_id
        if self.settle_s > 0:
            # Ask only for posts old enough to be in the search index, so a post indexed
            # late cannot fall behind a since_id we already checkpointed.
            params["end_time"] = rfc3339_seconds(self.clock.now() - self.settle_s)
        seen: dict[str, dict] = {}
        pages = 0
        while True:
            body = self._page(keyword, params)
            pages += 1
            for tweet in body.get("data") or ():
                seen.setdefault(str(tweet["id"]), tweet)
            token = (body.get("meta") or {}).get("next_token")
            if not token or (since_id is None and max_pages is not None and pages >= max_pages):
                break
            params["next_token"] = token
        ordered = sorted(seen.values(), key=lambda t: int(t["id"]))
        return [tweet_to_post(t, keyword) for t in ordered]


def rfc3339_seconds(epoch: float) -> str:
    """Epoch seconds -> '2026-11-25T07:47:19Z' (whole seconds, as the API's end_time takes)."""
    return rfc3339(dt.datetime.fromtimestamp(int(epoch), tz=dt.timezone.utc)).replace(".000Z", "Z")


@dataclasses.dataclass
class IngestStats:
    cycles: int = 0
    batches: int = 0
    published: int = 0
    per_keyword: dict = dataclasses.field(default_factory=dict)


class Ingester:
    """Polls each keyword every `poll_interval_s`; publishes new posts; checkpoints after acks."""

    def __init__(self, search: RecentSearch, publisher: Publisher, checkpoint: Checkpoint,
                 keywords: list[str], *, clock: Clock | None = None, poll_interval_s: float = 60.0,
                 batch_size: int = 100, backfill_pages: int = 1, stop: threading.Event | None = None,
                 max_batches: int | None = None):
        if not keywords:
            raise ValueError("at least one keyword is needed")
        self.search = search
        self.publisher = publisher
        self.checkpoint = checkpoint
        self.keywords = list(dict.fromkeys(keywords))
        self.clock = clock or SystemClock()
        self.poll_interval_s = poll_interval_s
        self.batch_size = batch_size
        self.backfill_pages = backfill_pages
        self.stop = stop or threading.Event()
        self.max_batches = max_batches  # tests: stop (as SIGTERM would) after this many batches
        self.stats = IngestStats()

    def poll_keyword(self, keyword: str) -> int:
        since_id = self.checkpoint.get(keyword)
        posts = self.search.fetch_new(keyword, since_id, max_pages=self.backfill_pages)
        published = 0
        for start in range(0, len(posts), self.batch_size):
            if self.stop.is_set():
                break
            batch = posts[start:start + self.batch_size]
            self.publisher.publish([post_message(p) for p in batch])  # raises unless all acked
            self.checkpoint.advance(keyword, batch[-1]["id"])
            published += len(batch)
            self.stats.batches += 1
            self.stats.published += len(batch)
            self.stats.per_keyword[keyword] = self.stats.per_keyword.get(keyword, 0) + len(batch)
            if self.max_batches is not None and self.stats.batches >= self.max_batches:
                self.stop.set()
        log.info("keyword %r: %d new posts published (since_id %s -> %s)", keyword, published,
                 since_id, self.checkpoint.get(keyword))
        return published

    def run(self, max_cycles: int | None = None) -> IngestStats:
        while not self.stop.is_set():
            started = self.clock.now()
            for keyword in self.keywords:
                if self.stop.is_set():
                    break
                self.poll_keyword(keyword)
            self.stats.cycles += 1
            if max_cycles is not None and self.stats.cycles >= max_cycles:
                break
            if not self.stop.is_set():
                self.clock.sleep(max(0.0, self.poll_interval_s - (self.clock.now() - started)))
        return self.stats


def search_limiter(clock: Clock, requests_per_window: int | None = None,
                   window_s: float | None = None, seed: int | None = None) -> RateLimiter:
    """The recent-search limiter, sized from the published limit unless overridden."""
    published = ENDPOINT_LIMITS["search_recent"]
    limit = published._replace(requests=requests_per_window or published.requests,
                               window_s=window_s or published.window_s)
    return RateLimiter(limit, clock, rng=random.Random(seed))
