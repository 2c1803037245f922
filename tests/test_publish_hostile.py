"""`pulse publish --file` with hostile lines: every line's bytes reach Pub/Sub exactly, and the
attributes are set only where they can be read safely (the Pub/Sub emulator, pulled back).
A property test of `line_attributes` over arbitrary bytes: it never raises, and every attribute
it returns is one Pub/Sub accepts and the job reads the same way."""
import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.feeds.publisher import (ATTRIBUTES, MAX_ATTRIBUTE_KEY_BYTES, MAX_ATTRIBUTE_VALUE_BYTES, RFC3339_RE,
                                  count_lines, line_attributes, line_message, read_jsonl)
from pipelines.cli import publish

T = "2026-11-25T07:00:00Z"
DEEP = b"[" * 10_000 + b"]" * 10_000
BIG_INT = b"9" * 5_000

# (line as written in the file, without its "\n"; the attributes expected on its message)
HOSTILE = [
    (b'{"id": "1", "text": "ok", "created_at": "' + T.encode() + b'", "keyword": "acme", "lang": "en"}',
     {"post_id": "1", "event_time": T, "keyword": "acme", "lang": "en", "post_key": "1|acme"}),
    (b'{"id": "2", "text": "\xff\xfe not utf-8", "keyword": "acme"}', {}),
    # A lone surrogate escaped in JSON: the keyword cannot be an attribute (not UTF-8), the rest can.
    (b'{"id": "3", "text": "\\ud83d", "keyword": "\\ud83d", "lang": "en", "created_at": "' + T.encode() + b'"}',
     {"post_id": "3", "event_time": T, "lang": "en"}),
    (DEEP, {}),
    (b'{"id": "5", "keyword": "acme", "deep": ' + DEEP + b"}", {}),
    (b'{"id": "6", "text": "big", "keyword": "acme", "n": ' + BIG_INT + b"}", {}),
    (b'{"id": "7", "keyword": "acme", "n": ' + BIG_INT + b".5e3}", {"post_id": "7", "keyword": "acme",
                                                                 "post_key": "7|acme"}),  # a float is fine
    (b"   ", {}),  # spaces are data: sent, the job dead-letters them
    (b'{"id": "9", "text": "crlf", "keyword": " ACME Air "}',  # written with "\r\n" (CRLF)
     {"post_id": "9", "keyword": " ACME Air ", "post_key": "9|acme air"}),
    (b'{"id": "10", "text": "x", "keyword": "acme"}\r',  # written with "\r\r\n": one "\r" is data
     {"post_id": "10", "keyword": "acme", "post_key": "10|acme"}),
    (b'{"id": "' + b"1" * 1025 + b'", "keyword": "acme", "lang": "' + b"x" * 1024 + b'"}',
     {"keyword": "acme", "lang": "x" * 1024}),  # over 1024 bytes: left out, never cut
    (b'{"id": "12", "created_at": "not a time", "keyword": "Caf\\u00e9"}',
     {"post_id": "12", "keyword": "Caf\u00e9", "post_key": "12|caf\u00e9"}),
    (b'{"id": "13|x", "keyword": "acme", "created_at": "2026-02-30T00:00:00Z"}',
     {"post_id": "13|x", "keyword": "acme"}),  # "|" in the id: no post_key; no Feb 30th
    (b'\xef\xbb\xbf{"id": "14", "keyword": "acme"}', {}),  # a BOM: the job refuses it too
    (b'[{"id": "15"}]', {}),
    (b'"just a string"', {}),
    (b"null", {}),
    (b'{"id": 16, "keyword": ["acme"], "lang": null, "created_at": 1764054000}', {}),
    # A NUL inside a value is fine; a blank lang is no attribute (the job would take it over "und").
    (b'{"id": "17", "keyword": "a\\u0000b", "lang": "\\t "}', {"post_id": "17", "keyword": "a\x00b",
                                                            "post_key": "17|a\x00b"}),
    (b'{"id": "18", "id": "18b", "keyword": "acme"}', {"post_id": "18b", "keyword": "acme",
                                                       "post_key": "18b|acme"}),  # the last wins, as for the job
    (b"{not json", {}),
    (b"\x00\x01\x02\xff", {}),
]


def _file(tmp_path, lines_with_terminators: bytes):
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(lines_with_terminators)
    return path


def _terminated(data: bytes) -> bytes:
    """The line as the file holds it: "\r\n" after the CRLF line and after the one ending in "\r"."""
    return data + (b"\r\n" if b'"crlf"' in data or data.endswith(b"\r") else b"\n")


def _hostile_file(tmp_path):
    """The HOSTILE lines, "\n"-terminated (two with "\r\n"), a duplicate, and empty lines."""
    content = b"\n"  # an empty first line
    for data, _ in HOSTILE:
        content += _terminated(data)
    content += HOSTILE[0][0] + b"\n\n\n"  # a duplicate line, then two empty lines
    content += b'{"id": "last", "keyword": "acme"}'  # no final newline
    expected = [(d, a) for d, a in HOSTILE] + [HOSTILE[0], (b'{"id": "last", "keyword": "acme"}',
                                                             {"post_id": "last", "keyword": "acme",
                                                              "post_key": "last|acme"})]
    return _file(tmp_path, content), expected


def test_each_hostile_line_gets_exactly_the_expected_attributes():
    for data, expected in HOSTILE:
        assert line_message(_terminated(data)) == (data, expected), data[:80]
        assert line_message(data) == (data, expected), data[:80]  # the last line may have no terminator


def test_reading_the_file_keeps_bytes_and_skips_only_empty_lines(tmp_path):
    path, expected = _hostile_file(tmp_path)
    messages = list(read_jsonl(str(path)))
    assert [(m.data, m.attributes) for m in messages] == expected
    assert count_lines(str(path)) == len(expected)


