"""Social-text normalisation: what a model sees of a post.

This is part of the model contract, not only a pipeline step: the bundled model is
trained on `normalize(text)` and the pipeline's Clean step serves it the same
function, so training and serving cannot drift apart. Pure, deterministic, no I/O.

    >>> normalize("Sooooo happy!!! 😍 @acme #BestDayEver https://t.co/x &amp; more")
    'Soo happy!!! smiling face with heart-eyes @user Best Day Ever url & more'

Libraries do the hard parts: `ftfy` repairs mojibake and HTML entities, `emoji`
names every emoji in the Unicode emoji list (kept as words, since emoji carry
much of a post's sentiment), `unicodedata` applies NFKC (full-width letters,
ligatures, mathematical alphanumerics used to dodge filters).
"""
from __future__ import annotations

import html
import re
import unicodedata

import emoji
import ftfy

URL_TOKEN = "url"
USER_TOKEN = "@user"

_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_MENTION = re.compile(r"(?<![\w@])@\w{1,30}")
_HASHTAG = re.compile(r"(?<![\w#])#(\w+)")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])|(?<=[A-Za-z])(?=\d)")
_REPEAT = re.compile(r"(\w)\1{2,}")
_SPACE = re.compile(r"\s+")


def _emoji_words(chars: str, data: dict) -> str:
    name = data.get("en", "").strip(":").replace("_", " ")
    return f" {name} " if name else " "


def _hashtag_words(match: re.Match) -> str:
    tag = match.group(1)
    return " ".join(_CAMEL.split(tag)) if not tag.islower() and not tag.isupper() else tag


def _is_control(ch: str) -> bool:
    # Cc: C0/C1 controls; Cf: zero-width joiners, bidi overrides, soft hyphens.
    return unicodedata.category(ch) in ("Cc", "Cf")


def normalize(text: str) -> str:
    """Raw post text -> the text a model scores (never empty for non-blank input)."""
    # Control characters become spaces below rather than vanishing (ftfy would join the words).
    text = ftfy.fix_text(text, unescape_html=False, remove_control_chars=False)
    text = html.unescape(text)
    text = unicodedata.normalize("NFKC", text)
    # Emoji before control characters: ZWJ sequences (family, flags) are one emoji.
    text = emoji.replace_emoji(text, replace=_emoji_words)
    text = "".join(" " if _is_control(ch) else ch for ch in text)
    text = _URL.sub(f" {URL_TOKEN} ", text)
    text = _MENTION.sub(USER_TOKEN, text)
    text = _HASHTAG.sub(_hashtag_words, text)
    text = _REPEAT.sub(r"\1\1", text)
    return _SPACE.sub(" ", text).strip()
