"""`pulse notify`: alerts or incidents to Slack-compatible webhooks, JSON webhooks and e-mail.

    pulse notify --config notify.toml --output out                      # the alerts table, once
    pulse notify --config notify.toml --output out --follow 10          # ... every 10 s until Ctrl+C
    pulse notify --config notify.toml --subscription projects/P/subscriptions/S   # the alerts topic
    pulse notify --config notify.toml --output out --incidents          # one message per incident

Where alerts come from: the alerts table of the job's output, a Parquet directory or a
BigQuery PROJECT:DATASET (view alerts_unique, or view incidents with --incidents; the same SQL
on both), or a subscription to the job's --alerts_topic (the messages
connectors/pubsub.PublishAlerts sends; acknowledged once handled).

    pulse notify --config notify.toml --output my-proj:pulse --follow 30   # BigQuery's alerts table

Where they go (the config file, TOML): destinations of type `slack` (a Slack-compatible
incoming webhook: POST {"text": ...}), `webhook` (POST the alert as JSON) or `email` (SMTP),
and rules that route alerts to them by keyword, kind and minimum z-score:

    [destinations.ops]
    type = "slack"
    url = "${SLACK_WEBHOOK_URL}"          # ${NAME}: read from the environment
    [destinations.oncall]
    type = "email"
    smtp_host = "smtp.example.org"
    smtp_port = 587
    starttls = true
    username = "pulse"
    password = "${SMTP_PASSWORD}"
    from = "pulse@example.org"
    to = ["oncall@example.org"]
    [[rules]]
    destinations = ["ops", "oncall"]
    keywords = ["acme-air"]               # optional: every keyword
    kinds = ["negative_surge", "volume_spike"]   # optional: every kind
    min_zscore = 3.0                      # optional: 0
    [settings]
    per_minute = 20                       # at most this many messages a minute per destination,
    burst = 3                             # ... of which this many at once
    attempts = 5                          # tries per message (5xx, 429, network errors), backoff 1, 2, 4 ... s

At most once per alert (or incident) and destination: the delivery log (--log, a directory)
holds one file per (alert id, destination), created atomically *before* the message is sent,
so neither a rerun, a second `pulse notify` nor the same alert arriving from the topic and
the table sends it twice; a delivery cut short by a crash is not retried (the log says
`sending`). The log is a local directory whatever the source, BigQuery included: the claim
must be an atomic create-if-absent before the message leaves, which a directory gives (O_EXCL)
and a BigQuery table does not (no unique key; concurrent DML on one table can abort). Keep it on
a persistent disk of the machine that runs `pulse notify`, one log per set of destinations.
Secrets (URLs, passwords) are never printed: messages name the destination.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import signal
import smtplib
import ssl
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
from email.message import EmailMessage
from typing import Any, Callable, Iterable, Mapping, Sequence

from connectors.feeds.rate_limit import Backoff, SystemClock, TokenBucket

TYPES = ("slack", "webhook", "email")
UTC = dt.timezone.utc
_ENV_REF = re.compile(r"\$\{(\w+)\}")


class NotifyError(ValueError):
    """A mistake in the config or the command line, in one sentence."""


class DeliveryFailed(Exception):
    """A message that could not be delivered; `retry` says whether trying again may help."""

    def __init__(self, reason: str, retry: bool, after_s: float | None = None):
        super().__init__(reason)
        self.retry = retry
        self.after_s = after_s


# ---- config -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Destination:
    name: str
    type: str
    settings: Mapping[str, Any]  # secrets resolved; never printed

    def __repr__(self) -> str:  # a traceback or a log line shows no secret
        return f"Destination({self.name!r}, {self.type!r})"


@dataclasses.dataclass(frozen=True)
class Rule:
    destinations: tuple[str, ...]
    keywords: frozenset[str] | None = None
    kinds: frozenset[str] | None = None
    min_zscore: float = 0.0

    def matches(self, alert: Mapping[str, Any]) -> bool:
        keyword, kinds = alert.get("keyword"), set(_kinds(alert))
        return ((self.keywords is None or keyword in self.keywords)
                and (self.kinds is None or bool(kinds & self.kinds))
                and float(alert.get("zscore") or 0.0) >= self.min_zscore)


@dataclasses.dataclass(frozen=True)
class Config:
    destinations: Mapping[str, Destination]
    rules: tuple[Rule, ...]
    per_minute: float = 20.0
    burst: int = 3
    attempts: int = 5
    backoff_s: float = 1.0

    def route(self, alert: Mapping[str, Any]) -> list[Destination]:
        names: list[str] = []
        for rule in self.rules:
            if rule.matches(alert):
                names += [n for n in rule.destinations if n not in names]
        return [self.destinations[n] for n in names]


def _kinds(alert: Mapping[str, Any]) -> list[str]:
    if alert.get("kinds"):
        return [k.strip() for k in str(alert["kinds"]).split(",")]
    return [str(alert.get("kind"))]


def _resolve(value: Any, env: Mapping[str, str], where: str) -> Any:
    if isinstance(value, str):
        def sub(match):
            if match[1] not in env:
                raise NotifyError(f"{where} names ${{{match[1]}}}, which is not set in the environment")
            return env[match[1]]
        return _ENV_REF.sub(sub, value)
    if isinstance(value, list):
        return [_resolve(v, env, where) for v in value]
    return value


def _names(value: Any, where: str) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or not value:
        raise NotifyError(f"{where} must be a list of names")
    return frozenset(value)


def parse_config(text: str, env: Mapping[str, str] | None = None) -> Config:
    """The TOML config -> Config; NotifyError (one sentence) for anything wrong in it."""
    env = os.environ if env is None else env
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise NotifyError(f"the config is not TOML: {e}") from None
    destinations = {}
    if not isinstance(raw.get("destinations") or {}, dict) or not isinstance(raw.get("rules") or [], list) \
            or not isinstance(raw.get("settings") or {}, dict):
        raise NotifyError("the config names no destinations ([destinations.NAME] tables, [[rules]], [settings])")
    for name, spec in (raw.get("destinations") or {}).items():
        where = f"destination {name!r}"
        if not isinstance(spec, dict) or spec.get("type") not in TYPES:
            raise NotifyError(f"{where} needs type = one of {', '.join(TYPES)}")
        spec = {k: _resolve(v, env, where) for k, v in spec.items()}
        if spec["type"] in ("slack", "webhook"):
            url = spec.get("url")
            if not isinstance(url, str) or not re.match(r"https?://[^\s/]+", url):
                raise NotifyError(f"{where} needs url = an http(s) address")
        else:
            for key in ("smtp_host", "from", "to"):
                if not spec.get(key):
                    raise NotifyError(f"{where} (email) needs {key}")
            if isinstance(spec["to"], str):
                spec["to"] = [spec["to"]]
            for address in [spec["from"], *spec["to"]]:
                if not isinstance(address, str) or not re.fullmatch(r"[^@\s<>,;]+@[^@\s<>,;]+", address):
                    raise NotifyError(f"{where}: {address!r} is not an e-mail address")
        destinations[name] = Destination(name, spec["type"], spec)
    if not destinations:
        raise NotifyError("the config names no destinations ([destinations.NAME] with a type)")
    rules = []
    for i, spec in enumerate(raw.get("rules") or [], 1):
        where = f"rule {i}"
        if not isinstance(spec, dict):
            raise NotifyError(f"{where} must be a [[rules]] table")
        targets = _names(spec.get("destinations"), f"{where} destinations")
        if not targets:
            raise NotifyError(f"{where} needs destinations = [names]")
        unknown = sorted(targets - set(destinations))
        if unknown:
            raise NotifyError(f"{where} names destination {unknown[0]!r}, which the config does not define")
        try:
            min_z = float(spec.get("min_zscore", 0.0))
        except (TypeError, ValueError):
            raise NotifyError(f"{where} min_zscore must be a number") from None
        rules.append(Rule(tuple(sorted(targets)), _names(spec.get("keywords"), f"{where} keywords"),
                          _names(spec.get("kinds"), f"{where} kinds"), min_z))
    if not rules:
        raise NotifyError("the config has no [[rules]]: nothing would be sent")
    settings = raw.get("settings") or {}
    try:
        per_minute, attempts = float(settings.get("per_minute", 20)), int(settings.get("attempts", 5))
        burst = int(settings.get("burst", 3))
        backoff_s = float(settings.get("backoff_s", 1.0))
    except (TypeError, ValueError):
        raise NotifyError("settings per_minute, burst, attempts and backoff_s must be numbers") from None
    if per_minute <= 0 or burst < 1 or attempts < 1 or backoff_s < 0:
        raise NotifyError("settings: per_minute must be positive, burst and attempts at least 1, backoff_s not "
                          "negative")
    return Config(destinations, tuple(rules), per_minute, burst, attempts, backoff_s)


# ---- messages -----------------------------------------------------------------------------

def _one_line(value: Any, limit: int = 200) -> str:
    text = "".join(" " if (ord(c) < 32 or 0x7F <= ord(c) <= 0x9F or 0x202A <= ord(c) <= 0x202E
                           or 0x2066 <= ord(c) <= 0x2069 or 0xD800 <= ord(c) <= 0xDFFF) else c
                   for c in str(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _time(value: Any) -> str:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, dt.datetime):
        value = value if value.tzinfo else value.replace(tzinfo=UTC)
        return f"{value.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    return str(value)


def summary_line(alert: Mapping[str, Any]) -> str:
    """One line for a person: what, which keyword, when, how far from normal."""
    keyword = _one_line(alert.get("keyword"), 80)
    if alert.get("incident_id"):
        return (f"sentiment-pulse incident: {keyword} {', '.join(_kinds(alert))} from {_time(alert['started_at'])} "
                f"to {_time(alert['ended_at'])}, peak z {float(alert.get('zscore') or 0):.1f}, "
                f"{alert.get('alerts')} alerts, {alert.get('status')}")
    return (f"sentiment-pulse alert: {keyword} {_one_line(alert.get('kind'), 40)} in the window from "
            f"{_time(alert.get('window_start'))}: {float(alert.get('value') or 0):.3g} against a baseline of "
            f"{float(alert.get('baseline') or 0):.3g} (z {float(alert.get('zscore') or 0):.1f})")


def _slack_escape(text: str) -> str:
    """Slack's three control characters: the rest of the text is shown as written."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _jsonable(alert: Mapping[str, Any]) -> dict:
    out = {}
    for key, value in alert.items():
        if isinstance(value, dt.datetime):
            value = (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
        elif hasattr(value, "tolist"):
            value = value.tolist()
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out


# ---- sending ------------------------------------------------------------------------------

def _post_json(url: str, body: dict, timeout_s: float) -> None:
    request = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "sentiment-pulse"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read()
    except urllib.error.HTTPError as e:
        retry_after = e.headers.get("Retry-After") if e.headers else None
        after = float(retry_after) if retry_after and retry_after.isdigit() else None
        raise DeliveryFailed(f"HTTP {e.code}", retry=e.code == 429 or e.code >= 500, after_s=after) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DeliveryFailed(f"network error ({type(reason).__name__})", retry=True) from None


def _send_email(spec: Mapping[str, Any], subject: str, body: str, timeout_s: float) -> None:
    message = EmailMessage()
    message["Subject"], message["From"], message["To"] = subject, spec["from"], ", ".join(spec["to"])
    message.set_content(body)
    try:
        with smtplib.SMTP(spec["smtp_host"], int(spec.get("smtp_port", 25)), timeout=timeout_s) as smtp:
            if spec.get("starttls"):
                smtp.starttls(context=ssl.create_default_context())
            if spec.get("username"):
                smtp.login(spec["username"], spec.get("password", ""))
            smtp.send_message(message)
    except smtplib.SMTPAuthenticationError as e:
        raise DeliveryFailed(f"SMTP login refused ({e.smtp_code})", retry=False) from None
    except smtplib.SMTPResponseException as e:
        raise DeliveryFailed(f"SMTP {e.smtp_code}", retry=e.smtp_code >= 400 and e.smtp_code < 500) from None
    except (smtplib.SMTPException, OSError) as e:
        raise DeliveryFailed(f"SMTP error ({type(e).__name__})", retry=True) from None


def send(destination: Destination, alert: Mapping[str, Any], timeout_s: float = 10.0) -> None:
    """One message for `alert` to `destination`; DeliveryFailed when it was not accepted."""
    line = summary_line(alert)
    spec = destination.settings
    if destination.type == "slack":
        _post_json(spec["url"], {"text": _slack_escape(line)}, timeout_s)
    elif destination.type == "webhook":
        _post_json(spec["url"], {"summary": line, "alert": _jsonable(alert)}, timeout_s)
    else:
        details = "\n".join(f"{k}: {_one_line(v, 500)}" for k, v in _jsonable(alert).items())
        _send_email(spec, line, f"{line}\n\n{details}\n", timeout_s)


# ---- the delivery log ---------------------------------------------------------------------

class DeliveryLog:
    """One JSON file per (alert id, destination) under `directory`, created with O_EXCL before
    sending (the claim), rewritten with the outcome after: at most once, across processes."""

    def __init__(self, directory: str):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)

    def _path(self, alert_id: str, destination: str) -> str:
        digest = hashlib.sha256(f"{alert_id}\x00{destination}".encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return os.path.join(self.directory, f"{digest}.json")

    def claim(self, alert_id: str, destination: str) -> bool:
        """True for the one caller that may send this alert to this destination."""
        record = {"alert_id": alert_id, "destination": destination, "state": "sending",
                  "claimed_at": dt.datetime.now(UTC).isoformat()}
        try:
            fd = os.open(self._path(alert_id, destination), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def finish(self, alert_id: str, destination: str, state: str, attempts: int, reason: str = "") -> None:
        path = self._path(alert_id, destination)
        with open(path) as f:
            record = json.load(f)
        record.update(state=state, attempts=attempts, reason=reason, finished_at=dt.datetime.now(UTC).isoformat())
        temp = f"{path}.tmp"
        with open(temp, "w") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)

    def records(self) -> list[dict]:
        out = []
        for name in sorted(os.listdir(self.directory)):
            if name.endswith(".json"):
                with open(os.path.join(self.directory, name)) as f:
                    out.append(json.load(f))
        return out


# ---- the notifier -------------------------------------------------------------------------

def alert_key(alert: Mapping[str, Any]) -> str:
    """The id the delivery log keys on: incident_id for an incident, else the alerts topic's
    alert_id (connectors/pubsub.alert_id: keyword|window_start ISO|kind), the same from the
    topic and from the table."""
    if alert.get("incident_id"):
        return f"incident:{alert['incident_id']}"
    start = alert["window_start"]
    if isinstance(start, str):
        start = dt.datetime.fromisoformat(start.replace("Z", "+00:00"))
    start = (start if start.tzinfo else start.replace(tzinfo=UTC)).astimezone(UTC)
    return f"{alert['keyword']}|{start.isoformat()}|{alert['kind']}"


@dataclasses.dataclass
class Outcome:
    alert_id: str
    destination: str
    state: str  # delivered | failed | skipped (another run or source had it)
    attempts: int = 0
    reason: str = ""


class Notifier:
    """Routes alerts to destinations through the delivery log, with retries and a rate limit
    per destination. `sender` and `clock` are injectable (tests count waits without sleeping)."""

    def __init__(self, config: Config, log: DeliveryLog, sender: Callable[..., None] = send, clock=None):
        self.config, self.log, self.sender = config, log, sender
        self.clock = clock or SystemClock()
        rate = config.per_minute / 60.0
        self.buckets = {name: TokenBucket(config.burst, rate, self.clock)
                        for name in config.destinations}
        self.backoff = Backoff(base_s=config.backoff_s, cap_s=60.0, max_attempts=config.attempts)

    def handle(self, alert: Mapping[str, Any]) -> list[Outcome]:
        key = alert_key(alert)
        outcomes = []
        for destination in self.config.route(alert):
            if not self.log.claim(key, destination.name):
                outcomes.append(Outcome(key, destination.name, "skipped"))
                continue
            outcomes.append(self._deliver(key, destination, alert))
        return outcomes

    def _deliver(self, key: str, destination: Destination, alert: Mapping[str, Any]) -> Outcome:
        attempt, reason = 0, ""
        while attempt < self.config.attempts:
            attempt += 1
            self.buckets[destination.name].acquire()
            try:
                self.sender(destination, alert)
            except DeliveryFailed as e:
                reason = str(e)
                if not e.retry or attempt >= self.config.attempts:
                    break
                self.clock.sleep(max(e.after_s or 0.0, self.backoff.delay(attempt)))
                continue
            self.log.finish(key, destination.name, "delivered", attempt)
            return Outcome(key, destination.name, "delivered", attempt)
        self.log.finish(key, destination.name, "failed", attempt, reason)
        return Outcome(key, destination.name, "failed", attempt, reason)


# ---- sources ------------------------------------------------------------------------------

ALERTS_SQL = ("SELECT window_start, window_end, keyword, kind, value, baseline, zscore, sample_post_ids, emitted_at "
              "FROM ${dataset}.alerts_unique ORDER BY emitted_at, window_start, keyword, kind")
INCIDENTS_SQL = ("SELECT incident_id, keyword, started_at, ended_at, peak_at, peak_kind, peak_zscore AS zscore, kinds, "
                 "alerts, echoes, status FROM ${dataset}.incidents ORDER BY started_at, keyword")


def table_alerts(output: str, incidents: bool = False) -> list[dict]:
    """The alerts (or incidents) of an output, oldest first: a Parquet directory (DuckDB) or a
    BigQuery PROJECT:DATASET, through the same views and the same SQL (connectors/query/sqlfiles)."""
    from connectors.monitoring.accuracy_watch import is_bigquery
    from connectors.query import sqlfiles

    text = INCIDENTS_SQL if incidents else ALERTS_SQL
    if is_bigquery(output):
        return _bigquery_alerts(output, sqlfiles.render(text, "bigquery", output))
    from connectors.query import duckdb_sql

    try:
        columns, rows = duckdb_sql.query(output, sqlfiles.render(text, "duckdb"))
    except duckdb_sql.OutputNotFound as e:
        raise NotifyError(str(e)) from None
    return [dict(zip(columns, row)) for row in rows]


def _bigquery_alerts(output: str, sql: str) -> list[dict]:
    """Rows of a query on BigQuery (the emulator where BIGQUERY_EMULATOR_HOST is set); a missing
    dataset or a refused query is a NotifyError (one sentence)."""
    from google.api_core import exceptions as gexc

    from connectors.sinks.bigquery import bigquery_client, split_dataset

    project, _ = split_dataset(output)
    try:
        return [dict(row.items()) for row in bigquery_client(project).query(sql).result()]
    except gexc.NotFound:
        raise NotifyError(f"BigQuery dataset {output} has no alerts views (create them with make bq-tables)") from None
    except gexc.GoogleAPICallError as e:
        raise NotifyError(f"cannot read the alerts of {output}: {getattr(e, 'message', e)}") from None


def pull_alerts(subscription: str, max_messages: int = 100, timeout_s: float = 10.0):
    """(alert dict, ack id) pairs pulled from a subscription to the alerts topic; a message that
    is not an alert is returned as (None, ack id, why) so that it is acknowledged and reported."""
    from google.api_core import exceptions as gexc
    from google.cloud import pubsub_v1

    client = pubsub_v1.SubscriberClient()
    try:
        response = client.pull(request={"subscription": subscription, "max_messages": max_messages},
                               timeout=timeout_s)
    except gexc.DeadlineExceeded:
        return client, []
    except gexc.GoogleAPICallError as e:
        raise NotifyError(f"cannot pull from {subscription}: {getattr(e, 'message', e)}") from None
    pulled = []
    for received in response.received_messages:
        try:
            body = json.loads(received.message.data)
            if not isinstance(body, dict) or not {"keyword", "kind", "window_start"} <= set(body):
                raise ValueError("not an alert")
            pulled.append((body, received.ack_id, ""))
        except ValueError as e:
            pulled.append((None, received.ack_id, str(e)))
    return client, pulled


# ---- the command --------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pulse notify", description="Deliver alerts or incidents to webhooks and e-mail.")
    p.add_argument("--config", required=True, help="the TOML file of destinations and rules")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--output", help="the job's output: a Parquet directory or a BigQuery PROJECT:DATASET "
                                         "(its alerts table)")
    source.add_argument("--subscription", help="projects/P/subscriptions/S on the job's --alerts_topic")
    p.add_argument("--incidents", action="store_true", help="one message per incident instead of per alert "
                                                            "(--output only)")
    p.add_argument("--log", default="notify-log", help="the delivery log directory (default %(default)s)")
    p.add_argument("--follow", type=float, default=0.0, metavar="SECONDS",
                   help="look again every SECONDS until stopped (Ctrl+C, SIGTERM); 0 = once")
    p.add_argument("--run_for", type=float, default=0.0, help="with --follow: stop after this many seconds")
    return p


