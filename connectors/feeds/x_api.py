"""X API v2 -> Pub/Sub: recent-search polling per keyword through tweepy, at-least-once
with an exact resume point.

    X API tweet {id, text, created_at, lang, author_id}   (GET /2/tweets/search/recent)
      -> Post dict {id, text, created_at, lang, author_id, keyword}   (tweet_to_post)
      -> Pub/Sub message, attributes {post_id, event_time, keyword, lang, post_key}

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

The bearer token is sent only in the Authorization header. `protect_secret` registers it
with `SECRETS` and puts a logging filter on every handler that masks it in every spelling
(tweepy's DEBUG log prints request headers and response bodies); error messages built from
API answers go through `api_detail`, which masks it too (a 403 page may echo the header).

    X_BEARER_TOKEN=... python -m pipelines.cli.ingest --keywords acme,globex --topic projects/p/topics/posts --checkpoint ck.json --once
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import logging
import random
import re
import threading
from urllib.parse import quote, quote_plus, unquote, unquote_plus

import requests
import tweepy
from requests.adapters import HTTPAdapter

from connectors.feeds.checkpoint import Checkpoint
from connectors.feeds.publisher import Publisher, post_message, rfc3339
from connectors.feeds.rate_limit import (ENDPOINT_LIMITS, Backoff, Clock, Fatal, RateLimited,
                                   RateLimiter, SystemClock, Transient, call_with_retries)

log = logging.getLogger(__name__)

X_API_HOST = "https://api.twitter.com"
TWEET_FIELDS = ("created_at", "lang", "author_id")


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


# --- the bearer token never reaches an output --------------------------------------------------
#
# The token is in every request's Authorization header; tweepy's DEBUG log prints those headers
# (a dict repr) and the raw response bodies (a bytes repr of JSON), and an error page or proxy may
# echo the header back in a body that ends up in an error message. Every text that leaves the
# process through logging, an error message or a traceback goes through `SECRETS.redact`, which
# masks the token in each spelling it can take on the way: raw; Python repr escaping (either
# quote); bytes repr of its UTF-8; JSON string escaping (ASCII or not, "\/", HTML-safe \u003c);
# URL encoding and decoding; those escapings applied twice (JSON inside a bytes repr, a repr
# inside a repr, ...); base64 at each byte alignment; and any run of FRAGMENT_CHARS or more of
# its characters (a truncated echo). Matching ignores case (percent and \x escapes come in both).

MASK = "***"
FRAGMENT_CHARS = 16
_CONTROL_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _py_escape(text: str, quote_char: str) -> str:
    """`text` as repr() writes it between `quote_char`s ("" = escape neither quote)."""
    out = []
    for c in text:
        if c == "\\" or c == quote_char:
            out.append("\\" + c)
        elif c in _CONTROL_ESCAPES:
            out.append(_CONTROL_ESCAPES[c])
        elif c.isprintable():
            out.append(c)
        else:
            o = ord(c)
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
    return "".join(out)


def _bytes_escape(text: str, quote_char: str) -> str:
    """`text`'s UTF-8 bytes as a bytes repr writes them between `quote_char`s."""
    out = []
    for b in text.encode("utf-8", "surrogatepass"):
        c = chr(b)
        if c == "\\" or c == quote_char:
            out.append("\\" + c)
        elif c in _CONTROL_ESCAPES:
            out.append(_CONTROL_ESCAPES[c])
        elif 0x20 <= b < 0x7F:
            out.append(c)
        else:
            out.append(f"\\x{b:02x}")
    return "".join(out)


def _json_ascii(text: str) -> str:
    return json.dumps(text)[1:-1]


