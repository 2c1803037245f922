"""Pub/Sub in and out of the job: ReadPosts and PublishAlerts.

    ReadPosts:     PBegin -> RawMessage (data bytes as received, attributes, publish time)
    PublishAlerts: Alert rows -> JSON messages on a topic (attributes alert_id, keyword, kind, window_start)

    pulse run --input projects/P/subscriptions/S --output out --run_for 600

Timestamps: on Dataflow the read uses the `event_time` attribute as the timestamp
attribute (the watermark then follows event time) and `post_key` (`<post id>|<keyword>`,
set by the connectors) as `id_label`: Dataflow de-duplicates redeliveries of the same
post for the same keyword, and a post collected for two keywords stays two messages. Beam's Python DirectRunner rejects `id_label`, and a
message whose `event_time` attribute does not parse would stop its reader, so there
the read uses publish time and ParsePosts assigns the same event time per message,
dead-lettering a bad one instead. Set PUBSUB_EMULATOR_HOST to use the emulator.

On Beam's Python BundleBasedDirectRunner (what `pulse run` uses locally) ReadPosts reads
through connectors/sources/pubsub_direct.py instead of Beam's evaluator: bundles of up to 500
messages, acknowledgements only after the pipeline wrote the messages, broker outages
logged and retried, and a stop that drains (`ReadPosts.reader()` is its handle).

`check_pubsub(path)` is the start-up check: a subscription or topic that does not exist,
or a broker that does not answer, is one sentence (PubSubError) before anything is built.
"""
from __future__ import annotations

import json
import os
import re
import uuid

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage, ReadFromPubSub, WriteToPubSub

from models.contracts import RawMessage

TOPIC = re.compile(r"^projects/[^/]+/topics/[^/]+$")
SUBSCRIPTION = re.compile(r"^projects/[^/]+/subscriptions/[^/]+$")


def is_pubsub_path(path: str) -> bool:
    return bool(TOPIC.match(path) or SUBSCRIPTION.match(path))


class PubSubError(RuntimeError):
    """A subscription or topic the job needs is missing or unreachable, said in one sentence."""


def _broker() -> str:
    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    return f"the Pub/Sub emulator at {host}" if host else "Google Cloud Pub/Sub"


def check_pubsub(path: str, timeout_s: float = 10.0) -> None:
    """Raise PubSubError unless `path` (a subscription or topic) exists and the broker answers.

    Uses the admin calls of google-cloud-pubsub (get_subscription / get_topic), against
    PUBSUB_EMULATOR_HOST when it is set, else real Google Cloud with the default credentials.
    """
    from google.api_core import exceptions as gexc
    from google.api_core.retry import Retry
    from google.cloud import pubsub_v1
    kind = "topic" if TOPIC.match(path) else "subscription"
    retry = Retry(initial=0.5, maximum=4.0, multiplier=2.0, timeout=timeout_s,
                  predicate=lambda e: isinstance(e, (gexc.ServiceUnavailable, gexc.DeadlineExceeded)))
    try:
        if kind == "topic":
            client = pubsub_v1.PublisherClient()
            try:
                client.get_topic(topic=path, retry=retry, timeout=timeout_s)
            finally:
                client.transport.close()
        else:
            with pubsub_v1.SubscriberClient() as client:
                client.get_subscription(subscription=path, retry=retry, timeout=timeout_s)
    except gexc.NotFound:
        raise PubSubError(f"Pub/Sub {kind} {path} does not exist on {_broker()}") from None
    except (gexc.PermissionDenied, gexc.Unauthenticated) as e:
        raise PubSubError(f"no permission to use Pub/Sub {kind} {path} on {_broker()}: "
                          f"{getattr(e, 'message', e)}") from None
    except (gexc.GoogleAPICallError, gexc.RetryError) as e:
        e = getattr(e, "cause", None) or e  # a RetryError wraps the last error
        summary = " ".join(str(getattr(e, "message", None) or e).split())[:200]
        raise PubSubError(f"{_broker()} does not answer ({type(e).__name__}: {summary}); "
                          f"cannot check {kind} {path}") from None
    except Exception as e:  # noqa: BLE001  (no credentials, bad host name, ...)
        summary = " ".join(str(e).split())[:200]
        raise PubSubError(f"cannot reach {_broker()} to check {kind} {path}: {type(e).__name__}: {summary}") from None


