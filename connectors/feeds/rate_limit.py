"""Rate limiting and retries for HTTP APIs with published per-window limits (the X API v2).

Three mechanisms, each a small class with an injectable clock so tests measure the
waits without sleeping:

    TokenBucket   steady pacing sized from the endpoint's published limit
                  (requests per window), so a long-running poller never reaches the limit.
    RateLimiter   the bucket plus the server's own `x-rate-limit-*` headers: it slows
                  down as `remaining` runs low, and after a 429 waits until
                  `x-rate-limit-reset` plus a random jitter (so many pollers restarting
                  together do not hit the API in the same second).
    Backoff       exponential backoff with jitter for 5xx and network errors.

`call_with_retries(fn, limiter, backoff)` ties them together. `fn` raises
`RateLimited`, `Transient` or `Fatal` (the API connector translates its client's
exceptions into these); 401/403 are `Fatal` and end the program with a clear message.

    python -c "from connectors.feeds.rate_limit import *; c = FakeClock(0); b = TokenBucket.for_limit(ENDPOINT_LIMITS['search_recent'], c); [b.acquire() for _ in range(3)]; print(c.sleeps)"
"""
from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from typing import Callable, Mapping, NamedTuple, Protocol, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class EndpointLimit(NamedTuple):
    requests: int  # allowed per window, per app (bearer token)
    window_s: float


# The published app-auth (bearer token) limits of the X API v2 endpoints we call
# (developer.x.com "Rate limits", Pro tier). The server's x-rate-limit-limit header
# resizes the bucket on the first response, so a Basic or Enterprise account needs no flag.
ENDPOINT_LIMITS = {
    "search_recent": EndpointLimit(450, 15 * 60),
    "stream_rules": EndpointLimit(450, 15 * 60),
    "stream_connect": EndpointLimit(50, 15 * 60),
}


