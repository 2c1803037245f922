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
from typing import Any, NamedTuple, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

from models.contracts import LABELS, ModelSpec
from transforms import language
from transforms.language import UNSUPPORTED_LANGUAGE
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
_LOADED: dict[tuple, Any] = {}  # (handler's cache key, model location) -> model
_LAST_GOOD: dict[str, Any] = {}  # handler's cache key -> the location loaded last
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

    def _location(self):
        return getattr(self._inner, "location", None)

    def load_model(self):
        """The model at the wrapped handler's current location, loaded once per process.

        After a swap (`update_model_path`) the new location loads once and the previous one stays
        cached too (bundles that started before the swap may still ask for it); older ones are
        dropped. When a swapped-in model cannot be loaded, the previous model keeps scoring and
        the error is logged: a broken promotion never stops the job.
        """
        location = self._location()
        key = (self._cache_key, location)
        with _LOADED_LOCK:  # one load per process and location, whatever the threads
            model = _LOADED.get(key)
            if model is not None:
                return model
            try:
                model = self._inner.load_model()
            except Exception as e:  # noqa: BLE001
                previous = _LAST_GOOD.get(self._cache_key)
                if previous is None or previous == location:
                    raise
                _LOG.error("cannot load the model at %s (%s); %s keeps scoring", location,
                           describe_error(e), previous)
                self._inner.update_model_path(previous)
                return _LOADED[(self._cache_key, previous)]
            _LOADED[key] = model
            older = [k for k in _LOADED if k[0] == self._cache_key and k[1] not in (location, _LAST_GOOD.get(self._cache_key))]
            for k in older:
                del _LOADED[k]
            _LAST_GOOD[self._cache_key] = location
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
        # The next load_model loads the new location (once per process; see load_model).
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
    """One model output -> one ScoredPost row; raises ValueError when it is not a valid prediction.

    `spec` is the model.json of the model that scored the post (its version goes in the row).
    """
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
        "skip_reason": None,
    }


def unsupported_row(item: CleanPost, processed_at=None) -> dict:
    """A post in a language no configured model was trained for -> its ScoredPost row: stored and
    counted like any post, but with no label, score or confidence (skip_reason says why)."""
    post = item.post
    return {
        "post_id": post.post_id, "keyword": post.keyword, "lang": post.lang, "author_id": post.author_id,
        "created_at": post.created_at, "text": post.text, "clean_text": item.clean_text,
        "label": None, "score": None, "stars": None, "confidence": None, "token_count": None,
        "oov_count": None, "model_version": None, "processed_at": processed_at or now_utc(),
        "beyond_lateness": bool(post.beyond_lateness), "skip_reason": UNSUPPORTED_LANGUAGE,
    }


class Route(NamedTuple):
    """One model of the job and the posts it takes.

    language: the LANG of `--model LANG=MODEL` ('*': every language no other route takes), or
              None for a plain `--model MODEL` (the languages its model.json declares);
    handler, spec: the model (ModelHandler of str examples, its model.json at launch);
    watch: a file pattern to watch for promotions (a model registry's pointers), or None.
    """

    language: str | None
    handler: Any
    spec: ModelSpec
    watch: str | None = None
    name: str = ""


def route_index(lang: str | None, routes: Sequence[tuple[str | None, tuple | None]]) -> int | None:
    """Which route scores a post in `lang`; None = no model may judge it (unsupported_language).

    `routes`: (language, the model's declared languages) per route, in `--model` order. In order
    of precedence: a route for the post's primary language (`--model hi=DIR`); the first plain
    route whose model declares the language; the '*' route. A post whose language cannot be
    determined ('und', emoji only, ...) goes to the first route: nothing says it is in another
    language.
    """
    if not routes:
        return None
    if language.is_undetermined(lang):
        return 0
    wanted = language.primary(lang)
    for i, (route_lang, _) in enumerate(routes):
        if route_lang not in (None, language.ANY_LANGUAGE) and language.primary(route_lang) == wanted:
            return i
    for i, (route_lang, declared) in enumerate(routes):
        if route_lang is None and language.supports(declared, lang):
            return i
    for i, (route_lang, _) in enumerate(routes):
        if route_lang == language.ANY_LANGUAGE:
            return i
    return None


class LaunchSpecs:
    """model_id -> the ModelSpec (model.json) of the model that scored a post.

    RunInference's predictions carry the `model_id` of the model that made them: the location
    of a contract SavedModel (it changes when the job swaps models) or a checkpoint name. The
    job passes a lookup that reads the model.json at a new location once per process
    (models.handlers.SpecLookup); without one, or when it fails, the route's launch spec is used.
    """

    def __call__(self, model_id: str | None, fallback: ModelSpec) -> ModelSpec:
        return fallback


