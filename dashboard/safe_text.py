"""Untrusted text (a post, a keyword, an id, a reviewer's name) made safe for the places in
Streamlit that render Markdown: titles, expander labels, metric labels, captions, notices.

Everywhere else the dashboard shows such text with text elements (st.text, st.code,
dataframes), which render nothing. `md(value)` is for the few places a label must carry it:
every ASCII punctuation character is backslash-escaped (CommonMark shows an escaped
character as itself), so `#`, `![..](..)`, `[..](..)`, `$..$` (LaTeX), backticks, `<`,
`&amp;` and `:red[..]` stay the characters they are; a bare address (http://, www., an
e-mail address) gets an invisible word joiner so that it is not made a link; line breaks and
other control characters become spaces, so a label stays one line.

    python -c "from dashboard.safe_text import md; print(md('# URGENT ![x](http://e.x/a.png) \$x\$'))"
"""
from __future__ import annotations

import html
import re
import unicodedata

_PUNCTUATION = re.compile(r"""([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~])""")
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")


def one_line(value) -> str:
    """`value` as text on one line: control characters and bidi overrides become spaces."""
    text = "" if value is None else str(value)
    text = "".join(" " if unicodedata.category(ch) in ("Cc", "Cs") else ch for ch in text)
    return _BIDI.sub(" ", text)


# GitHub-flavoured Markdown turns a bare address into a link even when its punctuation is
# escaped (autolink literals: http://, www., name@host): an invisible word joiner breaks them.
_AUTOLINK = re.compile(r"(?i)(?<=:)(?=//)|(?<=www)(?=\.)|(?<=@)")
WORD_JOINER = "\u2060"


def md(value) -> str:
    """`value` (untrusted) escaped for a Markdown-rendering label: shown as the characters it holds
    (plus invisible word joiners that keep an address from becoming a link)."""
    return _PUNCTUATION.sub(r"\\\1", _AUTOLINK.sub(WORD_JOINER, one_line(value)))


def decoded(value) -> str:
    """A post's text as people wrote it: the HTML entities the X API sends (`AT&amp;T`) decoded.
    For text elements and dataframes only (they render nothing), never for Markdown."""
    return "" if value is None else html.unescape(str(value))
