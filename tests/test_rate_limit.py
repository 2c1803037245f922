"""Token bucket, header pacing, 429 waits and exponential backoff, on a fake clock."""
import random

import pytest

from connectors.feeds.rate_limit import (Backoff, EndpointLimit, Fatal, FakeClock, GaveUp, RateLimited,
                                   RateLimiter, Stopped, TokenBucket, Transient, call_with_retries)


def test_token_bucket_spends_burst_then_paces_at_published_rate():
    clock = FakeClock(1000.0)
    bucket = TokenBucket.for_limit(EndpointLimit(450, 900), clock, burst=5)
    for _ in range(5):
        assert bucket.acquire() == 0
    waits = [bucket.acquire() for _ in range(10)]
    assert waits == pytest.approx([2.0] * 10)  # 900 s / 450 requests
    # 15 requests took 20 s: the sustained rate is the published one.
    assert clock.now() - 1000.0 == pytest.approx(20.0)


def test_token_bucket_never_exceeds_limit_over_a_window():
    clock = FakeClock(0.0)
    bucket = TokenBucket.for_limit(EndpointLimit(60, 900), clock, burst=5)
    count = 0
    while clock.now() < 900:
        bucket.acquire()
        count += 1
    assert count <= 60 + 5


def test_header_resizes_bucket_to_account_limit():
    clock = FakeClock(0.0)
    limiter = RateLimiter(EndpointLimit(450, 900), clock, burst=1)
    limiter.observe({"x-rate-limit-limit": "60", "x-rate-limit-remaining": "59", "x-rate-limit-reset": "900"})
    limiter.before_request()
    limiter.before_request()
    assert limiter.bucket.rate == pytest.approx(60 / 900)
    assert clock.sleeps[-1] == pytest.approx(15.0)


def test_slows_down_before_the_limit_when_remaining_runs_low():
    clock = FakeClock(0.0)
    limiter = RateLimiter(EndpointLimit(450, 900), clock, reserve=2)
    limiter.observe({"x-rate-limit-remaining": "1", "x-rate-limit-reset": "600"})
    limiter.before_request()
    assert limiter.waits[0][0] == "window nearly exhausted"
    assert limiter.waits[0][1] == pytest.approx(300.0)  # 600 s left, spread over remaining + 1


def test_exhausted_window_waits_until_reset_plus_jitter():
    clock = FakeClock(0.0)
    limiter = RateLimiter(EndpointLimit(450, 900), clock, jitter_s=(1.0, 5.0))
    limiter.observe({"x-rate-limit-remaining": "0", "x-rate-limit-reset": "120"})
    limiter.before_request()
    why, wait = limiter.waits[0]
    assert why == "window exhausted" and 121.0 <= wait <= 125.0


def test_429_waits_until_reset_with_jitter_then_succeeds():
    clock = FakeClock(10_000.0)
    limiter = RateLimiter(EndpointLimit(450, 900), clock, rng=random.Random(1), jitter_s=(1.0, 5.0))
    answers = iter([RateLimited(10_300.0), "ok"])

    def call():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert call_with_retries(call, limiter, Backoff()) == "ok"
    waits = [w for why, w in limiter.waits if why.startswith("429")]
    assert len(waits) == 1 and 301.0 <= waits[0] <= 305.0
    assert clock.now() >= 10_301.0


def test_jitter_differs_between_pollers():
    waits = set()
    for seed in range(5):
        limiter = RateLimiter(EndpointLimit(450, 900), FakeClock(0.0), rng=random.Random(seed))
        waits.add(round(limiter.wait_for_reset(60.0), 6))
    assert len(waits) == 5


def test_transient_errors_back_off_exponentially():
    clock = FakeClock(0.0)
    backoff = Backoff(base_s=1.0, factor=2.0, rng=random.Random(7))
    limiter = RateLimiter(EndpointLimit(10_000, 1), clock)
    failures = iter([Transient("503"), Transient("503"), Transient("reset"), Transient("503")])

    def call():
        failure = next(failures, None)
        if failure:
            raise failure
        return 42

    assert call_with_retries(call, limiter, backoff) == 42
    delays = [w for why, w in limiter.waits if why == "backoff"]
    assert len(delays) == 4
    for attempt, delay in enumerate(delays, start=1):
        low, high = backoff.bounds(attempt)
        assert low <= delay <= high
    assert delays[3] > delays[0] * 3  # grows: step 8 vs step 1, jitter at most halves it


def test_backoff_is_capped_and_gives_up():
    clock = FakeClock(0.0)
    backoff = Backoff(base_s=1.0, cap_s=10.0, max_attempts=6, rng=random.Random(3))
    assert backoff.bounds(20) == (5.0, 10.0)
    limiter = RateLimiter(EndpointLimit(10_000, 1), clock)

    def always_down():
        raise Transient("503 Service Unavailable")

    with pytest.raises(GaveUp, match="giving up after 6 attempts"):
        call_with_retries(always_down, limiter, backoff)


def test_fatal_is_not_retried():
    clock = FakeClock(0.0)
    limiter = RateLimiter(EndpointLimit(450, 900), clock)
    calls = []

    def unauthorized():
        calls.append(1)
        raise Fatal("401 Unauthorized")

    with pytest.raises(Fatal):
        call_with_retries(unauthorized, limiter, Backoff())
    assert len(calls) == 1 and not [w for w in limiter.waits if w[0] == "backoff"]


def test_stop_event_ends_retrying():
    import threading
    stop = threading.Event()
    limiter = RateLimiter(EndpointLimit(450, 900), FakeClock(0.0))

    def down():
        stop.set()
        raise Transient("503")

    with pytest.raises(Stopped):
        call_with_retries(down, limiter, Backoff(), stop=stop)
