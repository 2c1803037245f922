"""Clean: normalise social text for the model, keeping the raw text for output.

    Post -> CleanPost(post, clean_text)

The normalisation itself (`models.textnorm.normalize`) belongs to the model contract,
so the bundled model was trained on exactly what this step serves it. A post whose
text normalises to nothing (only control characters, say) is a dead letter, since a
model score of nothing would be a made-up number.
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from models.textnorm import normalize
from transforms.parse import NAMESPACE, describe_error
from transforms.records import CleanPost, Post, dead_letter


def clean_text(text: str) -> str:
    return normalize(text)


class _CleanDoFn(beam.DoFn):
    def __init__(self):
        self.dead = Metrics.counter(NAMESPACE, "dead_letter_clean")

    def process(self, post: Post):
        try:
            cleaned = clean_text(post.text)
        except Exception as e:  # noqa: BLE001  (one post's text never stops the others)
            self.dead.inc()
            yield beam.pvalue.TaggedOutput("dead_letters", dead_letter(
                "clean", f"normalisation failed: {describe_error(e)}", post.raw, post.attributes,
                message_id=post.message_id))
            return
        if not cleaned:
            self.dead.inc()
            yield beam.pvalue.TaggedOutput("dead_letters", dead_letter(
                "clean", "text is empty after normalisation", post.raw, post.attributes,
                message_id=post.message_id))
            return
        yield CleanPost(post, cleaned)


class Clean(beam.PTransform):
    """Post -> {"posts": CleanPost, "dead_letters": DeadLetter rows}."""

    def expand(self, posts):
        results = posts | "NormaliseText" >> beam.ParDo(_CleanDoFn()).with_outputs(
            "dead_letters", main="posts")
        return {"posts": results.posts, "dead_letters": results.dead_letters}
