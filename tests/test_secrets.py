"""The X API bearer token never reaches an output, in any spelling, on any path.

The CLI runs as a user runs it (`python -m pipelines.cli ...`, a separate process with its
real stderr and logging set-up, `-v` for DEBUG from tweepy, urllib3 and requests) against the
local X API server and the Pub/Sub emulator; the token holds characters that every escaping
spells differently. What the tests look for is built here, independently of the redactor.
"""
import base64
import json
import logging
import os
import subprocess
import sys
from urllib.parse import quote, quote_plus

import pytest

from connectors.feeds import x_api
from pipelines.cli import ingest
from tests.fixtures.x_api_server import FakeXApi

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Printable ASCII (what a bearer token may hold) with a quote of each kind, a backslash, percent
# escapes and characters that JSON, HTML-safe JSON and URL encoding each treat differently, every
# few characters: no escaped spelling keeps a run of the token long enough to be caught as a
# fragment, so each spelling must be masked as such.
HOSTILE = "Tk'1\"2\\3%2F'4<5\\&6>'7+8\\/9='0?\\a#b'~c!\\d'e\"f\\g%3D'h<i\\&j>'k+l\\/m='n?\\o#'p"


def spellings(secret: str) -> dict[str, str]:
    """How `secret` may be written by the code paths an output goes through."""
    data = secret.encode("utf-8", "surrogatepass")
    forms = {
        "raw": secret,
        "repr": repr(secret)[1:-1],
        "repr in a dict repr": repr({"Authorization": f"Bearer {secret}"}),
        "repr of repr": repr(repr(secret)[1:-1])[1:-1],
        "bytes repr": repr(data)[2:-1],
        "json": json.dumps(secret)[1:-1],
        "json, not ascii": json.dumps(secret, ensure_ascii=False)[1:-1],
        "json in bytes repr": repr(json.dumps(secret)[1:-1].encode())[2:-1],
        "json of json": json.dumps(json.dumps(secret)[1:-1])[1:-1],
        "json in a repr": repr(json.dumps(secret)[1:-1])[1:-1],
        "repr in json": json.dumps(repr(secret)[1:-1])[1:-1],
        "url": quote(secret, safe=""),
        "url, form": quote_plus(secret, safe=""),
        "url, lower-case hex": quote(secret, safe="").replace("%2F", "%2f").replace("%3D", "%3d"),
        "base64": base64.b64encode(data).decode(),
        "base64, url-safe": base64.urlsafe_b64encode(data).decode().rstrip("="),
    }
    return {name: form for name, form in forms.items() if form}


def assert_nowhere(secret: str, text: str) -> None:
    found = [name for name, form in spellings(secret).items() if form in text]
    assert not found, f"the token appears ({', '.join(found)})"
    # A truncated echo (a page that shows the first characters of the header).
    assert not any(secret[i:i + 16] in text for i in range(len(secret) - 15)), "a fragment of the token appears"


