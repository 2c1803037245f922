"""The data contracts and the model contract, in one place.

Both `transforms/` (which builds rows) and `connectors/` (which writes them to Parquet
or BigQuery) need the table shapes, and neither may import the other, so the shapes
live here beside the model contract (see docs/DESIGN.md, "Tables").

Each table is a tuple of `Field(name, type, mode)`; `type` is a BigQuery standard SQL
type name, from which the Parquet (pyarrow) schema is derived in `connectors/`.
`TABLES` holds every table a reader sees; the streaming job writes `JOB_TABLES` (the five of
docs/DESIGN.md) and nothing else. `labels` is written by the review desk (connectors/sinks/labels.py:
append-only, one row per label, a correction is a new row naming the label it corrects) and
`job_metrics` by the launcher (connectors/sinks/job_metrics.py: the job's Beam counters, one
snapshot per run, for the balance read = scored + duplicates + dead letters).

The model contract: a SavedModel whose serving signature takes `text: tf.string [batch]`
and returns `probabilities: float [batch, C]` (optionally also `token_count` and
`oov_count: int [batch]`, the vocabulary-drift signal), shipped with `model.json`
read by `ModelSpec.load`. `ModelSpec.predict` turns one probability row into the
ScoredPost prediction fields the same way for every model:

    >>> spec = ModelSpec(classes=("negative", "neutral", "positive"), class_scores=(-1, 0, 1))
    >>> spec.predict([0.1, 0.2, 0.7])
    Prediction(label='positive', score=0.6, stars=None, confidence=0.7)
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
from typing import NamedTuple, Sequence

LABELS = ("negative", "neutral", "positive")
UTC = dt.timezone.utc


class RawMessage(NamedTuple):
    """A message as a source received it: what `connectors/` hands to `transforms/`."""

    data: bytes
    attributes: dict
    publish_time: float | None = None  # epoch seconds
    watermark: float | None = None  # the source's watermark at arrival; None = processing time
    message_id: str | None = None  # Pub/Sub's message id, or "line N" of a replayed file


# Event time has a sane range: nothing on X predates its first post (2006-03-21), and a post
# cannot be written after the clock by more than the job's --max_future_skew.
MIN_EVENT_TIME = dt.datetime(2006, 3, 21, tzinfo=dt.timezone.utc)
DEFAULT_MAX_FUTURE_SKEW_S = 300.0


def event_time_problem(event_time: float, now: float, max_future_skew_s: float) -> str | None:
    """Why an event time (epoch seconds) cannot be used, or None when it can.

    The reason starts with "in the future" or "out of range", as a dead letter's reason does.
    """
    if not math.isfinite(event_time) or event_time < MIN_EVENT_TIME.timestamp():
        return f"out of range: event time is before {MIN_EVENT_TIME:%Y-%m-%d}, when X began"
    if event_time > now + max_future_skew_s:
        # No clock reading in the reason: a rerun must give the same dead letter (views dedupe on it).
        return (f"in the future: event time is more than {max_future_skew_s:g} s ahead of the clock "
                "(--max_future_skew)")
    return None


def repair_text(value: str) -> str:
    """A str that may hold lone UTF-16 surrogates (a JSON "\\ud83d" escape) -> valid Unicode scalar values.

    Paired surrogates are joined into their character; a lone one becomes U+FFFD.
    """
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def is_valid_text(value: str) -> bool:
    """True when `value` is made of Unicode scalar values only (no lone surrogates)."""
    try:
        value.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def parse_rfc3339(value) -> dt.datetime:
    """RFC 3339 ('2026-11-25T07:47:19.123Z', '+01:00' offsets) -> aware UTC datetime.

    Raises ValueError with a sentence fit for a dead letter's reason.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError("created_at must be an RFC 3339 string")
    text = value.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    shown = ascii(value[:64])  # a reason must be writable and readable whatever the value holds
    if len(text) > 64:
        raise ValueError(f"created_at {shown}... is too long for an RFC 3339 timestamp")
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"created_at {shown} is not an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:
        raise ValueError(f"created_at {shown} has no time zone offset (RFC 3339 requires one)")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"out of range: created_at {shown} lies outside the years 1 to 9999 in UTC") from None


