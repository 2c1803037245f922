"""ParsePosts: raw messages -> validated Posts, or dead letters.

    RawMessage -> Post (main output; WindowPosts checks its event time and stamps it)
               -> dict DeadLetter row (tag "dead_letters", stage "parse", or "window" for
                  a created_at outside the years a datetime can hold)

Nothing a message holds can make this step raise: the payload is size-capped, JSON
nesting and number lengths are bounded before and while parsing, identifying strings
must be valid Unicode without control characters, `text` keeps a lone UTF-16 surrogate
only as U+FFFD, and `*` (the roll-up rows' name) is refused as a keyword or language.
Anything unexpected still becomes a dead letter naming the exception.

Event time is `created_at` (RFC 3339); without it, the `event_time` attribute; without
that, the Pub/Sub publish time (which the source already stamped as the element's
timestamp). A `created_at` that is present but unparseable is a dead letter, not a
silent fallback: the analyst would otherwise see the post in the wrong window.

    python -c "from transforms.parse import parse_post; print(parse_post(b'{\\"id\\":\\"1\\",\\"text\\":\\"hi\\"}', {}, 0.0))"
"""
from __future__ import annotations

import datetime as dt
import json
import math
import re
import unicodedata

import apache_beam as beam
from apache_beam.metrics import Metrics

from models.contracts import is_valid_text, parse_rfc3339, repair_text
from transforms.language import detect as detect_language
from transforms.records import Post, dead_letter, safe_reason, utc_from_epoch

MAX_TEXT_CHARS = 10_000
MAX_ID_CHARS = 128
MAX_PAYLOAD_BYTES = 256 * 1024  # a 10,000-character post escaped as \\uXXXX pairs still fits
MAX_JSON_DEPTH = 32
MAX_NUMBER_CHARS = 64
MAX_REASON_CHARS = 1000
DEFAULT_LANG = "und"  # what transforms/language.detect answers when it cannot tell
DEFAULT_KEYWORD = "(none)"
RESERVED = "*"  # the roll-up rows' keyword and language (transforms/aggregate.py ALL)
NAMESPACE = "sentiment_pulse"


_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number",
               bool: "boolean", type(None): "null"}


def json_type(value) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


class ParseError(ValueError):
    """A message that is not a valid Post; the message is the dead letter's reason.

    `stage` is "parse", or "window" for an event time outside the sane range.
    """

    def __init__(self, reason: str, stage: str = "parse"):
        super().__init__(reason)
        self.stage = stage


def parse_timestamp(value) -> dt.datetime:
    """RFC 3339 -> aware UTC datetime, or ParseError."""
    try:
        return parse_rfc3339(value)
    except ValueError as e:
        reason = str(e)
        raise ParseError(reason, "window" if reason.startswith("out of range") else "parse") from None


_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def json_depth(text: str, limit: int) -> int:
    """The nesting depth of a JSON text (strings skipped), counting no further than `limit` + 1."""
    depth = deepest = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                break
        elif token in "]}":
            depth -= 1
    return deepest


def _bounded_number(text: str):
    if len(text) > MAX_NUMBER_CHARS:
        raise ParseError(f"payload holds a number of {len(text)} characters (at most {MAX_NUMBER_CHARS})")
    value = float(text) if any(c in text for c in ".eE") else int(text)
    if isinstance(value, float) and not math.isfinite(value):
        raise ParseError(f"payload holds a number out of range ({text[:20]})")
    return value


def _reject_constant(name: str):
    raise ParseError(f"payload is not JSON: {name} is not a JSON value")