def pulse(*args: str, env: dict | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "X_BEARER_TOKEN"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def hostile_api():
    server = FakeXApi(token=HOSTILE).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "x-token"
    path.write_text(HOSTILE + "\n")
    path.chmod(0o600)
    return path


# --- the redactor on its own ---------------------------------------------------------------------

@pytest.mark.parametrize("secret", [
    HOSTILE,
    "tökén-ünïcödé-\u2028-\U0001F600-'\"\\-0123456789",  # non-ASCII, a line separator, an emoji
    "with spaces\tand a tab and a\nnewline-0123456789",
])
def test_log_filter_masks_every_spelling_at_every_level(secret):
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    handler = Keep()
    logger = logging.getLogger("tests.secrets.elsewhere")  # a logger no one configured
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    try:
        x_api.protect_secret(secret)
        for name, form in spellings(secret).items():
            logger.debug("form %s: %s", name, form)
            logger.warning(f"form {name} as an f-string: {form}")
        logger.info("headers %s", {"Authorization": f"Bearer {secret}"})
        logger.info("body %r", json.dumps({"detail": f"Bearer {secret}"}).encode())
        try:
            raise ValueError(f"Invalid header value {('Bearer ' + secret).encode()!r}")
        except ValueError:
            logger.exception("request failed")
        logger.error("%s", secret[:30] + "... (truncated)")
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    text = "\n".join(records)
    assert "Traceback" in text and "request failed" in text and "***" in text
    assert_nowhere(secret, text)


@pytest.mark.parametrize("secret", [
    HOSTILE,
    "tökén-ünïcödé-\u2028-\U0001F600-'\"\\-0123456789",
    "AAAAAAAAAAAAAAAAAAAAAMLheAAAAAAAA0npXYZ%2Fabc%3Ddef",  # the shape of a real X bearer token
])
def test_each_spelling_is_masked_whole_without_the_fragment_rule(monkeypatch, secret):
    monkeypatch.setattr(x_api, "FRAGMENT_CHARS", 10_000)  # only the spellings themselves
    redactor = x_api.Redactor()
    redactor.add(secret)
    for name, form in spellings(secret).items():
        if name != "repr in a dict repr":
            assert redactor.redact(f"<{form}>") == "<***>", name
    assert redactor.redact(repr({"Authorization": f"Bearer {secret}"})) == "{'Authorization': 'Bearer ***'}"
    assert redactor.redact("nothing secret here") == "nothing secret here"


def test_truncated_echo_is_masked_by_the_fragment_rule():
    redactor = x_api.Redactor()
    redactor.add(HOSTILE)
    assert redactor.redact(f"Authorization: Bearer {HOSTILE[:20]}...") == "Authorization: Bearer ***..."
    assert redactor.redact(f"tail {HOSTILE[-17:]}") == "tail ***"
    assert redactor.redact(HOSTILE[:15]) == HOSTILE[:15]  # shorter than FRAGMENT_CHARS: left


def test_api_detail_is_masked_one_line_and_bounded():
    x_api.protect_secret(HOSTILE)
    detail = x_api.api_detail(f"line one\nAuthorization: Bearer {HOSTILE}\n" + "x" * 1000)
    assert "\n" not in detail and len(detail) <= 300 and "Bearer ***" in detail
    assert_nowhere(HOSTILE, detail)


# --- reading the token ---------------------------------------------------------------------------

BASE = ["--keywords", "acme", "--topic", "projects/p/topics/t", "--checkpoint", "/tmp/ck.json"]


@pytest.mark.parametrize("content, expected", [
    (f"{HOSTILE}\nsecond-line-of-the-file\n", "holds 2 lines; a bearer token is one line"),
    (f"{HOSTILE[:30]} {HOSTILE[30:]}\n", "has whitespace inside the token"),
    (f"Bearer {HOSTILE}\n", 'starts with "Bearer": give the token alone'),
    (f"{HOSTILE}é\n", "holds characters a bearer token cannot"),
    (f"{HOSTILE[:30]}\u00a0{HOSTILE[30:]}\n", "has whitespace inside the token"),
    ("...\n", "holds 3 characters: too short for an X API bearer token"),
])
def test_malformed_token_file_is_one_line_without_the_token(tmp_path, monkeypatch, capsys, content, expected):
    monkeypatch.delenv("X_BEARER_TOKEN", raising=False)
    path = tmp_path / "token"
    path.write_text(content, encoding="utf-8")
    path.chmod(0o600)
    assert ingest.main(BASE + ["--bearer_token_file", str(path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], captured.err
    for part in content.split():
        if len(part) >= 16:
            assert_nowhere(part, captured.out + captured.err)


def test_two_line_token_in_the_environment_is_refused_without_showing_it(monkeypatch, capsys):
    monkeypatch.setenv("X_BEARER_TOKEN", f"{HOSTILE}\r\n{HOSTILE[::-1]}")
    assert ingest.main(BASE) == 2
    err = capsys.readouterr().err
    assert err.strip() == "pulse ingest: error: X_BEARER_TOKEN holds 2 lines; a bearer token is one line " \
                          "(the token is not shown)"


def test_trailing_newline_crlf_and_bom_are_not_part_of_the_token(tmp_path, capsys):
    path = tmp_path / "token"
    path.write_bytes(b"\xef\xbb\xbf  " + HOSTILE.encode() + b"\r\n\r\n")
    path.chmod(0o400)
    assert ingest.read_token(str(path)) == HOSTILE
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_token_file_others_can_read_gets_a_one_line_warning(tmp_path, capsys, mode):
    path = tmp_path / "token"
    path.write_text(HOSTILE + "\n")
    path.chmod(mode)
    assert ingest.read_token(str(path)) == HOSTILE
    err = capsys.readouterr().err
    assert err.splitlines() == [f"pulse ingest: warning: {path} is accessible by other users "
                                f"(mode {mode:04o}); run chmod 600 on it"]


# --- argument-parser errors ----------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["ingest", *BASE, "--bearer", HOSTILE],
    ["ingest", *BASE, f"--bearer={HOSTILE}"],
    ["ingest", *BASE, "--beare", HOSTILE],  # a typo of a typo: not recognisably about the token
    ["ingest", *BASE, HOSTILE],
    ["ingest", *BASE, "--max_results", HOSTILE],
    ["ingest", *BASE, "--api_url", HOSTILE],
    ["ingest", *BASE, "--bearer_token_file", HOSTILE],
    ["publish", "--topic", "projects/p/topics/t", "--synthetic", "3", "--bearer", HOSTILE],
    ["publish", "--topic", "projects/p/topics/t", "--synthetic", "3", f"--bearer={HOSTILE}"],
    [HOSTILE, "ingest"],
    ["ingest", "--bearer", HOSTILE],  # before the required flags are checked
])
def test_mistyped_flag_value_is_never_echoed(argv):
    proc = pulse(*argv)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert_nowhere(HOSTILE, proc.stdout + proc.stderr)


def test_mistyped_flag_message_still_helps(capsys):
    assert ingest.main(BASE + ["--bearer", "not-shown-0123456789"]) == 2
    assert "the bearer token is never a flag value; set X_BEARER_TOKEN or pass --bearer_token_file" \
        in capsys.readouterr().err
    proc = pulse("publish", "--topic", "projects/p/topics/t", "--synthetic", "3", "--rte", "not-shown-0123456789")
    assert proc.stderr.strip() == ("pulse publish: error: unrecognized arguments: --rte (and 1 argument not "
                                   "shown); did you mean --rate?")


# --- the CLI end to end, -v -----------------------------------------------------------------------

def _ingest(server, topic, tmp_path, token_file, *extra):
    return pulse("ingest", "-v", "--keywords", "acme,globex", "--topic", topic, "--api_url", server.url,
                 "--bearer_token_file", str(token_file), *extra,
                 env={"PUBSUB_EMULATOR_HOST": os.environ["PUBSUB_EMULATOR_HOST"]})


@pytest.mark.integration
def test_verbose_polling_logs_requests_but_never_the_token(hostile_api, pubsub_env, tmp_path, token_file):
    topic = pubsub_env.topic("posts")
    subscription = pubsub_env.subscription(topic)
    hostile_api.add_tweets("acme", 3)
    hostile_api.add_tweets("globex", 2)
    proc = _ingest(hostile_api, topic, tmp_path, token_file, "--checkpoint", str(tmp_path / "ck.json"),
                   "--settle_s", "0", "--once")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    # DEBUG from tweepy (request headers, response bodies) and urllib3 was on ...
    assert "Making API request" in output and "Received API response" in output
    assert "Starting new HTTP connection" in output and "Bearer ***" in output
    assert "published 5 posts" in proc.stdout
    assert_nowhere(HOSTILE, output)  # ... and the token is in none of it
    assert len(pubsub_env.pull_posts(subscription)) == 5


@pytest.mark.integration
def test_403_that_echoes_the_header_is_one_line_without_the_token(hostile_api, pubsub_env, tmp_path, token_file):
    topic = pubsub_env.topic("posts")
    hostile_api.script.append("403_echo")
    proc = _ingest(hostile_api, topic, tmp_path, token_file, "--checkpoint", str(tmp_path / "ck.json"),
                   "--settle_s", "0", "--once")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("pulse ingest: error: the X API refused access (403 Forbidden: refused Authorization: "
                           "Bearer ***"), last
    assert "Received API response: 403" in output  # the echoing body was logged (masked) at DEBUG
    assert_nowhere(HOSTILE, output)


@pytest.mark.integration
@pytest.mark.parametrize("where", ["stream", "rules"])
def test_stream_403_that_echoes_the_header_never_shows_the_token(hostile_api, pubsub_env, tmp_path, token_file,
                                                                  where):
    topic = pubsub_env.topic("posts")
    (hostile_api.stream_script if where == "stream" else hostile_api.rules_script).append("403_echo")
    proc = _ingest(hostile_api, topic, tmp_path, token_file, "--stream", "--max_posts", "1")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("pulse ingest: error: the X API refused access to the filtered stream (403 Forbidden: ")
    assert "***" in last
    assert_nowhere(HOSTILE, output)


@pytest.mark.integration
def test_403_echo_in_process_is_masked_in_capsys_and_caplog(hostile_api, pubsub_env, tmp_path, monkeypatch, capsys,
                                                          caplog):
    """The in-process path: what capsys and caplog (at DEBUG) hold."""
    topic = pubsub_env.topic("posts")
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("X_BEARER_TOKEN", HOSTILE)
    hostile_api.add_tweets("acme", 1)
    hostile_api.script.append("403_echo")
    code = ingest.main(["--keywords", "acme", "--topic", topic, "--api_url", hostile_api.url, "--checkpoint",
                        str(tmp_path / "ck.json"), "--settle_s", "0", "--once"])
    captured = capsys.readouterr()
    assert code == 1
    assert "Making API request" in caplog.text
    assert_nowhere(HOSTILE, captured.out + captured.err + caplog.text)
    assert_nowhere(HOSTILE, "\n".join(r.getMessage() for r in caplog.records))
