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

from models.contracts import UTC, RawMessage  # noqa: F401  (re-exported for transforms)



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


class CleanPost(NamedTuple):
    post: Post
    clean_text: str


def utc_from_epoch(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, tz=UTC)


def now_utc() -> dt.datetime:
    return dt.datetime.now(tz=UTC)


def dead_letter(stage: str, reason: str, payload: bytes | None, attributes: dict | None,
                received_at: dt.datetime | None = None) -> dict:
    """A DeadLetter row. `payload` is kept byte for byte; attributes become a JSON object."""
    return {
        "stage": stage,
        "reason": reason,
        "payload": payload,
        "attributes": json.dumps(attributes or {}, sort_keys=True, ensure_ascii=False),
        "received_at": received_at or now_utc(),
    }
