"""parse_post: the Post contract, and a precise reason for everything else."""
import datetime as dt
import json

import pytest

from transforms.parse import ParseError, parse_post, parse_timestamp

UTC = dt.timezone.utc


def body(**fields):
    base = {"id": "1", "text": "hello", "created_at": "2026-11-24T14:00:00Z"}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def test_valid_post_is_normalised():
    post = parse_post(body(lang="EN", keyword=" Acme-Air ", author_id="u1"), {}, None)
    assert post.post_id == "1" and post.text == "hello"
    assert post.created_at == dt.datetime(2026, 11, 24, 14, tzinfo=UTC)
    assert (post.lang, post.keyword, post.author_id) == ("en", "acme-air", "u1")
    assert post.raw == body(lang="EN", keyword=" Acme-Air ", author_id="u1")


def test_defaults_and_attribute_fallbacks():
    post = parse_post(body(created_at=..., keyword=...), {"keyword": "nimbus", "event_time": "2026-11-24T15:00:00+01:00"}, 5.0)
    assert post.keyword == "nimbus" and post.lang == "und"
    assert post.created_at == dt.datetime(2026, 11, 24, 14, tzinfo=UTC)
    assert parse_post(body(created_at=...), {}, 5.0).created_at == dt.datetime.fromtimestamp(5.0, tz=UTC)


@pytest.mark.parametrize("data,reason", [
    (b'{"id": "1", "text": "caf\xe9"}', "not valid UTF-8"),
    (b"", "payload is empty"),
    (b"{not json", "not JSON"),
    (b'["a"]', "JSON array, not an object"),
    (b"null", "JSON null, not an object"),
    (body(id=...), "'id' is missing"),
    (body(id=7), "'id' must be a string, got number"),
    (body(id=""), "'id' must be 1 to"),
    (body(text=...), "'text' is missing"),
    (body(text=["x"]), "'text' must be a string"),
    (body(text="  \n "), "'text' is blank"),
    (body(text="x" * 10_001), "longer than 10000"),
    (body(created_at="yesterday"), "not an RFC 3339 timestamp"),
    (body(created_at="2026-11-24T14:00:00"), "no time zone offset"),
    (body(lang=3), "'lang' must be a string"),
])
def test_invalid_messages_have_precise_reasons(data, reason):
    with pytest.raises(ParseError, match=reason.replace("(", r"\(")):
        parse_post(data, {}, 1.0)


def test_no_event_time_at_all_is_an_error():
    with pytest.raises(ParseError, match="no event time"):
        parse_post(body(created_at=...), {}, None)


def test_parse_timestamp_offsets_and_fractions():
    assert parse_timestamp("2026-11-24T14:00:00.123456-05:00") == dt.datetime(2026, 11, 24, 19, 0, 0, 123456, tzinfo=UTC)