def load_json(decoded: str):
    """Bounded JSON: depth, number length and NaN/Infinity are checked; ParseError otherwise."""
    if decoded.count("[") + decoded.count("{") > MAX_JSON_DEPTH and json_depth(decoded, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ParseError(f"payload nests JSON deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(decoded, parse_int=_bounded_number, parse_float=_bounded_number,
                          parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise ParseError(f"payload is not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise ParseError(f"payload nests JSON deeper than {MAX_JSON_DEPTH} levels") from None


def _has_control(value: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value)


def _name(value, field: str, max_chars: int, source: str = "field") -> str | None:
    """A short identifying string (keyword, lang, author id): valid, printable, bounded, or ParseError."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ParseError(f"{source} {field!r} must be a string, got {json_type(value)}")
    value = value.strip()
    if len(value) > max_chars:
        raise ParseError(f"{source} {field!r} is longer than {max_chars} characters")
    if not is_valid_text(value):
        raise ParseError(f"{source} {field!r} holds an unpaired UTF-16 surrogate (not Unicode text)")
    if _has_control(value):
        raise ParseError(f"{source} {field!r} holds control or unassigned characters")
    return value or None


def _roll_up_safe(value: str | None, field: str) -> str | None:
    if value is not None and value == RESERVED:
        raise ParseError(f"{field} {RESERVED!r} is reserved for the roll-up rows (all {field}s)")
    return value


def parse_post(data: bytes, attributes: dict | None, publish_time: float | None,
               watermark: float | None = None, message_id: str | None = None) -> Post:
    """One message body -> Post, or raises ParseError with a precise reason.

    Whatever the bytes hold, this either returns a Post whose every string is valid
    Unicode within its length cap, or raises ParseError: nothing downstream (the model,
    the Parquet and BigQuery writers) can be handed a value it cannot take.

    A post without `lang` (neither in the body nor as an attribute) gets the language
    transforms/language.detect finds in its text ('und' when it cannot tell); a given
    `lang` is kept as sent (lower case).
    """
    return parse_post_detected(data, attributes, publish_time, watermark, message_id)[0]


def parse_post_detected(data: bytes, attributes: dict | None, publish_time: float | None,
                        watermark: float | None = None, message_id: str | None = None
                        ) -> tuple[Post, str | None]:
    """parse_post, and the language detected for it (None when the post named its own)."""
    attributes = attributes if isinstance(attributes, dict) else {}
    if not isinstance(data, (bytes, bytearray)):
        raise ParseError(f"payload must be bytes, got {type(data).__name__}")
    if len(data) > MAX_PAYLOAD_BYTES:
        raise ParseError(f"payload is {len(data)} bytes (at most {MAX_PAYLOAD_BYTES})")
    try:
        decoded = bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParseError(f"payload is not valid UTF-8 (byte {e.start}: {e.reason})") from None
    if not decoded.strip():
        raise ParseError("payload is empty")
    body = load_json(decoded)
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
    if not is_valid_text(post_id) or _has_control(post_id):
        raise ParseError("field 'id' holds control characters or unpaired UTF-16 surrogates")

    text = body.get("text")
    if text is None:
        raise ParseError("required field 'text' is missing")
    if not isinstance(text, str):
        raise ParseError(f"field 'text' must be a string, got {json_type(text)}")
    if not text.strip():
        raise ParseError("field 'text' is blank")
    if len(text) > MAX_TEXT_CHARS:
        raise ParseError(f"field 'text' is longer than {MAX_TEXT_CHARS} characters")
    text = repair_text(text)  # an emoji cut in half by a client: U+FFFD, as a decoder would do

    if body.get("created_at") is not None:
        created_at = parse_timestamp(body["created_at"])
    elif attributes.get("event_time"):
        created_at = parse_timestamp(attributes["event_time"])
    elif publish_time is not None:
        try:
            created_at = utc_from_epoch(publish_time)
        except (OverflowError, OSError, ValueError):
            raise ParseError(f"out of range: publish time {publish_time!r}", "window") from None
    else:
        raise ParseError("no event time: no created_at, no event_time attribute, no publish time")

    lang = _name(body.get("lang"), "lang", 35) or _name(attributes.get("lang"), "lang", 35, "attribute")
    detected = None
    if lang is None:
        detected = lang = detect_language(text)[0]  # an X_LANGUAGES code or DEFAULT_LANG
    lang = lang.lower()
    keyword = (_name(body.get("keyword"), "keyword", 200)
               or _name(attributes.get("keyword"), "keyword", 200, "attribute") or DEFAULT_KEYWORD).lower()
    return Post(
        post_id=post_id,
        text=text,
        created_at=created_at,
        lang=_roll_up_safe(lang, "language"),
        keyword=_roll_up_safe(keyword, "keyword"),
        author_id=_name(body.get("author_id"), "author_id", 64),
        watermark=watermark,
        raw=bytes(data),
        attributes=_safe_attributes(attributes),
        message_id=message_id,
    ), detected


def describe_error(error: BaseException) -> str:
    """An unexpected exception -> a one-line reason: its type and message, bounded."""
    message = " ".join(str(error).split())
    return safe_reason(f"{type(error).__name__}: {message}" if message else type(error).__name__)


class _ParseDoFn(beam.DoFn):
    def __init__(self):
        self.read = Metrics.counter(NAMESPACE, "read")
        self.parsed = Metrics.counter(NAMESPACE, "parsed")
        self.dead = Metrics.counter(NAMESPACE, "dead_letter_parse")
        self.dead_window = Metrics.counter(NAMESPACE, "dead_letter_window")
        self.detected = Metrics.counter(NAMESPACE, "lang_detected")  # posts that came without lang
        self._detected_as: dict = {}  # "lang_detected_<code>": at most len(X_LANGUAGES) + 1 names

    def process(self, message, timestamp=beam.DoFn.TimestampParam):
        self.read.inc()
        try:
            publish_time = message.publish_time
            if publish_time is None and timestamp is not None and -2**62 < timestamp.micros < 2**62:
                publish_time = float(timestamp)
            post, detected = parse_post_detected(message.data, message.attributes, publish_time,
                                                 message.watermark, getattr(message, "message_id", None))
        except ParseError as e:
            (self.dead_window if e.stage == "window" else self.dead).inc()
            yield beam.pvalue.TaggedOutput("dead_letters", dead_letter(
                e.stage, str(e), getattr(message, "data", message), getattr(message, "attributes", None),
                message_id=getattr(message, "message_id", None)))
            return
        except Exception as e:  # noqa: BLE001  (whatever a message holds, it ends somewhere)
            self.dead.inc()
            yield beam.pvalue.TaggedOutput("dead_letters", dead_letter(
                "parse", f"unparseable message: {describe_error(e)}", getattr(message, "data", message),
                getattr(message, "attributes", None), message_id=getattr(message, "message_id", None)))
            return
        self.parsed.inc()
        if detected is not None:
            self.detected.inc()
            counter = self._detected_as.get(detected)
            if counter is None:
                counter = self._detected_as[detected] = Metrics.counter(NAMESPACE, f"lang_detected_{detected}")
            counter.inc()
        yield post


def _safe_attributes(attributes) -> dict:
    if not isinstance(attributes, dict):
        return {}
    return {repair_text(str(k)): repair_text(str(v)) for k, v in attributes.items()}


class ParsePosts(beam.PTransform):
    """RawMessage -> {"posts": Post, "dead_letters": DeadLetter rows}.

    Event time is read here (created_at) and checked and assigned by WindowPosts, so a
    post whose time is out of range never becomes an element timestamp.
    """

    def expand(self, messages):
        results = messages | "ValidateAndStampEventTime" >> beam.ParDo(_ParseDoFn()).with_outputs(
            "dead_letters", main="posts")
        return {"posts": results.posts, "dead_letters": results.dead_letters}
