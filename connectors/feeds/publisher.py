"""Publishing Posts to a Pub/Sub topic: message building, pacing, batching, acknowledgements.

    Post dict (the Post contract: id, text, created_at, lang, author_id, keyword)
      -> Message(data=JSON bytes, attributes={post_id, event_time, keyword, lang, post_key})
      -> Pub/Sub, batched by the client library; `Publisher.publish` returns only
         when every message is acknowledged (or says which ones failed and why).

Attributes are hints the job and Pub/Sub read before the body (`event_time` as the
timestamp attribute, `post_key` = "<post id>|<keyword>" as the de-duplication id_label:
the connectors publish a post once per keyword it matched, and the job de-duplicates on
(post id, keyword)). Each is set only where it can be read safely: a string value, valid
UTF-8, at most 1024 bytes (Pub/Sub's limit; longer ones are left out, never cut: a cut id
would de-duplicate different posts), `event_time` only when it is an RFC 3339 timestamp
(an unparseable timestamp attribute stops a Dataflow reader), `post_key` only when both
halves are there, normalised as the job normalises them (id stripped, keyword stripped and
lowercased), and the id holds no "|". The body is never changed.

Also the two sources of `pulse publish`: a JSON Lines file (each line's bytes published as
they are, so malformed lines reach the job and its dead-letter table, as they would from a
misbehaving producer; attributes come from `line_attributes`, which reads a line the way
the job does and never raises) and a synthetic post generator for demos and load tests.
`PUBSUB_EMULATOR_HOST` points the client at the emulator.

    PUBSUB_EMULATOR_HOST=127.0.0.1:8085 python -c "from connectors.feeds.publisher import *; print(Publisher('projects/p/topics/t').publish(map(post_message, synthetic_posts(10))))"
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

from connectors.feeds.rate_limit import Clock, SystemClock

# As loose as connectors/sources/pubsub.py's (which imports Beam, too slow for a CLI's start):
# Pub/Sub itself says what is wrong with a name it rejects.
TOPIC_RE = re.compile(r"^projects/([^/\s]+)/topics/([^/\s]+)$")
ATTRIBUTES = ("post_id", "event_time", "keyword", "lang", "post_key")
MAX_ATTRIBUTE_KEY_BYTES = 256  # Pub/Sub's limits
MAX_ATTRIBUTE_VALUE_BYTES = 1024
MAX_REQUEST_BYTES = 10_000_000  # a publish request, so one message (the client library checks the same)
RFC3339_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")


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


def attribute_value(value) -> str | None:
    """`value` if Pub/Sub takes it as an attribute value as it is (a string that encodes as
    UTF-8 in at most 1024 bytes) and it is not blank (the job takes a blank field as a missing
    one, and would read the attribute instead), else None."""
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_ATTRIBUTE_VALUE_BYTES:
        return None
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, as JSON's "\ud83d" decodes to
        return None
    return value if len(encoded) <= MAX_ATTRIBUTE_VALUE_BYTES else None


def is_rfc3339(value: str) -> bool:
    """'2026-11-25T07:47:19.123Z' or with a '+01:00' offset; a real date and time."""
    if not RFC3339_RE.fullmatch(value):
        return False
    try:
        dt.datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def post_key(post_id, keyword) -> str | None:
    """'<id>|<keyword>' as the job normalises them (id stripped, keyword stripped and
    lowercased), or None where either is missing or not a string, or the id holds '|'
    (the key would be ambiguous)."""
    if not isinstance(post_id, str) or not isinstance(keyword, str):
        return None
    post_id, keyword = post_id.strip(), keyword.strip().lower()
    if not post_id or not keyword or "|" in post_id:
        return None
    return attribute_value(f"{post_id}|{keyword}")


def post_attributes(post: dict) -> dict[str, str]:
    """The message attributes of a Post: post_id, event_time (the timestamp_attribute,
    RFC 3339), keyword, lang and post_key (the Dataflow id_label); each only where it can be
    read safely (see the module docstring). Never raises for any dict."""
    attributes = {}
    for name, field in (("post_id", "id"), ("event_time", "created_at"), ("keyword", "keyword"),
                        ("lang", "lang")):
        value = attribute_value(post.get(field))
        if value is not None and (name != "event_time" or is_rfc3339(value)):
            attributes[name] = value
    key = post_key(post.get("id"), post.get("keyword"))
    if key is not None:
        attributes["post_key"] = key
    return attributes


def post_message(post: dict) -> Message:
    """Post dict -> Message with compact UTF-8 JSON body and the Post attributes."""
    body = json.dumps(post, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Message(body, post_attributes(post))


def line_attributes(data: bytes) -> dict[str, str]:
    """The Post attributes of one message body, read the way the job reads it (strict UTF-8,
    then JSON); {} when it is not a JSON object. Never raises, whatever the bytes: invalid
    UTF-8, a 5,000-digit number (Python's int digit limit), 10,000 nested arrays (RecursionError)."""
    try:
        body = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return {}
    return post_attributes(body) if isinstance(body, dict) else {}


def strip_terminator(line: bytes) -> bytes:
    """A line without its terminator: one trailing "\n" or "\r\n"; any other byte is data."""
    if line.endswith(b"\r\n"):
        return line[:-2]
    return line[:-1] if line.endswith(b"\n") else line


def line_message(line: bytes) -> Message:
    """One JSON Lines line -> Message carrying the line's bytes exactly (terminator aside),
    with the attributes that can be read from it (a malformed line is still published: the
    job dead-letters it)."""
    data = strip_terminator(line)
    return Message(data, line_attributes(data))


def file_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, the line's bytes without its terminator) for every line, empty ones too."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            yield number, strip_terminator(line)


def read_jsonl(path: str) -> Iterator[Message]:
    """Every non-empty line of a JSON Lines file, as a Message. Empty lines (no byte between
    two terminators) are not messages: Pub/Sub refuses a message with neither data nor
    attributes. A line of spaces is data, and is published."""
    for _, data in file_lines(path):
        if data:
            yield line_message(data)


def count_lines(path: str) -> int:
    """The number of messages read_jsonl yields."""
    return sum(1 for _, data in file_lines(path) if data)


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
        failures (by index in `messages`) if any message was not acknowledged (the caller must
        not checkpoint). A message the client refuses outright (over Pub/Sub's 10 MB request
        limit, say) is such a failure too; the messages after it are still published."""
        pacer = Pacer(rate, clock or SystemClock())
        pending: list[tuple[int, cf.Future]] = []
        failed: list[tuple[int, str]] = []
        bar = _progress(progress, total, self.topic)
        lock = threading.Lock()

        def acked(_future):
            with lock:
                bar.update(1)

        try:
            for i, message in enumerate(messages):
                if stop is not None and stop.is_set():
                    break
                too_large = self.too_large(message)
                if too_large:
                    failed.append((i, too_large))
                    continue
                pacer.wait()
                try:
                    future = self.client.publish(self.topic, message.data, **message.attributes)
                except (ValueError, TypeError) as e:  # refused by the client library itself
                    failed.append((i, f"{type(e).__name__}: {e}"))
                    continue
                future.add_done_callback(acked)
                pending.append((i, future))
            ids = []
            for i, future in pending:
                try:
                    ids.append(future.result(timeout=self.ack_timeout_s))
                except Exception as e:  # the future carries the API error; report all of them
                    failed.append((i, f"{type(e).__name__}: {e}"))
        finally:
            bar.close()
        if failed:
            raise PublishError(sorted(failed), len(ids))
        return PublishResult(len(ids), ids)

    def too_large(self, message: Message) -> str | None:
        """Why Pub/Sub cannot take `message` (its publish request would exceed 10 MB), or None.
        Measured as the client library measures it, which otherwise fails such a message in
        its flow control or its batch with a less direct error."""
        if len(message.data) < MAX_REQUEST_BYTES - 1_000_000:
            return None
        from google.pubsub_v1 import types as gapic
        size = gapic.PublishRequest(topic=self.topic, messages=[gapic.PubsubMessage(
            data=message.data, attributes=message.attributes)])._pb.ByteSize()
        if size <= MAX_REQUEST_BYTES:
            return None
        return (f"a message of {len(message.data):,} bytes is over Pub/Sub's limit "
                f"({MAX_REQUEST_BYTES:,} bytes a publish request)")

    def close(self) -> None:
        self.client.stop()


def _progress(enabled: bool, total: int | None, topic: str):
    from tqdm import tqdm
    return tqdm(total=total, disable=not enabled, unit="msg", desc=f"publish {topic.rsplit('/', 1)[-1]}",
                dynamic_ncols=True)