def _json_html_safe(text: str) -> str:
    return (_json_ascii(text).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


_ENCODINGS = (
    *(lambda t, q=q: _py_escape(t, q) for q in ("", "'", '"')),
    *(lambda t, q=q: _bytes_escape(t, q) for q in ("", "'", '"')),
    _json_ascii,
    lambda t: json.dumps(t, ensure_ascii=False)[1:-1],
    lambda t: _json_ascii(t).replace("/", "\\/"),
    _json_html_safe,
    lambda t: quote(t, safe="", errors="surrogatepass"),
    lambda t: quote(t, errors="surrogatepass"),
    lambda t: quote_plus(t, safe="", errors="surrogatepass"),
    lambda t: unquote(t, errors="surrogatepass"),
    lambda t: unquote_plus(t, errors="surrogatepass"),
)


def _base64_forms(secret: str) -> set[str]:
    """The secret's base64 (standard and URL-safe, padded or not), and at byte offsets 1 and 2
    inside a longer input the part of the encoding that only the secret's bytes decide."""
    data = secret.encode("utf-8", "surrogatepass")
    forms = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(data).decode("ascii")
        forms |= {whole, whole.rstrip("=")}
        for offset in range(3):
            encoded = encode(b"\0" * offset + data).decode("ascii")
            core = encoded[4 if offset else 0:(offset + len(data)) // 3 * 4]
            if len(core) >= 8:
                forms.add(core)
    return forms


def secret_forms(secret: str) -> set[str]:
    """Every spelling of `secret` that SECRETS masks (see above), fragments aside."""
    forms = {secret}
    for _ in range(2):
        for form in list(forms):
            for encoding in _ENCODINGS:
                try:
                    forms.add(encoding(form))
                except (UnicodeError, ValueError):
                    pass
    forms |= _base64_forms(secret)
    return {f for f in forms if f}


class Redactor:
    """Masks registered secrets in text, in all the spellings of `secret_forms` and fragments."""

    def __init__(self):
        self._lock = threading.Lock()
        self._secrets: list[str] = []
        self._grams: dict[str, set[str]] = {}
        self._pattern: re.Pattern | None = None

    def add(self, secret: str | None) -> None:
        if not secret:
            return
        with self._lock:
            if secret in self._secrets:
                return
            secrets = self._secrets + [secret]
            forms = set().union(*(secret_forms(s) for s in secrets))
            alternatives = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
            self._pattern = re.compile(alternatives, re.IGNORECASE)
            if len(secret) > FRAGMENT_CHARS:
                self._grams[secret] = {secret[i:i + FRAGMENT_CHARS]
                                       for i in range(len(secret) - FRAGMENT_CHARS + 1)}
            self._secrets = secrets

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def redact(self, text):
        """`text` with every registered secret masked; non-strings are returned as they are."""
        pattern = self._pattern
        if pattern is None or not isinstance(text, str) or not text:
            return text
        text = pattern.sub(MASK, text)
        for secret, grams in list(self._grams.items()):
            text = _mask_fragments(text, secret, grams)
        return text


def _mask_fragments(text: str, secret: str, grams: set[str]) -> str:
    """Masks each run of FRAGMENT_CHARS or more characters of `text` that occurs in `secret`."""
    if len(text) < FRAGMENT_CHARS:
        return text
    out, i, last, n = [], 0, 0, len(text)
    while i <= n - FRAGMENT_CHARS:
        if text[i:i + FRAGMENT_CHARS] in grams:
            end = i + FRAGMENT_CHARS
            while end < n and text[i:end + 1] in secret:
                end += 1
            out += [text[last:i], MASK]
            i = last = end
        else:
            i += 1
    return "".join(out) + text[last:] if out else text


SECRETS = Redactor()


def redact(text):
    """`text` with every secret registered in this process masked (see Redactor)."""
    return SECRETS.redact(text)


class RedactSecrets(logging.Filter):
    """Masks the registered secrets in a log record (message, arguments, traceback, stack)
    before any handler formats it. Installed on handlers (a logger's own filters do not see
    records that propagate up from other loggers), so it covers every logger's records."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not SECRETS:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: mask what there is
            message = f"{record.msg} {record.args}"
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


REDACTION = RedactSecrets()
# Loggers whose records must be masked even for handlers added after protect_secret (a
# logger's filters apply to the records logged on it, whatever handler gets them later).
LIBRARY_LOGGERS = ("", "tweepy", "tweepy.client", "tweepy.streaming", "tweepy.asynchronous.client",
                   "urllib3", "urllib3.connectionpool", "urllib3.connection", "urllib3.response",
                   "urllib3.util.retry", "requests", "connectors.feeds.x_api", "connectors.feeds.x_stream",
                   "connectors.feeds.rate_limit", "pipelines.cli.ingest")


def protect_secret(secret: str) -> RedactSecrets:
    """Registers `secret` and puts the redaction filter on every handler there is now (the
    root's first: a handler on the root sees all propagated records), on logging's last-resort
    handler, and on the loggers of tweepy, urllib3, requests and ours. Call it again after
    configuring new handlers."""
    SECRETS.add(secret)
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    loggers += [lg for lg in list(logging.Logger.manager.loggerDict.values()) if isinstance(lg, logging.Logger)]
    handlers = [h for lg in loggers for h in lg.handlers]
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for target in [*handlers, *(logging.getLogger(name) for name in LIBRARY_LOGGERS)]:
        if REDACTION not in target.filters:
            target.addFilter(REDACTION)
    return REDACTION


def api_detail(text, limit: int = 300) -> str:
    """Text an API answered (a problem's detail, an error body): secrets masked, one line,
    at most `limit` characters. An error page or a proxy may echo the request's headers."""
    text = redact(" ".join(redact(str(text)).split()))
    return text if len(text) <= limit else text[:limit - 1] + "…"


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
    if isinstance(exc, requests.JSONDecodeError) or (
            isinstance(exc, ValueError) and not isinstance(exc, requests.RequestException)):
        return Transient("X API response is not JSON")  # a 2xx body that is not JSON (a proxy's page)
    if isinstance(exc, requests.RequestException):  # a request that could not be made at all
        return Fatal(f"cannot send the request to the X API: {type(exc).__name__}: {api_detail(exc)}")
    detail = api_detail("; ".join(str(m) for m in getattr(exc, "api_messages", []) or []) or str(exc))
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