class Field(NamedTuple):
    name: str
    type: str  # BigQuery standard SQL type: STRING, INT64, FLOAT64, BOOL, TIMESTAMP, BYTES
    mode: str = "NULLABLE"  # NULLABLE | REQUIRED | REPEATED
    description: str = ""


SCORED_POSTS = (
    Field("post_id", "STRING", "REQUIRED"),
    Field("keyword", "STRING", "REQUIRED"),
    Field("lang", "STRING", "REQUIRED"),
    Field("author_id", "STRING"),
    Field("created_at", "TIMESTAMP", "REQUIRED", "event time"),
    Field("text", "STRING", "REQUIRED", "raw text as received"),
    Field("clean_text", "STRING", "NULLABLE", "text as the model saw it"),
    Field("label", "STRING", "NULLABLE", "negative|neutral|positive; NULL when not scored (skip_reason)"),
    Field("score", "FLOAT64", "NULLABLE", "[-1, 1]; NULL when not scored"),
    Field("stars", "INT64", "NULLABLE", "1-5 where the model rates stars"),
    Field("confidence", "FLOAT64", "NULLABLE", "max class probability; NULL when not scored"),
    Field("token_count", "INT64"),
    Field("oov_count", "INT64"),
    Field("model_version", "STRING", "NULLABLE", "the version that scored the post; NULL when not scored"),
    Field("processed_at", "TIMESTAMP", "REQUIRED"),
    Field("beyond_lateness", "BOOL", "NULLABLE",
          "arrived after its window's allowed lateness: in no streaming pane, in sentiment_windows_final"),
    Field("skip_reason", "STRING", "NULLABLE",
          "why no model labelled the post (unsupported_language: no model is configured for its lang); "
          "NULL for a scored post"),
)

SENTIMENT_WINDOWS = (
    Field("window_start", "TIMESTAMP", "REQUIRED"),
    Field("window_end", "TIMESTAMP", "REQUIRED"),
    Field("keyword", "STRING", "REQUIRED", "'*' = all keywords"),
    Field("lang", "STRING", "REQUIRED", "'*' = all languages"),
    Field("posts", "INT64", "REQUIRED", "every post in the window (volume), labelled or not"),
    Field("positive", "INT64", "REQUIRED"),
    Field("neutral", "INT64", "REQUIRED"),
    Field("negative", "INT64", "REQUIRED"),
    Field("mean_score", "FLOAT64", "NULLABLE", "over labelled posts; NULL when none"),
    Field("mean_confidence", "FLOAT64", "NULLABLE", "over labelled posts; NULL when none"),
    Field("low_confidence", "INT64", "REQUIRED"),
    Field("oov_rate", "FLOAT64", "NULLABLE", "share of tokens outside the model's vocabulary"),
    Field("unsupported", "INT64", "NULLABLE",
          "posts with a skip_reason (no label): positive + neutral + negative = posts - unsupported; "
          "NULL in panes written before the column existed (read as 0)"),
    Field("pane_index", "INT64", "REQUIRED"),
    Field("pane_timing", "STRING", "REQUIRED", "EARLY|ON_TIME|LATE|UNKNOWN"),
    Field("model_version", "STRING"),
    Field("emitted_at", "TIMESTAMP", "REQUIRED"),
)

ALERTS = (
    Field("window_start", "TIMESTAMP", "REQUIRED"),
    Field("window_end", "TIMESTAMP", "REQUIRED"),
    Field("keyword", "STRING", "REQUIRED"),
    Field("kind", "STRING", "REQUIRED",
          "negative_surge|volume_spike|oov_drift|confidence_drift|class_mix_drift (the job), model_degraded "
          "(connectors/monitoring/accuracy_watch.py)"),
    Field("value", "FLOAT64", "REQUIRED"),
    Field("baseline", "FLOAT64", "REQUIRED"),
    Field("zscore", "FLOAT64", "REQUIRED"),
    Field("sample_post_ids", "STRING", "REPEATED"),
    Field("emitted_at", "TIMESTAMP", "REQUIRED"),
)

REVIEW_QUEUE = SCORED_POSTS  # low-confidence posts, same shape as scored_posts

