"""Deduplicate: drop repeated posts by (post id, keyword), counting each duplicate.

    Post (windowed) -> Post (the first copy of each (id, keyword) in its window)

Pub/Sub delivers at least once and the X API connector may see a post twice. A post
collected for two keywords is published once per keyword and counts once for each:
it is the pair that is unique, as scored_posts' key is. On Dataflow the read also
passes the `post_key` attribute (id and keyword) as `id_label`, but Beam's Python
DirectRunner rejects `id_label`, so the job de-duplicates itself with a stateful DoFn.
Its state is one boolean per (post id, keyword, window) and Beam clears it when the window expires
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


def dedup_key(post: Post) -> str:
    """(post id, keyword) as one str; neither can hold a control character (ParsePosts checks)."""
    return f"{post.post_id}\x1f{post.keyword}"


class Deduplicate(beam.PTransform):
    """Post -> Post, one per (post id, keyword) and window."""

    def expand(self, posts):
        return (posts
                # A str key gets Beam's deterministic StrUtf8Coder for the state key.
                | "KeyByPostIdAndKeyword" >> beam.Map(lambda post: (dedup_key(post), post)).with_output_types(
                    typing.Tuple[str, typing.Any])
                | "KeepFirstCopy" >> beam.ParDo(_FirstSeen()))
