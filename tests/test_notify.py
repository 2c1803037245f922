"""`pulse notify` against a local HTTP server (Slack-compatible and JSON webhooks) and a local
SMTP server (aiosmtpd): routing rules, at most once per alert and destination (the delivery
log), retries with backoff, the rate limit, secrets never shown; and one surge of a running
job (Pub/Sub emulator) delivered exactly once to a webhook and an inbox, from the alerts
topic while the job runs and from the alerts table after.

    .venv/bin/pytest tests/test_notify.py -q
"""
import datetime as dt
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller

from connectors.monitoring import notify
from connectors.feeds.rate_limit import FakeClock
from tests.fixtures.bigquery import PROJECT
from tests.test_bigquery import bq_dataset_with_rows  # noqa: F401  (module fixture: test_sql's rows)
from tests.test_sql import ALERTS, write_table

pytestmark = pytest.mark.integration

SECRET = "T000SECRET/B000/XXXXtoken"


class Hooks:
    """A local HTTP server: records every POST (path, JSON body) and answers from a script of
    status codes per path (then 200)."""

    def __init__(self):
        self.received: list[tuple[str, dict]] = []
        self.script: dict[str, list[int]] = {}
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                codes = hooks.script.get(self.path, [])
                code = codes.pop(0) if codes else 200
                if code == 200:
                    hooks.received.append((self.path, body))
                self.send_response(code)
                if code == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def hooks():
    server = Hooks()
    yield server
    server.close()


@pytest.fixture
def inbox():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    box = Inbox()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    box.port = port
    yield box
    controller.stop()


def config_text(hooks, inbox, rules='destinations = ["slack", "hook", "mail"]', settings="") -> str:
    return f"""
[destinations.slack]
type = "slack"
url = "{hooks.url}/services/${{PULSE_TEST_SLACK}}"
[destinations.hook]
type = "webhook"
url = "{hooks.url}/hook"
[destinations.mail]
type = "email"
smtp_host = "127.0.0.1"
smtp_port = {inbox.port}
from = "pulse@example.org"
to = ["oncall@example.org"]
[[rules]]
{rules}
[settings]
backoff_s = 0.01
{settings}
"""


@pytest.fixture
def setup(hooks, inbox, tmp_path, monkeypatch):
    monkeypatch.setenv("PULSE_TEST_SLACK", SECRET)
    out = str(tmp_path / "out")
    write_table(out, "alerts", ALERTS)
    (tmp_path / "notify.toml").write_text(config_text(hooks, inbox))
    return out, str(tmp_path / "notify.toml"), str(tmp_path / "log")


def run(argv, capsys):
    out = io.StringIO()
    status = notify.main(argv, out=out)
    return status, out.getvalue(), capsys.readouterr().err


def test_each_alert_reaches_each_destination_once(setup, hooks, inbox, capsys):
    out, config, log = setup
    status, printed, err = run(["--config", config, "--output", out, "--log", log], capsys)
    assert status == 0, err
    # ALERTS holds two alerts (one written twice by a rerun: alerts_unique keeps one).
    slack = [b for p, b in hooks.received if p.startswith("/services/")]
    hook = [b for p, b in hooks.received if p == "/hook"]
    assert len(slack) == len(hook) == len(inbox.messages) == 2
    assert slack[0]["text"].startswith("sentiment-pulse alert: acme negative_surge in the window from 2024-05-01 10:00 UTC")
    assert hook[1]["alert"]["kind"] == "volume_spike" and hook[1]["alert"]["window_start"] == "2024-05-01T11:05:00+00:00"
    rcpt, mail = inbox.messages[0]
    assert rcpt == ["oncall@example.org"] and mail["Subject"].replace("\n", "").replace("\r", "") == slack[0]["text"]
    assert printed.count("delivered") == 6
    # Again (a rerun, a second notifier): nothing is sent twice.
    status, printed, _ = run(["--config", config, "--output", out, "--log", log], capsys)
    assert status == 0 and printed == "" and len(hooks.received) == 4 and len(inbox.messages) == 2
    records = notify.DeliveryLog(log).records()
    assert len(records) == 6 and {r["state"] for r in records} == {"delivered"}


