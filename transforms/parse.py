"""ParsePosts: raw messages -> validated Posts in event time, or dead letters.

    RawMessage -> Post (main output, timestamped with the post's event time)
               -> dict DeadLetter row (tag "dead_letters", stage "parse")

Event time is `created_at` (RFC 3339); without it, the `event_time` attribute; without
that, the Pub/Sub publish time (which the source already stamped as the element's
timestamp). A `created_at` that is present but unparseable is a dead letter, not a
silent fallback: the analyst would otherwise see the post in the wrong window.

    python -c "from transforms.parse import parse_post; print(parse_post(b'{\\"id\\":\\"1\\",\\"text\\":\\"hi\\"}', {}, 0.0))"
"""
from __future__ import annotations

import datetime as dt
import json

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue

from models.contracts import parse_rfc3339
from transforms.records import Post, RawMessage, dead_letter, utc_from_epoch

MAX_TEXT_CHARS = 10_000
MAX_ID_CHARS = 128
DEFAULT_LANG = "und"
DEFAULT_KEYWORD = "(none)"
NAMESPACE = "sentiment_pulse"


_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number",
               bool: "boolean", type(None): "null"}


def json_type(value) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


class ParseError(ValueError):
    """A message that is not a valid Post; the message is the dead letter's reason."""


def parse_timestamp(value) -> dt.datetime:
    """RFC 3339 -> aware UTC datetime, or ParseError."""
    try:
        return parse_rfc3339(value)
    except ValueError as e:
        raise ParseError(str(e)) from None


def _optional_str(body: dict, field: str, max_chars: int = 64) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ParseError(f"field {field!r} must be a string, got {json_type(value)}")
    value = value.strip()
    if len(value) > max_chars:
        raise ParseError(f"field {field!r} is longer than {max_chars} characters")
    return value or None


def parse_post(data: bytes, attributes: dict | None, publish_time: float | None,
               watermark: float | None = None) -> Post:
    """One message body -> Post, or raises ParseError with a precise reason."""
    attributes = attributes or {}
    if not isinstance(data, (bytes, bytearray)):
        raise ParseError(f"payload must be bytes, got {type(data).__name__}")
    try:
        decoded = bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParseError(f"payload is not valid UTF-8 (byte {e.start}: {e.reason})") from None
    if not decoded.strip():
        raise ParseError("payload is empty")
    try:
        body = json.loads(decoded)
    except json.JSONDecodeError as e:
        raise ParseError(f"payload is not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(body, dict):
        raise ParseError(f"payload is a JSON {json_type(body)}, not an object")

    post_id = body.get("id")
    if post_id is None:
        raise ParseError("required field 'id' is missing")
    if not isinstance(post_id, str):
        raise ParseError(f"field 'id' must be a string, got {json_type(post_id)}")
    post_id = post_id.strip()
    if not post_id or len(post_id) > MAX_ID_CHARS:
        raise ParseError(f"field 'id' must be 1 to {MAX_ID_CHARS} characters")

    text = body.get("text")
    if text is None:
        raise ParseError("required field 'text' is missing")
    if not isinstance(text, str):
        raise ParseError(f"field 'text' must be a string, got {json_type(text)}")
    if not text.strip():
        raise ParseError("field 'text' is blank")
    if len(text) > MAX_TEXT_CHARS:
        raise ParseError(f"field 'text' is longer than {MAX_TEXT_CHARS} characters")

    if body.get("created_at") is not None:
        created_at = parse_timestamp(body["created_at"])
    elif attributes.get("event_time"):
        created_at = parse_timestamp(attributes["event_time"])
    elif publish_time is not None:
        created_at = utc_from_epoch(publish_time)
    else:
        raise ParseError("no event time: no created_at, no event_time attribute, no publish time")

    lang = _optional_str(body, "lang", 35) or attributes.get("lang") or DEFAULT_LANG
    keyword = _optional_str(body, "keyword", 200) or attributes.get("keyword") or DEFAULT_KEYWORD
    return Post(
        post_id=post_id,
        text=text,
        created_at=created_at,
        lang=lang.lower(),
        keyword=keyword.strip().lower() or DEFAULT_KEYWORD,
        author_id=_optional_str(body, "author_id"),
        watermark=watermark,
        raw=bytes(data),
        attributes=dict(attributes),
    )


class _ParseDoFn(beam.DoFn):
    def __init__(self):
        self.read = Metrics.counter(NAMESPACE, "read")
        self.parsed = Metrics.counter(NAMESPACE, "parsed")
        self.dead = Metrics.counter(NAMESPACE, "dead_letter_parse")

    def process(self, message: RawMessage, timestamp=beam.DoFn.TimestampParam):
        self.read.inc()
        publish_time = message.publish_time
        if publish_time is None and timestamp is not None and timestamp.micros > -2**62:
            publish_time = float(timestamp)
        try:
            post = parse_post(message.data, message.attributes, publish_time, message.watermark)
        except ParseError as e:
            self.dead.inc()
            yield beam.pvalue.TaggedOutput("dead_letters", dead_letter(
                "parse", str(e), _as_bytes(message.data), _safe_attributes(message.attributes)))
            return
        self.parsed.inc()
        yield TimestampedValue(post, post.created_at.timestamp())


def _as_bytes(data) -> bytes:
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    return repr(data).encode("utf-8")


def _safe_attributes(attributes) -> dict:
    return {str(k): str(v) for k, v in (attributes or {}).items()} if isinstance(attributes, dict) else {}


class ParsePosts(beam.PTransform):
    """RawMessage -> {"posts": Post timestamped by event time, "dead_letters": DeadLetter rows}.

    Event time is assigned here, in its own named step, so every later step (windowing
    first) sees the post's own time rather than its arrival time.
    """

    def expand(self, messages):
        results = messages | "ValidateAndStampEventTime" >> beam.ParDo(_ParseDoFn()).with_outputs(
            "dead_letters", main="posts")
        return {"posts": results.posts, "dead_letters": results.dead_letters}