def _is_python_direct_runner(runner) -> bool:
    from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
    return isinstance(runner, BundleBasedDirectRunner)


def to_raw_message(message: PubsubMessage) -> RawMessage:
    publish_time = message.publish_time.timestamp() if message.publish_time is not None else None
    return RawMessage(bytes(message.data or b""), dict(message.attributes or {}), publish_time, None,
                      getattr(message, "message_id", None) or None)


class ReadPosts(beam.PTransform):
    """A Pub/Sub subscription or topic -> RawMessage.

    On the BundleBasedDirectRunner: connectors/sources/pubsub_direct.DirectPubSubRead (up to
    `max_messages` per bundle); `reader()` then returns its Reader (stop, acknowledge, report).
    """

    def __init__(self, path: str, on_dataflow: bool = False,
                 timestamp_attribute: str = "event_time", id_label: str = "post_key",
                 max_messages: int = 500):
        super().__init__()
        if not is_pubsub_path(path):
            raise ValueError(f"{path!r} is neither projects/P/topics/T nor projects/P/subscriptions/S")
        self.path = path
        self.on_dataflow = on_dataflow
        self.timestamp_attribute = timestamp_attribute
        self.id_label = id_label
        self.max_messages = max_messages
        self.reader_id = uuid.uuid4().hex
        self.direct = False  # set when expanded for the Python DirectRunner

    def reader(self):
        """The running read's Reader on the DirectRunner, else None."""
        if not self.direct:
            return None
        from connectors.sources import pubsub_direct
        return pubsub_direct.reader(self.reader_id)

    def expand(self, pbegin):
        if not self.on_dataflow and _is_python_direct_runner(pbegin.pipeline.runner):
            from connectors.sources.pubsub_direct import DirectPubSubRead
            self.direct = True
            return pbegin | "PullFromPubSub" >> DirectPubSubRead(self.path, self.reader_id, self.max_messages)
        kind = "topic" if TOPIC.match(self.path) else "subscription"
        read = ReadFromPubSub(
            **{kind: self.path},
            with_attributes=True,
            id_label=self.id_label if self.on_dataflow else None,
            timestamp_attribute=self.timestamp_attribute if self.on_dataflow else None,
        )
        return (pbegin
                | "ReadFromPubSub" >> read
                | "ToRawMessage" >> beam.Map(to_raw_message))


def alert_id(alert: dict) -> str:
    """A stable id for an alert: the same window, keyword and kind give the same id in any run,
    so a subscriber can drop an alert it already handled (a retried bundle, a rerun)."""
    start = alert["window_start"]
    start = start.isoformat() if hasattr(start, "isoformat") else str(start)
    return f"{alert['keyword']}|{start}|{alert['kind']}"


def alert_message(alert: dict) -> PubsubMessage:
    """An Alert row -> the JSON message subscribers receive."""
    body = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in alert.items()}
    attributes = {"alert_id": alert_id(alert), "keyword": alert["keyword"], "kind": alert["kind"],
                  "window_start": body["window_start"]}
    return PubsubMessage(json.dumps(body, sort_keys=True).encode("utf-8"), attributes)


class PublishAlerts(beam.PTransform):
    """Alert rows -> messages on `topic` (projects/P/topics/T)."""

    def __init__(self, topic: str):
        super().__init__()
        if not TOPIC.match(topic):
            raise ValueError(f"alerts topic {topic!r} is not projects/P/topics/T")
        self.topic = topic

    def expand(self, alerts):
        return (alerts
                | "ToPubsubMessage" >> beam.Map(alert_message)
                | "WriteToPubSub" >> WriteToPubSub(self.topic, with_attributes=True))