def test_rules_route_by_keyword_kind_and_zscore(hooks, inbox, tmp_path, monkeypatch):
    monkeypatch.setenv("PULSE_TEST_SLACK", SECRET)
    text = config_text(hooks, inbox, rules='destinations = ["hook"]\nkinds = ["volume_spike"]') + \
        '[[rules]]\ndestinations = ["mail"]\nkeywords = ["globex"]\n' \
        '[[rules]]\ndestinations = ["slack"]\nmin_zscore = 4.0\n'
    config = notify.parse_config(text)
    alert = {"keyword": "acme", "kind": "volume_spike", "zscore": 3.5, "window_start": "2024-05-01T10:00:00Z"}
    assert [d.name for d in config.route(alert)] == ["hook"]
    assert [d.name for d in config.route(dict(alert, keyword="globex", kind="negative_surge"))] == ["mail"]
    assert [d.name for d in config.route(dict(alert, zscore=4.5))] == ["hook", "slack"]
    assert config.route(dict(alert, kind="negative_surge")) == []


def test_retries_with_backoff_then_gives_up_and_never_resends(setup, hooks, tmp_path, capsys):
    out, config, log = setup
    hooks.script["/hook"] = [503, 429, 200]  # the first alert: two retries; the second: 200
    hooks.script[f"/services/{SECRET}"] = [400]  # refused: not retried
    status, printed, err = run(["--config", config, "--output", out, "--log", log], capsys)
    assert status == 1
    records = {(r["alert_id"].split("|")[2], r["destination"]): r for r in notify.DeliveryLog(log).records()}
    assert records[("negative_surge", "hook")]["attempts"] == 3 and records[("negative_surge", "hook")]["state"] == \
        "delivered"
    assert records[("negative_surge", "slack")]["state"] == "failed"
    assert records[("negative_surge", "slack")]["reason"] == "HTTP 400" and records[("negative_surge", "slack")][
        "attempts"] == 1
    assert "failed acme|2024-05-01T10:00:00+00:00|negative_surge -> slack after 1 attempts: HTTP 400" in printed
    # The secret in the Slack URL is shown nowhere, and a failed delivery is not sent again.
    assert SECRET not in printed + err and "XXXXtoken" not in json.dumps(notify.DeliveryLog(log).records())
    before = len(hooks.received)
    assert run(["--config", config, "--output", out, "--log", log], capsys)[0] == 0
    assert len(hooks.received) == before


def test_a_destination_that_stays_down_is_tried_attempts_times(hooks, inbox, tmp_path, monkeypatch):
    monkeypatch.setenv("PULSE_TEST_SLACK", SECRET)
    config = notify.parse_config(config_text(hooks, inbox, rules='destinations = ["hook"]',
                                                     settings="attempts = 4\nburst = 10"))
    hooks.script["/hook"] = [500] * 10
    clock = FakeClock(0)
    notifier = notify.Notifier(config, notify.DeliveryLog(str(tmp_path / "log")), clock=clock)
    [outcome] = notifier.handle({"keyword": "acme", "kind": "volume_spike", "zscore": 5.0, "value": 9.0,
                                 "baseline": 1.0, "window_start": dt.datetime(2024, 5, 1, 10, tzinfo=dt.timezone.utc)})
    assert (outcome.state, outcome.attempts, outcome.reason) == ("failed", 4, "HTTP 500")
    assert len(hooks.script["/hook"]) == 6
    # Backoff between the tries, doubling from backoff_s (jitter: at least half of each step).
    backoff = clock.sleeps
    assert len(backoff) == 3 and [0.005 <= backoff[0] <= 0.01, 0.01 <= backoff[1] <= 0.02, 0.02 <= backoff[2] <= 0.04] \
        == [True] * 3


