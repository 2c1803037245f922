"""Score: RunInference behind the model contract, and the ScoredPost rows it yields.

    CleanPost -> ScoredPost row (dict, models.contracts.SCORED_POSTS)
              -> DeadLetter row, stage "score" (a post the model raises on by itself, or
                 an output that is not a valid prediction)

The model handler comes from `models.handlers.create_model_handler` (the pipeline
passes it in): its examples are cleaned texts and its inferences are
`{"probabilities": [C], "token_count": int|None, "oov_count": int|None}`. The
`ModelSpec` maps probabilities to label, score, stars and confidence the same way for
the bundled model and for Hugging Face checkpoints. Batching (min/max batch size,
max batch duration) is the handler's, so it is tuned where the hardware is known.
"""
from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

from models.contracts import LABELS, ModelSpec
from transforms.parse import NAMESPACE, describe_error
from transforms.records import CleanPost, dead_letter, now_utc

_LOG = logging.getLogger(__name__)

# Exceptions that say "try again" rather than "this input is bad": out of memory on the
# host or the accelerator, a device or a remote model that is briefly unavailable.
TRANSIENT_ERRORS = frozenset({"MemoryError", "ResourceExhaustedError", "UnavailableError",
                              "DeadlineExceededError", "AbortedError", "InternalError",
                              "OutOfMemoryError", "ConnectionError", "TimeoutError"})


def is_transient(error: BaseException) -> bool:
    """True for errors worth retrying the same batch for (judged by class name, no TF import)."""
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & TRANSIENT_ERRORS) or "out of memory" in str(error).lower()


class ModelFailure(NamedTuple):
    """The inference of a post the model raised on when scored alone: why, in one line."""

    reason: str


# Loaded models by handler, for the life of the worker process (see IsolateFailures.load_model).
_LOADED: dict[str, Any] = {}
_LOADED_LOCK = threading.Lock()


class IsolateFailures(ModelHandler):
    """Wraps a ModelHandler so that one bad post costs only itself.

    A batch that raises is retried (with backoff) while the error is transient; a
    deterministic error splits the batch in halves until the posts that fail alone are
    found. Those get a `ModelFailure` inference (a dead letter downstream), the others
    their predictions, in input order. A transient error that outlasts the retries is
    raised: the runner retries the bundle, and no valid post becomes a dead letter.

    Beam's `RunInference.with_exception_handling` dead-letters whole batches; nothing in
    Beam bisects, hence this small wrapper (every other method delegates).

    It also keeps the loaded model for the life of the worker process. RunInference holds
    its model through `apache_beam.utils.shared`, which keeps only the most recently
    acquired object of the process alive; on the DirectRunner, which sets a DoFn up for
    every bundle, the model was then loaded again for most bundles (measured: 69 % of the
    sample replay's time in `load_model`, 596 s instead of 140 s).
    """

    def __init__(self, inner: ModelHandler, retries: int = 3, backoff_s: float = 0.5):
        super().__init__()
        self._inner = inner
        self._retries = retries
        self._backoff_s = backoff_s
        self._env_vars = getattr(inner, "_env_vars", {})
        self._cache_key = uuid.uuid4().hex  # travels with the pickled handler to every worker

    def load_model(self):
        with _LOADED_LOCK:  # one load per process, whatever the threads
            model = _LOADED.get(self._cache_key)
            if model is None:
                model = self._inner.load_model()
                _LOADED[self._cache_key] = model
        return model

    def run_inference(self, batch, model, inference_args=None):
        return self._isolate(list(batch), model, inference_args)

    def _attempt(self, batch, model, inference_args):
        for attempt in range(self._retries + 1):
            try:
                results = list(self._inner.run_inference(batch, model, inference_args))
                if len(results) != len(batch):
                    raise ValueError(f"model returned {len(results)} results for {len(batch)} posts")
                return results
            except Exception as e:  # noqa: BLE001
                if not is_transient(e) or attempt == self._retries:
                    raise
                delay = self._backoff_s * 2 ** attempt
                _LOG.warning("model batch of %d raised %s; retrying in %.1f s (%d/%d)",
                             len(batch), describe_error(e), delay, attempt + 1, self._retries)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _isolate(self, batch, model, inference_args):
        try:
            return self._attempt(batch, model, inference_args)
        except Exception as e:  # noqa: BLE001
            if is_transient(e):
                raise
            if len(batch) == 1:
                return [PredictionResult(batch[0], ModelFailure(describe_error(e)))]
        mid = len(batch) // 2
        return (self._isolate(batch[:mid], model, inference_args)
                + self._isolate(batch[mid:], model, inference_args))

    # Everything else is the wrapped handler's.
    def get_num_bytes(self, batch):
        return self._inner.get_num_bytes(batch)

    def get_metrics_namespace(self):
        return self._inner.get_metrics_namespace()

    def get_resource_hints(self):
        return self._inner.get_resource_hints()

    def batch_elements_kwargs(self):
        return self._inner.batch_elements_kwargs()

    def validate_inference_args(self, inference_args):
        return self._inner.validate_inference_args(inference_args)

    def update_model_path(self, model_path=None):
        with _LOADED_LOCK:  # a new model: the next load_model loads it
            _LOADED.pop(self._cache_key, None)
        return self._inner.update_model_path(model_path=model_path)

    def get_preprocess_fns(self):
        return self._inner.get_preprocess_fns()

    def get_postprocess_fns(self):
        return self._inner.get_postprocess_fns()

    def should_skip_batching(self):
        return self._inner.should_skip_batching()

    def share_model_across_processes(self):
        return self._inner.share_model_across_processes()

    def model_copies(self):
        return self._inner.model_copies()

    def override_metrics(self, metrics_namespace=""):
        return self._inner.override_metrics(metrics_namespace)

    def should_garbage_collect_on_timeout(self):
        return self._inner.should_garbage_collect_on_timeout()


