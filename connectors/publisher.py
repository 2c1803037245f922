"""Publishing Posts to a Pub/Sub topic: message building, pacing, batching, acknowledgements.

    Post dict (the Post contract: id, text, created_at, lang, author_id, keyword)
      -> Message(data=JSON bytes, attributes={post_id, event_time, keyword, lang})
      -> Pub/Sub, batched by the client library; `Publisher.publish` returns only
         when every message is acknowledged (or says which ones failed and why).

Also the two sources of `pulse publish`: a JSON Lines file (each line published
verbatim, so malformed lines reach the job and its dead-letter table, as they would
from a misbehaving producer) and a synthetic post generator for demos and load tests.
`PUBSUB_EMULATOR_HOST` points the client at the emulator.

    PUBSUB_EMULATOR_HOST=127.0.0.1:8085 python -c "from connectors.publisher import *; print(Publisher('projects/p/topics/t').publish(map(post_message, synthetic_posts(10))))"
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
import re
import threading
from concurrent import futures as cf
from typing import Iterable, Iterator, NamedTuple

from connectors.rate_limit import Clock, SystemClock

# As loose as connectors/pubsub.py's (which imports Beam, too slow for a CLI's start):
# Pub/Sub itself says what is wrong with a name it rejects.
TOPIC_RE = re.compile(r"^projects/([^/\s]+)/topics/([^/\s]+)$")
ATTRIBUTES = ("post_id", "event_time", "keyword", "lang")


class Message(NamedTuple):
    data: bytes
    attributes: dict


class PublishError(RuntimeError):
    """Some messages were not acknowledged; `failed` holds (index, reason)."""

    def __init__(self, failed: list[tuple[int, str]], published: int):
        first = failed[0][1] if failed else "unknown"
        super().__init__(f"{len(failed)} of {published + len(failed)} messages were not "
                         f"acknowledged (first error: {first})")
        self.failed = failed


def check_topic(path: str) -> str:
    """Returns `path` if it is projects/P/topics/T, else raises ValueError with the reason."""
    if not TOPIC_RE.match(path or ""):
        raise ValueError(f"{path!r} is not a topic path (expected projects/PROJECT/topics/TOPIC)")
    return path


def rfc3339(when: dt.datetime) -> str:
    """Aware datetime -> '2026-11-25T07:47:19.123Z' (the X API's created_at format)."""
    when = when.astimezone(dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def post_attributes(post: dict) -> dict[str, str]:
    """The message attributes of a Post: post_id (the Dataflow id_label), event_time
    (the timestamp_attribute, RFC 3339), keyword and lang; absent fields are left out."""
    values = {"post_id": post.get("id"), "event_time": post.get("created_at"),
              "keyword": post.get("keyword"), "lang": post.get("lang")}
    return {k: v for k, v in values.items() if isinstance(v, str) and v}


def post_message(post: dict) -> Message:
    """Post dict -> Message with compact UTF-8 JSON body and the Post attributes."""
    body = json.dumps(post, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Message(body, post_attributes(post))


def line_message(line: bytes) -> Message:
    """One JSON Lines line -> Message carrying the line byte for byte; attributes only when
    the line is a JSON object (a malformed line is still published: the job dead-letters it)."""
    data = line.rstrip(b"\r\n")
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return Message(data, {})
    return Message(data, post_attributes(body) if isinstance(body, dict) else {})


def read_jsonl(path: str) -> Iterator[Message]:
    """The non-blank lines of a JSON Lines file, as Messages."""
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield line_message(line)


def count_lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


_SUBJECTS = ("the app", "support", "the new update", "delivery", "the checkout", "battery life",
             "customer service", "the price", "the website", "my order")
_VERDICTS = {
    "positive": ("is great", "is amazing, love it", "works perfectly", "made my day", "is excellent"),
    "negative": ("is terrible", "keeps crashing", "is a disaster", "is awful, very disappointed",
                 "is broken again"),
    "neutral": ("was updated today", "is available in my region", "changed its layout",
                "arrived on tuesday", "is listed on the site"),
}


def synthetic_posts(n: int, *, keywords: tuple[str, ...] = ("acme", "globex", "initech"),
                    seed: int = 0, clock: Clock | None = None, id_start: int = 1_800_000_000_000_000_000,
                    langs: tuple[str, ...] = ("en",)) -> Iterator[dict]:
    """`n` deterministic (for a seed) Post dicts in the X API v2 shape, ids increasing.

    `created_at` is the clock's time when the post is generated: posts are generated as
    they are published, so a paced run produces posts in event time order near "now"
    (the DirectRunner's Pub/Sub watermark is wall-clock time)."""
    clock = clock or SystemClock()
    rng = random.Random(seed)
    for i in range(n):
        mood = rng.choice(tuple(_VERDICTS))
        keyword = rng.choice(keywords)
        created = dt.datetime.fromtimestamp(clock.now(), tz=dt.timezone.utc)
        yield {
            "id": str(id_start + i),
            "text": f"{keyword} {rng.choice(_SUBJECTS)} {rng.choice(_VERDICTS[mood])}",
            "created_at": rfc3339(created),
            "lang": rng.choice(langs),
            "author_id": str(1000 + rng.randrange(500)),
            "keyword": keyword,
        }


class Pacer:
    """Spaces calls to `rate` per second on average (no drift: targets start + i / rate)."""

    def __init__(self, rate: float | None, clock: Clock):
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.clock = clock
        self.start: float | None = None
        self.count = 0

    def wait(self) -> None:
        if self.rate is None:
            return
        now = self.clock.now()
        if self.start is None:
            self.start = now
        target = self.start + self.count / self.rate
        if target > now:
            self.clock.sleep(target - now)
        self.count += 1


@dataclasses.dataclass
class PublishResult:
    published: int
    message_ids: list[str]


class Publisher:
    """A google-cloud-pubsub PublisherClient for one topic, with acknowledgement tracking.

    Batching is the client library's (`max_messages` per request or `max_latency_s`);
    flow control blocks the producer when `max_in_flight` messages await acknowledgement,
    so a fast file or generator cannot exhaust memory.
    """

    def __init__(self, topic: str, *, max_messages: int = 100, max_latency_s: float = 0.05,
                 max_in_flight: int = 5_000, ack_timeout_s: float = 120.0, client=None):
        from google.cloud import pubsub_v1
        from google.cloud.pubsub_v1 import types

        self.topic = check_topic(topic)
        self.ack_timeout_s = ack_timeout_s
        self.client = client or pubsub_v1.PublisherClient(
            batch_settings=types.BatchSettings(max_messages=max_messages, max_latency=max_latency_s),
            publisher_options=types.PublisherOptions(flow_control=types.PublishFlowControl(
                message_limit=max_in_flight,
                limit_exceeded_behavior=types.LimitExceededBehavior.BLOCK)),
        )

    def topic_exists(self) -> bool:
        from google.api_core import exceptions
        try:
            self.client.get_topic(topic=self.topic)
        except exceptions.NotFound:
            return False
        return True

    def publish(self, messages: Iterable[Message], *, rate: float | None = None,
                clock: Clock | None = None, progress: bool = False, total: int | None = None,
                stop: threading.Event | None = None) -> PublishResult:
        """Publishes every message and waits for all acknowledgements.

        Returns the server's message ids in input order; raises PublishError naming the
        failures if any message was not acknowledged (the caller must not checkpoint)."""
        pacer = Pacer(rate, clock or SystemClock())
        pending: list[cf.Future] = []
        bar = _progress(progress, total, self.topic)
        lock = threading.Lock()

        def acked(_future):
            with lock:
                bar.update(1)

        try:
            for message in messages:
                if stop is not None and stop.is_set():
                    break
                pacer.wait()
                future = self.client.publish(self.topic, message.data, **message.attributes)
                future.add_done_callback(acked)
                pending.append(future)
            ids, failed = [], []
            for i, future in enumerate(pending):
                try:
                    ids.append(future.result(timeout=self.ack_timeout_s))
                except Exception as e:  # the future carries the API error; report all of them
                    failed.append((i, f"{type(e).__name__}: {e}"))
        finally:
            bar.close()
        if failed:
            raise PublishError(failed, len(ids))
        return PublishResult(len(ids), ids)

    def close(self) -> None:
        self.client.stop()


def _progress(enabled: bool, total: int | None, topic: str):
    from tqdm import tqdm
    return tqdm(total=total, disable=not enabled, unit="msg", desc=f"publish {topic.rsplit('/', 1)[-1]}",
                dynamic_ncols=True)