def test_the_rate_limit_spaces_messages_per_destination(hooks, inbox, tmp_path, monkeypatch):
    monkeypatch.setenv("PULSE_TEST_SLACK", SECRET)
    config = notify.parse_config(config_text(hooks, inbox, rules='destinations = ["hook"]', settings="per_minute = 6"))
    clock = FakeClock(0)
    notifier = notify.Notifier(config, notify.DeliveryLog(str(tmp_path / "log")), clock=clock)
    start = dt.datetime(2024, 5, 1, 10, tzinfo=dt.timezone.utc)
    for i in range(6):
        notifier.handle({"keyword": "acme", "kind": "volume_spike", "zscore": 5.0, "value": 9.0, "baseline": 1.0,
                         "window_start": start + dt.timedelta(minutes=i)})
    assert len(hooks.received) == 6
    # 6 a minute with a burst of 3: the first three at once, then one every 10 s.
    assert clock.now() == pytest.approx(30.0) and clock.sleeps == pytest.approx([10.0, 10.0, 10.0])


@pytest.mark.parametrize("text, message", [
    ("destinations = 1", "names no destinations"),
    ('[destinations.a]\ntype = "pager"', "needs type = one of slack, webhook, email"),
    ('[destinations.a]\ntype = "slack"\nurl = "ftp://x"', "needs url = an http(s) address"),
    ('[destinations.a]\ntype = "slack"\nurl = "${NOT_SET_ANYWHERE}"', "names ${NOT_SET_ANYWHERE}, which is not set"),
    ('[destinations.a]\ntype = "email"\nsmtp_host = "h"\nfrom = "x"\nto = "y@z"', "'x' is not an e-mail address"),
    ('[destinations.a]\ntype = "webhook"\nurl = "http://h/"', "has no [[rules]]"),
    ('[destinations.a]\ntype = "webhook"\nurl = "http://h/"\n[[rules]]\ndestinations = ["b"]',
     "names destination 'b', which the config does not define"),
    ("[destinations", "is not TOML"),
])
def test_config_mistakes_are_one_line(tmp_path, capsys, text, message):
    (tmp_path / "c.toml").write_text(text)
    status, _, err = run(["--config", str(tmp_path / "c.toml"), "--output", str(tmp_path)], capsys)
    assert status == 2 and err.startswith("pulse notify: error: ") and message in err and err.count("\n") == 1


def test_incidents_are_one_message_each(setup, hooks, inbox, capsys, tmp_path):
    out, config, log = setup
    status, printed, err = run(["--config", config, "--output", out, "--log", log, "--incidents"], capsys)
    assert status == 0, err
    hook = [b for p, b in hooks.received if p == "/hook"]
    assert [b["alert"]["incident_id"] for b in hook] == ["acme/1714557600", "acme/1714561500"]
    assert hook[0]["summary"].startswith("sentiment-pulse incident: acme negative_surge from 2024-05-01 10:00 UTC")


def test_the_bigquery_alerts_table_is_delivered_once_like_the_parquet_one(setup, bq_emulator,  # noqa: F811
                                                                          bq_dataset_with_rows, hooks, inbox,
                                                                          capsys, monkeypatch):
    """--output PROJECT:DATASET reads alerts_unique (and incidents) on BigQuery (the emulator,
    holding the same rows as the Parquet output); the delivery log knows each alert by the same
    id from either table, so neither sends one twice."""
    out, config, log = setup
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", bq_emulator.split("//", 1)[1])
    dataset = f"{PROJECT}:{bq_dataset_with_rows}"
    status, printed, err = run(["--config", config, "--output", dataset, "--log", log], capsys)
    assert status == 0, err
    hook = [b for p, b in hooks.received if p == "/hook"]
    assert len(hook) == len(inbox.messages) == 2 and printed.count("delivered") == 6
    assert hook[1]["alert"]["kind"] == "volume_spike" and hook[1]["alert"]["window_start"] == "2024-05-01T11:05:00+00:00"
    assert hook[0]["summary"].startswith("sentiment-pulse alert: acme negative_surge in the window from 2024-05-01 "
                                         "10:00 UTC")
    for source in (out, dataset):  # the Parquet table of the same alerts, then BigQuery again: all in the log
        status, printed, _ = run(["--config", config, "--output", source, "--log", log], capsys)
        assert (status, printed) == (0, "")
    assert len(hooks.received) == 4 and len(notify.DeliveryLog(log).records()) == 6
    status, _, err = run(["--config", config, "--output", dataset, "--log", log, "--incidents"], capsys)
    assert status == 0, err
    assert [b["alert"]["incident_id"] for p, b in hooks.received[4:] if p == "/hook"] == ["acme/1714557600",
                                                                                          "acme/1714561500"]
    status, _, err = run(["--config", config, "--output", f"{PROJECT}:no_such_dataset", "--log", log], capsys)
    assert status == 2 and err.count("\n") == 1 and err.startswith("pulse notify: error: "), err


