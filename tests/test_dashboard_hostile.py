"""Posts, keywords and ids that attack the dashboard are shown as text on every page
(AppTest; tests/test_dashboard_browser.py checks the same output in Chromium): no element that
renders Markdown carries them unescaped, and the review desk shows the post in text elements.
The server in front of the app refuses a Host or a websocket Origin it does not serve.

    .venv/bin/pytest tests/test_dashboard_hostile.py -q
"""
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import guard
from dashboard.safe_text import decoded, md, one_line
from tests.fixtures.dashboard import HOSTILE_HOST, HOSTILE_TEXTS

APP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dashboard", "app.py")

pytestmark = pytest.mark.integration


def app(monkeypatch, output, page, reviewer="tester", **params) -> AppTest:
    monkeypatch.setenv("PULSE_DASHBOARD_OUTPUT", output)
    monkeypatch.setenv("PULSE_DASHBOARD_REFRESH", "0")
    monkeypatch.setenv("PULSE_DASHBOARD_REVIEWER", reviewer)
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["page"] = page
    for key, value in params.items():
        at.query_params[key] = value
    return at.run()


def markdown_rendered(at) -> list[str]:
    """The text of every element Streamlit renders as Markdown (labels included)."""
    values = []
    for kind in ("markdown", "caption", "header", "subheader", "title", "success", "info", "warning", "error"):
        values += [str(e.value) for e in getattr(at, kind)]
    values += [e.label for e in at.expander] + [m.label for m in at.metric]
    values += [str(m.help or "") for m in at.metric]
    return values


OWN_LINK = re.compile(r"\[Posts of this (incident|window)\]\(\?[A-Za-z0-9%=&._+-]*\)")


def unescaped_attack(value: str) -> str | None:
    if OWN_LINK.fullmatch(value):
        return None  # the dashboard's own link: its query string is percent-encoded
    for pattern in (re.escape(HOSTILE_HOST), r"(?<!\\)`", r"(?<!\\)\$", r"(?<!\\)!(?<!\\)\[", r"^\s*#",
                    "URGENT: label"):
        if re.search(pattern, value, re.M):
            return pattern
    return None


@pytest.mark.parametrize("text", [*HOSTILE_TEXTS, "plain", "a\nb\x1b[31mc\u202ed", "AT&amp;T `x` $y$ :red[z]",
                                  "see http://evil.example/x, www.evil.example and ana@evil.example"])
def test_md_shows_the_characters_it_is_given(text):
    escaped = md(text)
    assert unescaped_attack(escaped) is None
    assert "\n" not in escaped and "\x1b" not in escaped and "\u202e" not in escaped
    # Removing the escapes gives back the text (on one line): nothing was dropped.
    assert re.sub(r"\\(.)", r"\1", escaped).replace("\u2060", "") == one_line(text)
    assert decoded("AT&amp;T &lt;b&gt;") == "AT&T <b>"


@pytest.mark.parametrize("page", ["Review", "Alerts", "Posts", "Overview", "Health", "Accuracy"])
def test_hostile_posts_are_shown_as_text_on_every_page(monkeypatch, hostile_dashboard_output, page):
    out, ids = hostile_dashboard_output
    at = app(monkeypatch, out, page)
    assert [e.value for e in at.exception] == []
    attacks = {v: unescaped_attack(v) for v in markdown_rendered(at) if unescaped_attack(v)}
    assert attacks == {}
    if page == "Review":
        shown = [t.value for t in at.text]
        assert any(ids[0] in t for t in shown)
        assert decoded(HOSTILE_TEXTS[0]) in shown
    if page == "Alerts":
        assert any("evil\\.example" in e.label for e in at.expander)


def test_a_hostile_reviewer_name_is_one_line_on_the_page(monkeypatch, fresh_dashboard_output):
    at = app(monkeypatch, fresh_dashboard_output, "Review", reviewer="ana\x1b[31m")
    assert [e.value for e in at.exception] == []
    assert [e.value for e in at.error] == [md("a reviewer's name cannot hold a control character (U+001B)")]


def test_allowed_hosts_and_same_origin():
    assert guard.allowed_hosts("127.0.0.1") == ["localhost", "127.0.0.1", "::1", "[::1]"]
    assert "dash.example.org" in guard.allowed_hosts("127.0.0.1", ["dash.example.org", " "])
    assert guard.same_origin("http://127.0.0.1:8501", "127.0.0.1:8501", "ws")
    assert guard.same_origin("https://dash.example.org", "dash.example.org", "wss")
    for origin, host in (("http://localhost:3000", "localhost:8501"), ("http://evil.example:8501", "127.0.0.1:8501"),
                         ("https://127.0.0.1:8501", "127.0.0.1:8501"), ("null", "127.0.0.1:8501"),
                         ("http://127.0.0.1:8501", None)):
        assert not guard.same_origin(origin, host, "ws"), (origin, host)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_of(port: int, headers: dict, path: str = "/") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


@pytest.mark.slow
def test_the_server_refuses_a_host_or_websocket_origin_it_does_not_serve(tmp_path):
    """DNS rebinding (Host: evil.example) and a page on another origin (localhost:3000, the same
    machine) get no page and no websocket; the dashboard's own address gets both."""
    (tmp_path / "out").mkdir()
    port = free_port()
    log = open(tmp_path / "dashboard.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "dashboard", "--output", str(tmp_path / "out"),
                             "--port", str(port), "--allowed_hosts", "dash.example.org"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "dashboard.log").read_text()
                time.sleep(0.3)
        own = f"127.0.0.1:{port}"
        assert status_of(port, {"Host": own}) == 200
        assert status_of(port, {"Host": f"localhost:{port}"}) == 200
        assert status_of(port, {"Host": f"dash.example.org:{port}"}) == 200
        assert status_of(port, {"Host": "evil.example"}) == 400
        assert status_of(port, {"Host": f"evil.example:{port}"}, "/_stcore/health") == 400
        stream = "/_stcore/stream"
        assert status_of(port, {**UPGRADE, "Host": own, "Origin": f"http://{own}"}, stream) == 101
        assert status_of(port, {**UPGRADE, "Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"},
                         stream) == 400
        assert status_of(port, {**UPGRADE, "Host": own, "Origin": "http://localhost:3000"}, stream) == 403
        assert status_of(port, {**UPGRADE, "Host": own, "Origin": f"http://evil.example:{port}"}, stream) == 403
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
        log.close()
