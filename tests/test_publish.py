"""Message building, pacing, synthetic posts, and the `pulse publish` / `pulse ingest` usage errors."""
import json

import pytest

from connectors.publisher import (Pacer, check_topic, line_message, post_attributes, post_message,
                                  synthetic_posts)
from connectors.rate_limit import FakeClock
from pipelines import ingest, publish

TOPIC = "projects/demo/topics/posts"


def test_post_message_carries_contract_attributes():
    post = {"id": "17", "text": "acme ist toll", "created_at": "2026-11-25T07:47:19.000Z", "lang": "de",
            "author_id": "4", "keyword": "acme"}
    message = post_message(post)
    assert json.loads(message.data) == post
    assert "ist toll" in message.data.decode("utf-8")
    assert message.attributes == {"post_id": "17", "event_time": "2026-11-25T07:47:19.000Z",
                                  "keyword": "acme", "lang": "de"}
    assert post_attributes({"id": "1", "text": "x", "lang": None}) == {"post_id": "1"}


def test_file_lines_are_published_verbatim_even_when_malformed():
    good = b'{"id": "1", "text": "hi", "created_at": "2026-11-25T07:00:00Z"}\n'
    assert line_message(good).data == good.rstrip(b"\n")
    assert line_message(good).attributes == {"post_id": "1", "event_time": "2026-11-25T07:00:00Z"}
    assert line_message(b"{broken\n") == (b"{broken", {})
    assert line_message(b"\xff\xfe\n") == (b"\xff\xfe", {})
    assert line_message(b"[1, 2]\n").attributes == {}


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
                                  ["--token", "s3cr3t-value"]])
def test_token_as_flag_is_refused_without_echoing_it(capsys, no_token, flag):
    err = _one_line_error(capsys, ingest.main(BASE + flag), "the bearer token is never a flag value")
    assert "s3cr3t-value" not in err


def test_token_file_is_read_and_empty_file_refused(tmp_path, capsys, no_token):
    token_file = tmp_path / "token"
    token_file.write_text("  \n")
    _one_line_error(capsys, ingest.main(BASE + ["--bearer_token_file", str(token_file)]),
                    "--bearer_token_file: the file is empty")
    token_file.write_text("abc123\n")
    assert ingest.read_token(str(token_file)) == "abc123"
