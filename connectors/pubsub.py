"""Pub/Sub in and out of the job: ReadPosts and PublishAlerts.

    ReadPosts:     PBegin -> RawMessage (data bytes as received, attributes, publish time)
    PublishAlerts: Alert rows -> JSON messages on a topic (attributes keyword, kind, window_start)

    pulse run --input projects/P/subscriptions/S --output out --run_for 600

Timestamps: on Dataflow the read uses the `event_time` attribute as the timestamp
attribute (the watermark then follows event time) and `post_id` as `id_label` (Dataflow
de-duplicates redeliveries). Beam's Python DirectRunner rejects `id_label`, and a
message whose `event_time` attribute does not parse would stop its reader, so there
the read uses publish time and ParsePosts assigns the same event time per message,
dead-lettering a bad one instead. Set PUBSUB_EMULATOR_HOST to use the emulator.
"""
from __future__ import annotations

import json
import re

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage, ReadFromPubSub, WriteToPubSub

from models.contracts import RawMessage

TOPIC = re.compile(r"^projects/[^/]+/topics/[^/]+$")
SUBSCRIPTION = re.compile(r"^projects/[^/]+/subscriptions/[^/]+$")


def is_pubsub_path(path: str) -> bool:
    return bool(TOPIC.match(path) or SUBSCRIPTION.match(path))


def to_raw_message(message: PubsubMessage) -> RawMessage:
    publish_time = message.publish_time.timestamp() if message.publish_time is not None else None
    return RawMessage(bytes(message.data or b""), dict(message.attributes or {}), publish_time, None)


class ReadPosts(beam.PTransform):
    """A Pub/Sub subscription or topic -> RawMessage."""

    def __init__(self, path: str, on_dataflow: bool = False,
                 timestamp_attribute: str = "event_time", id_label: str = "post_id"):
        super().__init__()
        if not is_pubsub_path(path):
            raise ValueError(f"{path!r} is neither projects/P/topics/T nor projects/P/subscriptions/S")
        self.path = path
        self.on_dataflow = on_dataflow
        self.timestamp_attribute = timestamp_attribute
        self.id_label = id_label

    def expand(self, pbegin):
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


def alert_message(alert: dict) -> PubsubMessage:
    """An Alert row -> the JSON message subscribers receive."""
    body = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in alert.items()}
    attributes = {"keyword": alert["keyword"], "kind": alert["kind"],
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
