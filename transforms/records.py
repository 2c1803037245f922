"""The element types that flow between pipeline steps, and the dead-letter row builder.

    RawMessage  what a source yields: the bytes exactly as received, the attributes,
                the publish time and (replay only) the source's watermark at emission.
    Post        a validated post (the Post contract), with its event time.
    dead_letter the DeadLetter table row for anything that could not become a ScoredPost.

Rows for the tables are plain dicts shaped like `models.contracts.TABLES`, with
timestamps as timezone-aware UTC datetimes.
"""
from __future__ import annotations

import datetime as dt
import json
from typing import NamedTuple

from models.contracts import UTC, RawMessage, repair_text  # noqa: F401  (re-exported for transforms)

MAX_REASON_CHARS = 1000



class Post(NamedTuple):
    post_id: str
    text: str
    created_at: dt.datetime  # event time, UTC
    lang: str
    keyword: str
    author_id: str | None
    watermark: float | None = None  # the source's watermark when the post arrived (epoch seconds)
    raw: bytes = b""  # the message as received, so a later dead letter is lossless too
    attributes: dict | None = None
    beyond_lateness: bool = False  # arrived after its window closed: scored and stored, in no pane
    message_id: str | None = None  # the message it came in (RawMessage.message_id)


class CleanPost(NamedTuple):
    post: Post
    clean_text: str


def utc_from_epoch(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, tz=UTC)


def now_utc() -> dt.datetime:
    return dt.datetime.now(tz=UTC)


def safe_reason(reason) -> str:
    """A reason any sink can store: one line, valid Unicode, at most MAX_REASON_CHARS characters."""
    text = " ".join(repair_text(str(reason)).split())
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS - 1] + "…"


def dead_letter(stage: str, reason: str, payload: bytes | None, attributes: dict | None,
                received_at: dt.datetime | None = None, message_id: str | None = None) -> dict:
    """A DeadLetter row. `payload` is kept byte for byte (anything but bytes is stored as its
    repr); attributes become a JSON object.

    The reason and attributes are made storable here (valid Unicode, bounded), so a dead
    letter can always be written whatever the message held.
    """
    attrs = ({repair_text(str(k)): repair_text(str(v)) for k, v in attributes.items()}
             if isinstance(attributes, dict) else {})
    if payload is not None and not isinstance(payload, bytes):
        payload = bytes(payload) if isinstance(payload, bytearray) else repr(payload).encode("utf-8", "backslashreplace")
    return {
        "stage": stage,
        "reason": safe_reason(reason),
        "payload": payload,
        "attributes": json.dumps(attrs, sort_keys=True, ensure_ascii=False),
        "received_at": received_at or now_utc(),
        "message_id": None if message_id is None else repair_text(str(message_id))[:256],
    }
