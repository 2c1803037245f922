"""Message building, pacing, synthetic posts, and the `pulse publish` / `pulse ingest` usage errors."""
import json

import pytest

from connectors.feeds.publisher import (Pacer, check_topic, line_message, post_attributes, post_message,
                                  synthetic_posts)
from connectors.feeds.rate_limit import FakeClock
from pipelines.cli import ingest, publish

TOPIC = "projects/demo/topics/posts"


def test_post_message_carries_contract_attributes():
    post = {"id": "17", "text": "acme ist toll", "created_at": "2026-11-25T07:47:19.000Z", "lang": "de",
            "author_id": "4", "keyword": "Acme Air "}
    message = post_message(post)
    assert json.loads(message.data) == post
    assert "ist toll" in message.data.decode("utf-8")
    assert message.attributes == {"post_id": "17", "event_time": "2026-11-25T07:47:19.000Z",
                                  "keyword": "Acme Air ", "lang": "de",
                                  "post_key": "17|acme air"}  # as the job normalises the keyword
    assert post_attributes({"id": "1", "text": "x", "lang": None}) == {"post_id": "1"}


def test_attributes_are_left_out_where_they_cannot_be_read_safely():
    ok = {"id": "5", "created_at": "2026-11-25T07:00:00+01:00", "keyword": "acme", "lang": "en"}
    assert post_attributes(ok) == {"post_id": "5", "event_time": "2026-11-25T07:00:00+01:00",
                                   "keyword": "acme", "lang": "en", "post_key": "5|acme"}
    # A timestamp attribute Dataflow could not parse would stop its reader.
    for bad_time in ("yesterday", "2026-13-01T00:00:00Z", "2026-11-25 07:00:00Z", "2026-11-25T07:00:00"):
        assert "event_time" not in post_attributes({**ok, "created_at": bad_time})
    # Over Pub/Sub's 1024-byte value limit: left out, never cut (a cut id would merge posts).
    long_id = post_attributes({**ok, "id": "9" * 1025})
    assert "post_id" not in long_id and "post_key" not in long_id
    at_limit = post_attributes({**ok, "keyword": "é" * 512})  # 1024 bytes; the key "5|..." 1026
    assert at_limit["keyword"] == "é" * 512 and "post_key" not in at_limit
    assert post_attributes({**ok, "keyword": "é" * 511})["post_key"] == "5|" + "é" * 511  # 1024 bytes
    assert "keyword" not in post_attributes({**ok, "keyword": "é" * 513})
    # A lone surrogate (JSON "\ud83d") is not UTF-8: no attribute, and no exception.
    assert post_attributes({**ok, "keyword": "\ud83d"}) == {"post_id": "5", "event_time": ok["created_at"],
                                                             "lang": "en"}
    # post_key needs both halves, and an id without "|" (else "a|b" + "c" = "a" + "b|c").
    assert "post_key" not in post_attributes({**ok, "id": "1|2"})
    assert "post_key" not in post_attributes({**ok, "keyword": "  "})
    assert "post_key" not in post_attributes({**ok, "id": 5})
    assert post_attributes({**ok, "id": " 5 ", "keyword": "ACME|Globex"})["post_key"] == "5|acme|globex"


def test_file_lines_are_published_verbatim_even_when_malformed():
    good = b'{"id": "1", "text": "hi", "created_at": "2026-11-25T07:00:00Z"}\n'
    assert line_message(good).data == good.rstrip(b"\n")
    assert line_message(good).attributes == {"post_id": "1", "event_time": "2026-11-25T07:00:00Z"}
    assert line_message(b"{broken\n") == (b"{broken", {})
    assert line_message(b"\xff\xfe\n") == (b"\xff\xfe", {})
    assert line_message(b"[1, 2]\n").attributes == {}
    # One terminator is removed ("\n" or "\r\n"); every other byte is the message's.
    assert line_message(b"{}\r\n").data == b"{}"
    assert line_message(b"{}\r\r\n").data == b"{}\r"
    assert line_message(b" \t ").data == b" \t "
    assert line_message(b"{}\n\n").data == b"{}\n"