DEAD_LETTERS = (
    Field("stage", "STRING", "REQUIRED", "parse|window|clean|score|write"),
    Field("reason", "STRING", "REQUIRED"),
    Field("payload", "BYTES", "NULLABLE", "the message exactly as received"),
    Field("attributes", "STRING", "NULLABLE", "JSON object of the message attributes"),
    Field("received_at", "TIMESTAMP", "REQUIRED"),
    Field("message_id", "STRING", "NULLABLE",
          "Pub/Sub message id, or 'line N' of a replayed file: two identical bad messages are two rows"),
)

# What a person may answer at the review desk; "skip" is an answer too (seen, left undecided).
REVIEW_LABELS = (*LABELS, "skip")

LABELS_TABLE = (
    Field("label_id", "STRING", "REQUIRED",
          "the label's id: a digest of (post_id, keyword, reviewer) for a first label, of the label it "
          "corrects for a correction (connectors/sinks/labels.py)"),
    Field("post_id", "STRING", "REQUIRED"),
    Field("keyword", "STRING", "REQUIRED"),
    Field("lang", "STRING", "REQUIRED"),
    Field("text", "STRING", "NULLABLE", "the post's text as the reviewer saw it"),
    Field("label", "STRING", "REQUIRED", "negative|neutral|positive|skip"),
    Field("reviewer", "STRING", "REQUIRED", "who labelled ('*' is reserved for roll-up rows)"),
    Field("labelled_at", "TIMESTAMP", "REQUIRED"),
    Field("model_version", "STRING", "NULLABLE", "the model version that scored the post"),
    Field("model_label", "STRING", "NULLABLE", "the model's label of the post: negative|neutral|positive"),
    Field("corrects", "STRING", "NULLABLE", "the label_id this label corrects; NULL for a first label"),
)

JOB_METRICS = (
    Field("run_id", "STRING", "REQUIRED"),
    Field("started_at", "TIMESTAMP", "REQUIRED"),
    Field("updated_at", "TIMESTAMP", "REQUIRED", "when these counts were read"),
    Field("state", "STRING", "REQUIRED", "the runner's state, e.g. RUNNING, DONE, CANCELLED, FAILED"),
    Field("read", "INT64", "REQUIRED", "messages read"),
    Field("scored", "INT64", "REQUIRED", "posts scored"),
    Field("duplicates", "INT64", "REQUIRED", "messages dropped as duplicates of a (post_id, keyword)"),
    Field("dead_letters", "INT64", "REQUIRED", "dead letters, all stages"),
    Field("stored_scored", "INT64", "NULLABLE", "scored_posts rows the Parquet writer put in place"),
    Field("stored_dead_letters", "INT64", "NULLABLE", "dead_letters rows the Parquet writer put in place"),
    Field("input", "STRING", "NULLABLE", "the job's --input"),
)

# The tables the streaming job writes: its sinks (connectors/sinks/parquet.py, connectors/sinks/bigquery.py)
# take these and no others.
JOB_TABLES = ("scored_posts", "sentiment_windows", "alerts", "review_queue", "dead_letters")

# Every table a reader sees (DuckDB views, BigQuery tables created by ensure_tables): the job's
# five, the review desk's labels (connectors/sinks/labels.py) and the launcher's counter snapshots
# (connectors/sinks/job_metrics.py).
TABLES = {
    "scored_posts": SCORED_POSTS,
    "sentiment_windows": SENTIMENT_WINDOWS,
    "alerts": ALERTS,
    "review_queue": REVIEW_QUEUE,
    "dead_letters": DEAD_LETTERS,
    "labels": LABELS_TABLE,
    "job_metrics": JOB_METRICS,
}

# The time column each table is partitioned on (BigQuery): event time for the job's tables.
# Tables with a `keyword` column are also clustered by it.
PARTITION_COLUMN = {
    "scored_posts": "created_at",
    "sentiment_windows": "window_start",
    "alerts": "window_start",
    "review_queue": "created_at",
    "dead_letters": "received_at",
    "labels": "labelled_at",
    "job_metrics": "started_at",
}