class _ToScoredRow(beam.DoFn):
    def __init__(self, spec: ModelSpec, spec_for=None, launch_id: str | None = None):
        self.spec = spec
        self.spec_for = spec_for or LaunchSpecs()
        self.launch_id = launch_id
        self.scored = Metrics.counter(NAMESPACE, "scored")
        self.dead = Metrics.counter(NAMESPACE, "dead_letter_score")

    def process(self, keyed: tuple[CleanPost, PredictionResult]):
        item, result = keyed
        try:
            model_id = result.model_id
            spec = self.spec if model_id in (None, "", self.launch_id) else self.spec_for(model_id, self.spec)
            row = scored_row(item, result.inference, spec)
        except Exception as e:  # noqa: BLE001  (one post's output never stops the others)
            self.dead.inc()
            reason = (f"model raised {result.inference.reason}" if isinstance(result.inference, ModelFailure)
                      else f"model output is not a valid prediction: {describe_error(e)}")
            yield beam.pvalue.TaggedOutput("dead_letters", dead_letter(
                "score", reason, item.post.raw, item.post.attributes, message_id=item.post.message_id))
            return
        self.scored.inc()
        yield row


class _Unsupported(beam.DoFn):
    def __init__(self):
        self.scored = Metrics.counter(NAMESPACE, "scored")
        self.unsupported = Metrics.counter(NAMESPACE, "unsupported_language")

    def process(self, item: CleanPost):
        self.scored.inc()  # stored in scored_posts like any post: the balance counts it there
        self.unsupported.inc()
        yield unsupported_row(item)


class ScorePosts(beam.PTransform):
    """CleanPost -> {"scored": ScoredPost rows, "dead_letters": DeadLetter rows}.

    A post the model fails on is found by `IsolateFailures` and becomes a dead letter with
    the exception's type and message; its batch neighbours are scored as usual.

    With several routes (`--model en=bundled --model '*=DIR'`) posts are split by language
    (`route_index`), each route scored by its own RunInference; a post no route takes becomes
    an unsupported_language row (label NULL). `model_metadata` maps a route index to a
    ModelMetadata PCollection (the job's watch of a model registry, connectors/sources/model_watch.py, or
    a test's TestStream) fed to that route's `RunInference(model_metadata_pcoll=...)`: a promotion
    swaps the model without a restart, and every row carries the version of the model that
    scored it (from the prediction's model_id, through `spec_for`).
    """

    def __init__(self, model_handler=None, spec: ModelSpec | None = None, *, routes: Sequence[Route] | None = None,
                 spec_for=None, model_metadata: dict | None = None):
        super().__init__()
        if routes is None:
            if model_handler is None or spec is None:
                raise ValueError("ScorePosts needs a model handler and its spec, or routes")
            routes = [Route(language.ANY_LANGUAGE, model_handler, spec)]
        self.routes = list(routes)
        self.spec_for = spec_for
        self.model_metadata = dict(model_metadata or {})

    def _score(self, posts, i: int, route: Route, prefix: str):
        metadata = self.model_metadata.get(i)
        keyed = posts | f"{prefix}KeyByPost" >> beam.Map(lambda item: (item, item.clean_text))
        handler = KeyedModelHandler(IsolateFailures(route.handler))
        main = keyed | f"{prefix}RunInference" >> RunInference(handler, model_metadata_pcoll=metadata)
        launch_id = getattr(route.handler, "location", None)
        return main | f"{prefix}ToScoredRows" >> beam.ParDo(
            _ToScoredRow(route.spec, self.spec_for, launch_id)).with_outputs("dead_letters", main="scored")

    def expand(self, posts):
        routes = self.routes
        only = routes[0]
        if len(routes) == 1 and (only.language == language.ANY_LANGUAGE or (
                only.language is None and language.supports(getattr(only.spec, "languages", None), "any"))):
            rows = self._score(posts, 0, routes[0], "")
            return {"scored": rows.scored, "dead_letters": rows.dead_letters}
        table = [(r.language, r.spec.languages if hasattr(r.spec, "languages") else None) for r in routes]
        n = len(routes)

        def pick(item, _n):
            index = route_index(item.post.lang, table)
            return n if index is None else index

        parts = posts | "RouteByLanguage" >> beam.Partition(pick, n + 1)
        scored, dead = [], []
        for i, route in enumerate(routes):
            rows = self._score(parts[i], i, route, f"Route{i}" if n > 1 else "")  # one model: the usual names
            scored.append(rows.scored)
            dead.append(rows.dead_letters)
        scored.append(parts[n] | "UnsupportedLanguage" >> beam.ParDo(_Unsupported()))
        return {"scored": tuple(scored) | "AllScored" >> beam.Flatten(),
                "dead_letters": tuple(dead) | "AllScoreDeadLetters" >> beam.Flatten()}


class ReviewQueue(beam.PTransform):
    """ScoredPost rows -> the rows whose confidence is under the threshold, for people to label."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def expand(self, scored):
        threshold = self.threshold
        return scored | "KeepLowConfidence" >> beam.Filter(
            lambda row: row["confidence"] is not None and row["confidence"] < threshold)