# ---- one surge of a running job, exactly once -------------------------------------------

@pytest.mark.slow
def test_a_running_jobs_surge_is_delivered_exactly_once(pubsub_emulator, pubsub_env, tiny_bundled_model, hooks, inbox,
                                                        tmp_path, monkeypatch):
    """The job (Pub/Sub in, alerts topic out) raises one volume_spike; `pulse notify --follow`
    on the alerts subscription delivers it while the job runs; `pulse notify` over the table
    afterwards (the same alert, from the other source) sends nothing more: one webhook POST
    and one e-mail in all."""
    from connectors.feeds.publisher import Publisher, post_message
    from tests.fixtures.pubsub import BackgroundJob
    from tests.test_pubsub_pipeline import WINDOW_S, posts_around

    monkeypatch.setenv("PULSE_TEST_SLACK", SECRET)
    config = tmp_path / "notify.toml"
    config.write_text(config_text(hooks, inbox, rules='destinations = ["hook", "mail"]\nkinds = ["volume_spike"]'))
    topic = pubsub_emulator.topic("posts")
    subscription = pubsub_emulator.subscription(topic)
    alerts_topic = pubsub_emulator.topic("alerts")
    alerts_subscription = pubsub_emulator.subscription(alerts_topic)
    posts, burst_start = posts_around(time.time())
    publisher = Publisher(topic)
    publisher.publish([post_message(p) for p in posts])
    publisher.close()
    out, log = str(tmp_path / "out"), str(tmp_path / "log")
    job = BackgroundJob(["--input", subscription, "--output", out, "--model", str(tiny_bundled_model),
                         "--window_size", str(WINDOW_S), "--early_firing", "2", "--alerts_topic", alerts_topic,
                         "--alert_baseline_windows", "6", "--alert_min_posts", "10"]).start()
    # The operator's way: `pulse notify --follow` as its own process, stopped with Ctrl+C.
    follower = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "notify", "--config", str(config), "--subscription",
         alerts_subscription, "--log", log, "--follow", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 150
        while not (len(hooks.received) and len(inbox.messages)) and time.monotonic() < deadline:
            assert not job.failed, job.error
            assert follower.poll() is None, follower.communicate()[0]
            time.sleep(0.5)
    finally:
        job.stop()
        follower.send_signal(signal.SIGINT)
        try:
            printed, _ = follower.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            follower.kill()
            printed, _ = follower.communicate()
    assert follower.returncode == 0, printed
    assert not job.failed, job.error
    assert [b["alert"]["keyword"] for _, b in hooks.received] == ["acme"] and len(inbox.messages) == 1
    spike = hooks.received[0][1]["alert"]
    assert spike["kind"] == "volume_spike" and dt.datetime.fromisoformat(spike["window_start"]).timestamp() == burst_start
    assert "delivered acme|" in printed and SECRET not in printed
    # The table holds the same alert: notify over it sends nothing more.
    status = notify.main(["--config", str(config), "--output", out, "--log", log], out=io.StringIO())
    assert status == 0 and len(hooks.received) == 1 and len(inbox.messages) == 1
    assert sorted(r["destination"] for r in notify.DeliveryLog(log).records()) == ["hook", "mail"]
    assert os.path.isdir(out)