class Clock(Protocol):
    def now(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Wall-clock time; `sleep` returns early when `stop` is set (SIGTERM, Ctrl-C)."""

    def __init__(self, stop: threading.Event | None = None):
        self.stop = stop or threading.Event()

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.stop.wait(seconds)


class FakeClock:
    """A clock for tests: `sleep` advances time at once and records the wait."""

    def __init__(self, start: float | None = None):
        self._now = time.time() if start is None else float(start)
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(float(seconds))
            self._now += max(0.0, float(seconds))

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


class TokenBucket:
    """`capacity` tokens, refilled at `rate` per second; `acquire()` waits for one.

    Sized from a published limit of N requests per W seconds: rate = N / W and a small
    burst, so the sustained request rate stays under the limit whatever the poll interval.
    """

    def __init__(self, capacity: float, rate: float, clock: Clock):
        if capacity < 1 or rate <= 0:
            raise ValueError("a token bucket needs capacity >= 1 and a positive rate")
        self.capacity = float(capacity)
        self.rate = float(rate)
        self.clock = clock
        self.tokens = float(capacity)
        self.updated = clock.now()

    @classmethod
    def for_limit(cls, limit: EndpointLimit, clock: Clock, burst: int = 5) -> "TokenBucket":
        return cls(min(burst, limit.requests), limit.requests / limit.window_s, clock)

    def resize(self, limit: EndpointLimit, burst: int = 5) -> None:
        self._refill()
        self.capacity = float(max(1, min(burst, limit.requests)))
        self.rate = max(limit.requests, 1) / limit.window_s
        self.tokens = min(self.tokens, self.capacity)

    def _refill(self) -> None:
        now = self.clock.now()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def acquire(self) -> float:
        """Take one token, waiting as long as needed; returns the seconds waited."""
        self._refill()
        waited = 0.0
        if self.tokens < 1:
            wait = (1 - self.tokens) / self.rate
            self.clock.sleep(wait)
            waited = wait
            self._refill()
        self.tokens = max(0.0, self.tokens - 1)
        return waited


@dataclasses.dataclass
class Backoff:
    """Delay before retry `attempt` (1, 2, ...): base * factor**(attempt-1), capped,
    times a jitter factor in [1 - jitter, 1] (never shorter than half the step)."""

    base_s: float = 1.0
    factor: float = 2.0
    cap_s: float = 120.0
    jitter: float = 0.5
    max_attempts: int = 8
    rng: random.Random = dataclasses.field(default_factory=random.Random)

    def delay(self, attempt: int) -> float:
        step = min(self.cap_s, self.base_s * self.factor ** max(0, attempt - 1))
        return step * (1 - self.jitter * self.rng.random())

    def bounds(self, attempt: int) -> tuple[float, float]:
        step = min(self.cap_s, self.base_s * self.factor ** max(0, attempt - 1))
        return step * (1 - self.jitter), step


class RateLimited(Exception):
    """HTTP 429; `reset_at` is the epoch second the window resets (x-rate-limit-reset)."""

    def __init__(self, reset_at: float | None, headers: Mapping[str, str] | None = None):
        super().__init__(f"rate limited until {reset_at}")
        self.reset_at = reset_at
        self.headers = dict(headers or {})


class Transient(Exception):
    """A 5xx or network error: retry with exponential backoff."""


class Fatal(Exception):
    """A 401/403 or another error that retrying cannot fix; the message is for the user."""


class GaveUp(Fatal):
    """Transient errors persisted past the retry budget."""


class Stopped(Exception):
    """The stop event was set while waiting to retry (SIGTERM, Ctrl-C)."""


class RateLimiter:
    """Paces requests to one endpoint: token bucket + the server's rate-limit headers."""

    def __init__(self, limit: EndpointLimit, clock: Clock, rng: random.Random | None = None,
                 jitter_s: tuple[float, float] = (1.0, 5.0), reserve: int = 2, burst: int = 5):
        self.limit = limit
        self.clock = clock
        self.rng = rng or random.Random()
        self.jitter_s = jitter_s
        self.reserve = reserve
        self.burst = burst
        self.bucket = TokenBucket.for_limit(limit, clock, burst)
        self.remaining: int | None = None
        self.reset_at: float | None = None
        self.waits: list[tuple[str, float]] = []  # (why, seconds): what the tests and logs read

    def _sleep(self, why: str, seconds: float) -> None:
        if seconds <= 0:
            return
        self.waits.append((why, seconds))
        log.info("rate limit: waiting %.1f s (%s)", seconds, why)
        self.clock.sleep(seconds)

    def before_request(self) -> None:
        now = self.clock.now()
        if self.remaining is not None and self.reset_at is not None and now < self.reset_at:
            if self.remaining <= 0:
                self._sleep("window exhausted", self.reset_at - now + self._jitter())
                self.remaining = None
            elif self.remaining <= self.reserve:
                # Spread the last few requests over what is left of the window
                # instead of spending them at once and then hitting a 429.
                self._sleep("window nearly exhausted", (self.reset_at - now) / (self.remaining + 1))
        waited = self.bucket.acquire()
        if waited:
            self.waits.append(("token bucket", waited))

    def observe(self, headers: Mapping[str, str]) -> None:
        """Reads x-rate-limit-limit/remaining/reset from a response (any status)."""
        lower = {k.lower(): v for k, v in headers.items()}
        try:
            if "x-rate-limit-limit" in lower:
                limit = int(lower["x-rate-limit-limit"])
                if limit > 0 and limit != self.limit.requests:
                    self.limit = EndpointLimit(limit, self.limit.window_s)
                    self.bucket.resize(self.limit, self.burst)
            if "x-rate-limit-remaining" in lower:
                self.remaining = int(lower["x-rate-limit-remaining"])
            if "x-rate-limit-reset" in lower:
                self.reset_at = float(lower["x-rate-limit-reset"])
        except ValueError:
            log.warning("ignoring malformed rate-limit headers %s",
                        {k: v for k, v in lower.items() if k.startswith("x-rate-limit")})

    def _jitter(self) -> float:
        return self.rng.uniform(*self.jitter_s)

    def wait_for_reset(self, reset_at: float | None) -> float:
        """After a 429: until the reset second plus jitter; without the header, a full window."""
        now = self.clock.now()
        wait = (reset_at - now if reset_at is not None else self.limit.window_s) + self._jitter()
        wait = max(wait, self.jitter_s[0])
        self._sleep("429 until x-rate-limit-reset", wait)
        self.remaining = None
        return wait


def call_with_retries(fn: Callable[[], T], limiter: RateLimiter, backoff: Backoff,
                      headers_of: Callable[[T], Mapping[str, str]] | None = None,
                      stop: threading.Event | None = None) -> T:
    """Calls `fn` under the limiter; retries 429s (no attempt limit: the API says when)
    and transient errors (up to backoff.max_attempts); `Fatal` propagates."""
    attempt = 0
    while True:
        limiter.before_request()
        try:
            result = fn()
        except RateLimited as e:
            limiter.observe(e.headers)
            limiter.wait_for_reset(e.reset_at)
        except Transient as e:
            attempt += 1
            if attempt >= backoff.max_attempts:
                raise GaveUp(f"giving up after {attempt} attempts: {e}") from e
            delay = backoff.delay(attempt)
            log.warning("transient error (%s); retry %d in %.1f s", e, attempt, delay)
            limiter.waits.append(("backoff", delay))
            limiter.clock.sleep(delay)
        else:
            if headers_of is not None:
                limiter.observe(headers_of(result))
            return result
        if stop is not None and stop.is_set():
            raise Stopped("stopped while waiting to retry")