def _count(value, name: str) -> int | None:
    if value is None:
        return None
    number = int(value)
    if number < 0 or number > 2**31:
        raise ValueError(f"{name} {number} is out of range")
    return number


def scored_row(item: CleanPost, inference: Any, spec: ModelSpec, processed_at=None) -> dict:
    """One model output -> one ScoredPost row; raises ValueError when it is not a valid prediction."""
    if isinstance(inference, ModelFailure):
        raise ValueError(inference.reason)
    prediction = spec.predict(inference["probabilities"])
    if prediction.label not in LABELS or not -1.0 <= prediction.score <= 1.0 \
            or not 0.0 <= prediction.confidence <= 1.0 or not math.isfinite(prediction.score):
        raise ValueError(f"prediction out of range: {prediction}")
    post = item.post
    tokens = _count(inference.get("token_count"), "token_count")
    oov = _count(inference.get("oov_count"), "oov_count")
    if tokens is not None and oov is not None and oov > tokens:
        raise ValueError(f"oov_count {oov} exceeds token_count {tokens}")
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
        "token_count": tokens,
        "oov_count": oov,
        "model_version": spec.version,
        "processed_at": processed_at or now_utc(),
        "beyond_lateness": bool(post.beyond_lateness),
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
        except Exception as e:  # noqa: BLE001  (one post's output never stops the others)
            self.dead.inc()
            reason = (f"model raised {result.inference.reason}" if isinstance(result.inference, ModelFailure)
                      else f"model output is not a valid prediction: {describe_error(e)}")
            yield beam.pvalue.TaggedOutput("dead_letters", dead_letter(
                "score", reason, item.post.raw, item.post.attributes, message_id=item.post.message_id))
            return
        self.scored.inc()
        yield row


class ScorePosts(beam.PTransform):
    """CleanPost -> {"scored": ScoredPost rows, "dead_letters": DeadLetter rows}.

    A post the model fails on is found by `IsolateFailures` and becomes a dead letter with
    the exception's type and message; its batch neighbours are scored as usual.
    """

    def __init__(self, model_handler, spec: ModelSpec):
        super().__init__()
        self.model_handler = model_handler
        self.spec = spec

    def expand(self, posts):
        keyed = posts | "KeyByPost" >> beam.Map(lambda item: (item, item.clean_text))
        main = keyed | "RunInference" >> RunInference(KeyedModelHandler(IsolateFailures(self.model_handler)))
        rows = main | "ToScoredRows" >> beam.ParDo(_ToScoredRow(self.spec)).with_outputs(
            "dead_letters", main="scored")
        return {"scored": rows.scored, "dead_letters": rows.dead_letters}


class ReviewQueue(beam.PTransform):
    """ScoredPost rows -> the rows whose confidence is under the threshold, for people to label."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def expand(self, scored):
        threshold = self.threshold
        return scored | "KeepLowConfidence" >> beam.Filter(lambda row: row["confidence"] < threshold)
