"""Score: RunInference behind the model contract, and the ScoredPost rows it yields.

    CleanPost -> ScoredPost row (dict, models.contracts.SCORED_POSTS)
              -> DeadLetter row, stage "score" (a batch the model raised on, or outputs
                 that are not probabilities)

The model handler comes from `models.handlers.create_model_handler` (the pipeline
passes it in): its examples are cleaned texts and its inferences are
`{"probabilities": [C], "token_count": int|None, "oov_count": int|None}`. The
`ModelSpec` maps probabilities to label, score, stars and confidence the same way for
the bundled model and for Hugging Face checkpoints. Batching (min/max batch size,
max batch duration) is the handler's, so it is tuned where the hardware is known.
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference

from models.contracts import ModelSpec
from transforms.parse import NAMESPACE
from transforms.records import CleanPost, dead_letter, now_utc


def scored_row(item: CleanPost, inference: dict, spec: ModelSpec, processed_at=None) -> dict:
    """One model output -> one ScoredPost row (raises ValueError on invalid probabilities)."""
    prediction = spec.predict(inference["probabilities"])
    post = item.post
    tokens = inference.get("token_count")
    oov = inference.get("oov_count")
    return {
        "post_id": post.post_id,
        "keyword": post.keyword,
        "lang": post.lang,
        "author_id": post.author_id,
        "created_at": post.created_at,
        "text": post.text,
        "clean_text": item.clean_text,
        "label": prediction.label,
        "score": prediction.score,
        "stars": prediction.stars,
        "confidence": prediction.confidence,
        "token_count": None if tokens is None else int(tokens),
        "oov_count": None if oov is None else int(oov),
        "model_version": spec.version,
        "processed_at": processed_at or now_utc(),
    }


class _ToScoredRow(beam.DoFn):
    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.scored = Metrics.counter(NAMESPACE, "scored")
        self.dead = Metrics.counter(NAMESPACE, "dead_letter_score")

    def process(self, keyed: tuple[CleanPost, PredictionResult]):
        item, result = keyed
        try:
            row = scored_row(item, result.inference, self.spec)
        except (ValueError, KeyError, TypeError) as e:
            self.dead.inc()
            yield beam.pvalue.TaggedOutput("dead_letters", dead_letter(
                "score", f"model output is not a valid prediction: {e}", item.post.raw, item.post.attributes))
            return
        self.scored.inc()
        yield row


class _FailedBatchToDeadLetters(beam.DoFn):
    def __init__(self):
        self.dead = Metrics.counter(NAMESPACE, "dead_letter_score")

    def process(self, failed):
        batch, error = failed
        reason = f"model raised {type(error).__name__}: {error}"[:2000]
        for item, _text in batch:
            self.dead.inc()
            yield dead_letter("score", reason, item.post.raw, item.post.attributes)


class ScorePosts(beam.PTransform):
    """CleanPost -> {"scored": ScoredPost rows, "dead_letters": DeadLetter rows}."""

    def __init__(self, model_handler, spec: ModelSpec):
        super().__init__()
        self.model_handler = model_handler
        self.spec = spec

    def expand(self, posts):
        keyed = posts | "KeyByPost" >> beam.Map(lambda item: (item, item.clean_text))
        main, failed = keyed | "RunInference" >> RunInference(
            KeyedModelHandler(self.model_handler)).with_exception_handling()
        rows = main | "ToScoredRows" >> beam.ParDo(_ToScoredRow(self.spec)).with_outputs(
            "dead_letters", main="scored")
        failed_rows = failed.failed_inferences | "FailedBatchesToDeadLetters" >> beam.ParDo(
            _FailedBatchToDeadLetters())
        dead = (rows.dead_letters, failed_rows) | "FlattenScoreDeadLetters" >> beam.Flatten()
        return {"scored": rows.scored, "dead_letters": dead}


class ReviewQueue(beam.PTransform):
    """ScoredPost rows -> the rows whose confidence is under the threshold, for people to label."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def expand(self, scored):
        threshold = self.threshold
        return scored | "KeepLowConfidence" >> beam.Filter(lambda row: row["confidence"] < threshold)