@pytest.mark.integration
def test_hostile_file_is_published_line_for_line(pubsub_env, tmp_path, capsys):
    path, expected = _hostile_file(tmp_path)
    topic = pubsub_env.topic("hostile")
    subscription = pubsub_env.subscription(topic)
    assert publish.main(["--topic", topic, "--file", str(path), "--no_progress"]) == 0
    out = capsys.readouterr().out
    without = sum(1 for _, a in expected if not a)
    assert f"published {len(expected)} messages to {topic}" in out
    assert f"; {without} without Post attributes" in out and "; 3 empty lines skipped" in out

    pulled = pubsub_env.pull_all(subscription)
    key = lambda pair: (pair[0], sorted(pair[1].items()))  # noqa: E731
    assert sorted(((m.data, m.attributes) for m in pulled), key=key) == sorted(expected, key=key)


@pytest.mark.integration
def test_line_over_the_pubsub_limit_is_named_and_the_rest_still_sent(pubsub_env, tmp_path, capsys):
    topic = pubsub_env.topic("too-big")
    subscription = pubsub_env.subscription(topic)
    big = b'{"id": "big", "text": "' + b"x" * 10_000_000 + b'"}'
    path = _file(tmp_path, b'{"id": "a"}\n\n' + big + b'\n{"id": "b"}\n')
    assert publish.main(["--topic", topic, "--file", str(path), "--no_progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"pulse publish: error: 1 line(s) of {path} were not published "
                                               "(line 3); line 3: a message of 10,000,025 bytes is over Pub/Sub's limit "
                                               "(10,000,000 bytes a publish request)"), err
    assert sorted(m.data for m in pubsub_env.pull_all(subscription)) == [b'{"id": "a"}', b'{"id": "b"}']


# --- the property ------------------------------------------------------------------------------

def _check_attributes(data: bytes) -> dict:
    attributes = line_attributes(data)
    assert isinstance(attributes, dict) and set(attributes) <= set(ATTRIBUTES)
    for key, value in attributes.items():
        assert len(key.encode("utf-8")) <= MAX_ATTRIBUTE_KEY_BYTES
        assert isinstance(value, str) and value
        assert len(value.encode("utf-8")) <= MAX_ATTRIBUTE_VALUE_BYTES  # strict UTF-8: no surrogate
    if "event_time" in attributes:
        assert RFC3339_RE.fullmatch(attributes["event_time"])
    if "post_key" in attributes:
        post_id, keyword = attributes["post_id"], attributes["keyword"]
        assert attributes["post_key"] == f"{post_id.strip()}|{keyword.strip().lower()}"
        assert "|" not in post_id.strip()
    if attributes:  # only ever from a JSON object read as the job reads it, and agreeing with it
        body = json.loads(data.decode("utf-8"))
        assert isinstance(body, dict)
        for name, field in (("post_id", "id"), ("event_time", "created_at"), ("keyword", "keyword"),
                            ("lang", "lang")):
            if name in attributes:
                assert body[field] == attributes[name]
    return attributes


_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)  # surrogates too
_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), _text,
                     st.just("2026-11-25T07:47:19.123Z"), st.just(" Acme|Air "))
_json = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_text, inner, max_size=4)), max_leaves=12)
_posts = st.fixed_dictionaries({}, optional={
    "id": st.one_of(_text, st.integers(), st.just("1|2"), st.just("x" * 1100)),
    "text": _json, "created_at": st.one_of(_text, st.just(T), st.just("2026-13-45T99:00:00Z")),
    "keyword": st.one_of(_text, st.just("é" * 520), st.just("  ACME  ")), "lang": _json})


def _encode(value, ensure_ascii: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


_lines = st.one_of(
    st.binary(max_size=300),
    st.builds(_encode, st.one_of(_posts, _json), st.booleans()),
    # a valid post with hostile bytes spliced in, or with a deep or long number inside
    st.builds(lambda post, at, junk: (lambda b: b[:at % (len(b) + 1)] + junk + b[at % (len(b) + 1):])(
        _encode(post, False)), _posts, st.integers(0, 10_000), st.binary(min_size=1, max_size=8)),
    st.builds(lambda post, depth: _encode(post, True)[:-1] + b', "x": ' + b"[" * depth + b"]" * depth + b"}",
              _posts.filter(bool), st.integers(900, 20_000)),
    st.builds(lambda post, digits: _encode(post, True)[:-1] + b', "n": -' + b"7" * digits + b"}",
              _posts.filter(bool), st.integers(4_000, 6_000)),
    st.text(string.printable, max_size=200).map(str.encode),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_lines)
def test_line_attributes_never_raise_and_are_always_valid(data):
    _check_attributes(data)
    # The message is the line's bytes, whatever they hold, less the one terminator ("\n" or "\r\n").
    assert line_message(data + b"\n").data == (data[:-1] if data.endswith(b"\r") else data)


@settings(max_examples=200, deadline=None)
@given(_posts)
def test_a_readable_post_gets_the_attributes_the_job_would_read(post):
    attributes = _check_attributes(_encode(post, True))
    if isinstance(post.get("id"), str) and isinstance(post.get("keyword"), str):
        post_id, keyword = post["id"].strip(), post["keyword"].strip().lower()
        fits = len(f"{post_id}|{keyword}".encode("utf-8", "surrogatepass")) <= MAX_ATTRIBUTE_VALUE_BYTES
        readable = not any("\ud800" <= c <= "\udfff" for c in post_id + keyword)
        if post_id and keyword and "|" not in post_id and fits and readable:
            assert attributes["post_key"] == f"{post_id}|{keyword}"
