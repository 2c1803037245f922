"""Deduplicate: drop repeated posts by post id, counting each duplicate.

    Post (windowed) -> Post (the first copy of each id in its window)

Pub/Sub delivers at least once and the X API connector may see a post twice. On
Dataflow the read also passes `post_id` as `id_label`, but Beam's Python DirectRunner
rejects `id_label`, so the job de-duplicates itself with a stateful DoFn. Its state
is one boolean per (post id, window) and Beam clears it when the window expires
(window end + allowed lateness), so memory stays bounded in a job that runs for
months. A duplicate is counted (`duplicates`) rather than dead-lettered: it is the
same post, already accounted for.
"""
from __future__ import annotations

import typing

import apache_beam as beam
from apache_beam.coders import BooleanCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from transforms.parse import NAMESPACE
from transforms.records import Post


class _FirstSeen(beam.DoFn):
    SEEN = ReadModifyWriteStateSpec("seen", BooleanCoder())

    def __init__(self):
        self.duplicates = Metrics.counter(NAMESPACE, "duplicates")
        self.unique = Metrics.counter(NAMESPACE, "unique")

    def process(self, keyed: tuple[str, Post], seen=beam.DoFn.StateParam(SEEN)):
        _, post = keyed
        if seen.read():
            self.duplicates.inc()
            return
        seen.write(True)
        self.unique.inc()
        yield post


class Deduplicate(beam.PTransform):
    """Post -> Post, one per post id and window."""

    def expand(self, posts):
        return (posts
                # A str key gets Beam's deterministic StrUtf8Coder for the state key.
                | "KeyByPostId" >> beam.Map(lambda post: (post.post_id, post)).with_output_types(
                    typing.Tuple[str, typing.Any])
                | "KeepFirstCopy" >> beam.ParDo(_FirstSeen()))