def _report(outcomes: Iterable[Outcome], alert: Mapping[str, Any], out) -> None:
    for o in outcomes:
        if o.state == "skipped":
            continue
        detail = f" after {o.attempts} attempts: {o.reason}" if o.state == "failed" else ""
        print(f"pulse notify: {o.state} {_one_line(o.alert_id, 160)} -> {o.destination}{detail}", file=out, flush=True)


def main(argv: Sequence[str] | None = None, out=None, sender: Callable[..., None] = send) -> int:
    out = out or sys.stdout
    args = parser().parse_args(argv)
    try:
        if args.incidents and args.subscription:
            raise NotifyError("--incidents reads the incidents view: use it with --output")
        if args.follow < 0 or args.run_for < 0:
            raise NotifyError("--follow and --run_for cannot be negative")
        try:
            with open(args.config, encoding="utf-8") as f:
                config = parse_config(f.read())
        except OSError as e:
            raise NotifyError(f"cannot read the config {args.config}: {e.strerror or e}") from None
        notifier = Notifier(config, DeliveryLog(args.log), sender)
    except NotifyError as e:
        print(f"pulse notify: error: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)} \
        if threading.current_thread() is threading.main_thread() else {}
    deadline = time.monotonic() + args.run_for if args.run_for else None
    failed = 0
    try:
        while True:
            try:
                if args.output:
                    for alert in table_alerts(args.output, args.incidents):
                        outcomes = notifier.handle(alert)
                        failed += sum(o.state == "failed" for o in outcomes)
                        _report(outcomes, alert, out)
                else:
                    client, pulled = pull_alerts(args.subscription, timeout_s=min(10.0, args.follow or 10.0))
                    for alert, ack_id, why in pulled:
                        if alert is None:
                            print(f"pulse notify: warning: a message on {args.subscription} is not an alert ({why});"
                                  " acknowledged", file=sys.stderr)
                        else:
                            outcomes = notifier.handle(alert)
                            failed += sum(o.state == "failed" for o in outcomes)
                            _report(outcomes, alert, out)
                        client.acknowledge(request={"subscription": args.subscription, "ack_ids": [ack_id]})
                    client.close()
            except NotifyError as e:
                if not args.follow:
                    print(f"pulse notify: error: {e}", file=sys.stderr)
                    return 2
                print(f"pulse notify: warning: {e}; trying again in {args.follow:g} s", file=sys.stderr)
            if not args.follow or stop.is_set() or (deadline and time.monotonic() >= deadline):
                break
            stop.wait(args.follow if not deadline else max(0.0, min(args.follow, deadline - time.monotonic())))
            if stop.is_set():
                break
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