class Prediction(NamedTuple):
    label: str
    score: float
    stars: int | None
    confidence: float


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What `model.json` says about a model's outputs (the model contract).

    `class_scores[i]` is the score in [-1, 1] of class i; the post's score is the
    expectation under the softmax. With `class_stars` (star-rating models) the
    stars are argmax + their offset and the label comes from the score, cut at
    `label_cuts`; otherwise the label is the class name of the argmax class
    mapped through `class_labels`.
    """

    classes: tuple[str, ...] = LABELS
    class_scores: tuple[float, ...] = (-1.0, 0.0, 1.0)
    class_labels: tuple[str, ...] | None = None
    class_stars: tuple[int, ...] | None = None
    label_cuts: tuple[float, float] = (-0.25, 0.25)
    version: str = "unversioned"
    name: str = "model"
    vocab_size: int | None = None
    max_length: int | None = None
    # The languages the model was trained for (primary subtags, e.g. ("en",)); None (model.json
    # without "languages") or "*" among them: any language (transforms/language.supports).
    languages: tuple[str, ...] | None = None
    extra: dict = dataclasses.field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        n = len(self.classes)
        if n < 2:
            raise ValueError("a model needs at least two classes")
        if len(self.class_scores) != n:
            raise ValueError(f"class_scores has {len(self.class_scores)} entries for {n} classes")
        if any(not -1.0 <= s <= 1.0 for s in self.class_scores):
            raise ValueError("class_scores must lie in [-1, 1]")
        labels = self.class_labels or self.classes
        if len(labels) != n or any(lab not in LABELS for lab in labels):
            raise ValueError(f"class_labels must map each class to one of {LABELS}")
        if self.class_stars is not None and len(self.class_stars) != n:
            raise ValueError("class_stars must have one entry per class")
        if isinstance(self.languages, str):  # "languages": "*" in model.json
            object.__setattr__(self, "languages", (self.languages,))
        if self.languages is not None:
            if (not isinstance(self.languages, tuple) or not self.languages
                    or any(not isinstance(code, str) or not code.strip() for code in self.languages)):
                raise ValueError('languages must be a non-empty list of language codes such as ["en"] '
                                 '(or "*" for any language)')
            object.__setattr__(self, "languages", tuple(code.strip().lower() for code in self.languages))

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.class_labels or self.classes)

    def predict(self, probabilities: Sequence[float]) -> Prediction:
        """One row of class probabilities -> label, score, stars, confidence."""
        probs = [float(p) for p in probabilities]
        if len(probs) != len(self.classes):
            raise ValueError(f"expected {len(self.classes)} probabilities, got {len(probs)}")
        if any(math.isnan(p) or p < -1e-6 for p in probs):
            raise ValueError(f"invalid probabilities {probs}")
        total = sum(probs)
        if not total > 0:
            raise ValueError("probabilities sum to zero")
        probs = [p / total for p in probs]
        best = max(range(len(probs)), key=probs.__getitem__)
        score = sum(p * s for p, s in zip(probs, self.class_scores))
        score = min(1.0, max(-1.0, score))
        if self.class_stars is not None:
            stars = int(self.class_stars[best])
            label = label_for_score(score, self.label_cuts)
        else:
            stars = None
            label = self.labels[best]
        return Prediction(label, round(score, 6), stars, round(probs[best], 6))

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {}
        for key in known:
            if key in d and d[key] is not None:
                value = d[key]
                kwargs[key] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs, extra={k: v for k, v in d.items() if k not in known})

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        d.update(self.extra)
        return d

    @classmethod
    def load(cls, model_dir: str) -> "ModelSpec":
        path = os.path.join(model_dir, "model.json")
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    @classmethod
    def for_stars(cls, n_stars: int = 5, **kwargs) -> "ModelSpec":
        """A star-rating model (e.g. nlptown's 5 classes '1 star' .. '5 stars')."""
        stars = tuple(range(1, n_stars + 1))
        mid = (n_stars + 1) / 2
        scores = tuple((s - mid) / (mid - 1) for s in stars)
        labels = tuple(label_for_score(s, kwargs.get("label_cuts", (-0.25, 0.25))) for s in scores)
        kwargs.setdefault("classes", tuple(f"{s} star{'s' if s > 1 else ''}" for s in stars))
        return cls(class_scores=scores, class_labels=labels, class_stars=stars, **kwargs)


def label_for_score(score: float, cuts: Sequence[float] = (-0.25, 0.25)) -> str:
    """negative below cuts[0], positive above cuts[1], neutral between (inclusive)."""
    low, high = cuts
    if score < low:
        return "negative"
    if score > high:
        return "positive"
    return "neutral"