def test_synthetic_posts_are_deterministic_valid_and_stamped_now():
    clock = FakeClock(1_800_000_000.0)
    posts = list(synthetic_posts(50, seed=3, clock=clock))
    assert posts == list(synthetic_posts(50, seed=3, clock=FakeClock(1_800_000_000.0)))
    assert len({p["id"] for p in posts}) == 50
    assert [int(p["id"]) for p in posts] == sorted(int(p["id"]) for p in posts)
    assert {p["keyword"] for p in posts} == {"acme", "globex", "initech"}
    assert all(p["created_at"] == "2027-01-15T08:00:00.000Z" and p["text"] for p in posts)


def test_pacer_spaces_messages_at_the_rate_without_drift():
    clock = FakeClock(0.0)
    pacer = Pacer(4.0, clock)
    for _ in range(9):
        pacer.wait()
    assert clock.now() == pytest.approx(2.0)  # 9 messages at 4/s: the 9th goes at t = 2 s
    unpaced = FakeClock(0.0)
    for _ in range(9):
        Pacer(None, unpaced).wait()
    assert unpaced.sleeps == []


def test_topic_paths_are_checked():
    assert check_topic(TOPIC) == TOPIC
    for bad in ("posts", "projects/demo/subscriptions/posts", "projects//topics/x"):
        with pytest.raises(ValueError, match="not a topic path"):
            check_topic(bad)


def _one_line_error(capsys, code, expected):
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert expected in err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("argv, expected", [
    (["--topic", TOPIC], "one of the arguments --file --synthetic is required"),
    (["--topic", "posts", "--synthetic", "3"], "--topic: 'posts' is not a topic path"),
    (["--topic", TOPIC, "--file", "/nonexistent/posts.jsonl"], "--file /nonexistent/posts.jsonl: no such file"),
    (["--topic", TOPIC, "--synthetic", "3", "--rate", "0"], "--rate must be a positive"),
    (["--topic", TOPIC, "--synthetic", "many"], "invalid int value: 'many'"),
    (["--topic", TOPIC, "--synthetic", "3", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_publish_usage_errors_are_one_line_exit_2(capsys, argv, expected):
    _one_line_error(capsys, publish.main(argv), expected)


@pytest.fixture
def no_token(monkeypatch):
    monkeypatch.delenv("X_BEARER_TOKEN", raising=False)


BASE = ["--keywords", "acme", "--topic", TOPIC, "--checkpoint", "/tmp/ck.json"]


@pytest.mark.parametrize("argv, expected", [
    (BASE, "no X API bearer token: set X_BEARER_TOKEN or pass --bearer_token_file"),
    (BASE + ["--bearer_token_file", "/nonexistent/token"], "--bearer_token_file: no such file"),
    (["--keywords", "acme", "--topic", TOPIC], "the following arguments are required: --checkpoint"),
    (BASE + ["--max_results", "500"], "--max_results must be between 10 and 100"),
    (BASE + ["--settle_s", "3"], "--settle_s must be 0 or at least 10"),
])
def test_ingest_usage_errors_are_one_line_exit_2(capsys, no_token, argv, expected):
    _one_line_error(capsys, ingest.main(argv), expected)


@pytest.mark.parametrize("flag", [["--bearer_token", "s3cr3t-value"], ["--bearer_token=s3cr3t-value"],
                                  ["--token", "s3cr3t-value"], ["--bearer", "s3cr3t-value"],
                                  ["--X-Bearer=s3cr3t-value"], ["--auth", "s3cr3t-value"]])
def test_token_as_flag_is_refused_without_echoing_it(capsys, no_token, flag):
    err = _one_line_error(capsys, ingest.main(BASE + flag), "the bearer token is never a flag value")
    assert "s3cr3t-value" not in err


def test_token_file_is_read_and_empty_file_refused(tmp_path, capsys, no_token):
    token_file = tmp_path / "token"
    token_file.write_text("  \n")
    _one_line_error(capsys, ingest.main(BASE + ["--bearer_token_file", str(token_file)]),
                    "--bearer_token_file: the file is empty")
    token_file.write_text("abc123-abc123-abc123\n")
    token_file.chmod(0o600)
    assert ingest.read_token(str(token_file)) == "abc123-abc123-abc123"
    assert capsys.readouterr().err == ""  # no warning: only the owner can read it
