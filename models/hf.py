"""The Hugging Face BERT path: a TF sequence classifier + its WordPiece tokenizer as a Beam model handler.

    TF_USE_LEGACY_KERAS=1 python -m models.handlers path/to/checkpoint "great phone, 5 stars"
    TF_USE_LEGACY_KERAS=1 python -m models.handlers hf:nlptown/bert-base-multilingual-uncased-sentiment "..."

`create_hf_handler(name_or_path)` -> (`BertModelHandler`, `ModelSpec`). The handler's examples
are `str` (cleaned post text); `run_inference` yields, in input order,
`PredictionResult(example=text, inference={"probabilities": float32 [C], "token_count": int,
"oov_count": int})`, where token_count counts WordPiece tokens without special tokens and
BEFORE truncation at max_length (so the drift signal sees the whole post) and oov_count counts
the [UNK] tokens among them.

Why a handler of our own rather than Beam's `HuggingFaceModelHandlerTensor(framework='tf')`:
that handler takes already-tokenised, equal-length tensors and stacks them, so tokenising and
padding would happen upstream at a fixed length, per element, and the [UNK]/token counts would
be lost. Here a batch from Beam is tokenised at once (the Rust tokenizer), sorted by length,
grouped into length buckets (TOKEN_BUCKETS) and cut into sub-batches under a token budget
(rows x width), each padded only to its own longest post, run through one `tf.function` traced for `[None, None]` inputs (no retracing
per width), soft-maxed, and put back in input order. Beam's length-aware batching
(`batch_length_fn`, Beam 2.77) groups posts of similar length across bundles when
`max_batch_duration_secs` is set (the streaming path).

Class layouts (from the checkpoint's `config.id2label`), softmax always, never a sigmoid:
- "1 star" .. "N stars" -> `ModelSpec.for_stars(N)`: stars = argmax + 1, score = expected stars
  rescaled to [-1, 1], label from the score;
- 2 or 3 classes named negative/neutral/positive (or neg/neu/pos, any case) -> those labels;
- 2 or 3 classes named LABEL_0.. (no names given): the common convention of sentiment
  checkpoints, LABEL_0 = negative, LABEL_1 = positive (SST-2) or LABEL_0/1/2 = negative/
  neutral/positive (cardiffnlp twitter-roberta-sentiment).
"""
from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import os
import re
import tempfile
from typing import Any, Iterable, NamedTuple, Optional, Sequence

import models  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from models import locations
from models.contracts import ModelSpec
from models.serving import as_text, configure_devices, text_length  # noqa: F401  (configure_devices: hf.configure_devices)

DEFAULT_MAX_LENGTH = 256
# A sub-batch holds at most this many padded tokens (rows x width): about 64 tweets of 64
# tokens. Attention cost grows with width squared, so long posts go in short sub-batches.
DEFAULT_MAX_BATCH_TOKENS = 4096
DEFAULT_MAX_ROWS = 128
# Beam-level buckets in characters (a WordPiece token is about 4 characters of English).
CHAR_BUCKETS = [32, 64, 128, 256, 512]
# Sub-batch length buckets in tokens (upper bounds, inclusive): a sub-batch holds posts of one bucket.
TOKEN_BUCKETS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
SCORE_OF_LABEL = {"negative": -1.0, "neutral": 0.0, "positive": 1.0}
_SYNONYMS = {"neg": "negative", "negative": "negative", "neu": "neutral", "neutral": "neutral",
             "pos": "positive", "positive": "positive"}
_LABEL_N = {2: ("negative", "positive"), 3: ("negative", "neutral", "positive")}
_STARS = re.compile(r"^\s*(\d+)\s*stars?\s*$", re.IGNORECASE)


# ---- the output mapping -------------------------------------------------------------------

def spec_from_id2label(id2label: dict, *, version: str, name: str, max_length: int | None = None) -> ModelSpec:
    """A checkpoint's `id2label` -> the ModelSpec mapping its probabilities (see module docstring).

    Raises ValueError for a layout this project cannot map to negative/neutral/positive.
    """
    try:
        names = [str(id2label[i]) for i in range(len(id2label))]
    except KeyError:
        names = [str(id2label[str(i)]) for i in range(len(id2label))]
    n = len(names)
    stars = [_STARS.match(label) for label in names]
    if n >= 2 and all(stars) and [int(m.group(1)) for m in stars] == list(range(1, n + 1)):
        return ModelSpec.for_stars(n, classes=tuple(names), version=version, name=name, max_length=max_length)
    if n not in _LABEL_N:
        raise ValueError(f"cannot map {n} classes {names} to negative/neutral/positive "
                         f"(expected 'N stars' classes, or 2-3 sentiment classes)")
    if all(re.fullmatch(r"LABEL_\d+", label) for label in names):
        labels = _LABEL_N[n]
    else:
        labels = tuple(_SYNONYMS.get(label.strip().lower(), "") for label in names)
        if "" in labels or len(set(labels)) != n:
            raise ValueError(f"cannot map classes {names} to negative/neutral/positive")
    return ModelSpec(classes=tuple(names), class_labels=labels,
                     class_scores=tuple(SCORE_OF_LABEL[label] for label in labels),
                     version=version, name=name, max_length=max_length)


def checkpoint_version(name_or_path: str, config, config_bytes: bytes | None = None) -> str:
    """A stable model_version: 'hf:<name>@<hub commit or sha256 of config.json, 12 hex>'.

    A directory (local, or remote with its config.json's bytes given) is named by its last part.
    """
    commit = getattr(config, "_commit_hash", None)
    if config_bytes is None and os.path.isdir(name_or_path):
        with open(os.path.join(name_or_path, "config.json"), "rb") as f:
            config_bytes = f.read()
    if config_bytes is not None:
        name = os.path.basename(os.path.normpath(name_or_path.rstrip("/")))
        return f"hf:{name}@{hashlib.sha256(config_bytes).hexdigest()[:12]}"
    if commit:
        return f"hf:{name_or_path}@{commit[:12]}"
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    return f"hf:{name_or_path}@{digest}"


def softmax(logits: np.ndarray) -> np.ndarray:
    """float [rows, C] logits -> float32 [rows, C] probabilities (numerically stable)."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return (z / z.sum(axis=-1, keepdims=True)).astype(np.float32)


# ---- length-aware batching ----------------------------------------------------------------

def plan_sub_batches(lengths: Sequence[int], max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                     max_rows: int = DEFAULT_MAX_ROWS,
                     buckets: Sequence[int] = TOKEN_BUCKETS) -> list[list[int]]:
    """Sequence lengths -> sub-batches of input indices, each sorted by length.

    Indices are sorted by length (stable) and grouped by length bucket (a sub-batch never spans
    two of `buckets`' ranges, so its padding stays under about half), then cut greedily so that
    rows x longest <= max_batch_tokens and rows <= max_rows. Every index appears exactly once;
    a single post longer than the budget gets a sub-batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    current_bucket = None
    for i in order:
        width = max(int(lengths[i]), 1)  # lengths are ascending: i is the longest so far
        bucket = bisect.bisect_left(buckets, width)
        if current and (bucket != current_bucket or (len(current) + 1) * width > max_batch_tokens
                        or len(current) >= max_rows):
            batches.append(current)
            current = []
        current.append(i)
        current_bucket = bucket
    if current:
        batches.append(current)
    return batches


class Encoded(NamedTuple):
    """A batch of texts, tokenised once: model-ready ids (special tokens added, truncated) and counts."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    token_counts: list[int]
    oov_counts: list[int]


def encode(tokenizer, texts: Sequence[str], max_length: int = DEFAULT_MAX_LENGTH) -> Encoded:
    """Texts -> Encoded: one tokenizer pass; counts before truncation, ids truncated to max_length."""
    pieces = tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    unk = tokenizer.unk_token_id
    keep = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    if keep < 1:
        raise ValueError(f"max_length {max_length} leaves no room for tokens")
    ids, types = [], []
    want_types = "token_type_ids" in tokenizer.model_input_names
    for row in pieces:
        row = row[:keep]
        ids.append(tokenizer.build_inputs_with_special_tokens(row))
        if want_types:
            types.append(tokenizer.create_token_type_ids_from_sequences(row))
    return Encoded(ids, types if want_types else None, [len(p) for p in pieces],
                   [sum(1 for t in p if t == unk) for p in pieces])


def pad_sub_batch(tokenizer, encoded: Encoded, indices: Sequence[int],
                  pad_to_multiple_of: int | None = None) -> dict[str, np.ndarray]:
    """Rows `indices` of `encoded` -> int32 arrays [rows, longest row] (the tokenizer's own padding)."""
    features = {"input_ids": [encoded.input_ids[i] for i in indices]}
    if encoded.token_type_ids is not None:
        features["token_type_ids"] = [encoded.token_type_ids[i] for i in indices]
    padded = tokenizer.pad(features, padding="longest", pad_to_multiple_of=pad_to_multiple_of,
                           return_attention_mask=True, return_tensors="np")
    return {k: v.astype(np.int32) for k, v in padded.items() if k in tokenizer.model_input_names}


# ---- the loaded model and the handler -----------------------------------------------------

class BertRunner:
    """A loaded tokenizer + TF classifier: texts -> PredictionResults (what load_model returns)."""

    def __init__(self, tokenizer, model, *, max_length: int, max_batch_tokens: int, max_rows: int,
                 device: str, pad_to_multiple_of: int | None = None):
        import tensorflow as tf

        self.tokenizer, self.model, self.device = tokenizer, model, device
        self.max_length, self.max_batch_tokens, self.max_rows = max_length, max_batch_tokens, max_rows
        self.pad_to_multiple_of = pad_to_multiple_of
        self.input_names = [n for n in ("input_ids", "token_type_ids", "attention_mask")
                            if n in tokenizer.model_input_names]
        spec = {n: tf.TensorSpec([None, None], tf.int32, name=n) for n in self.input_names}

        # One trace for every batch shape; the softmax runs in the graph, beside the logits.
        @tf.function(input_signature=[spec])
        def probabilities(inputs):
            return tf.nn.softmax(self.model(inputs, training=False).logits, axis=-1)

        self._probabilities = probabilities
        self.last_shapes: list[tuple[int, int]] = []  # padded [rows, width] per sub-batch of the last call

    @classmethod
    def load(cls, name_or_path: str, *, max_length: int = DEFAULT_MAX_LENGTH,
             max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, max_rows: int = DEFAULT_MAX_ROWS,
             local_files_only: bool | None = None) -> "BertRunner":
        import tensorflow as tf
        from transformers import AutoTokenizer, TFAutoModelForSequenceClassification

        local = os.path.isdir(name_or_path) if local_files_only is None else local_files_only
        device = configure_devices()
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local)
        # pad() on ids we already tokenised is the point (one tokenizer pass); silence the advice
        # to call the tokenizer again instead.
        tokenizer.deprecation_warnings["Asking-to-pad-a-fast-tokenizer"] = True
        with tf.device(device):
            model = TFAutoModelForSequenceClassification.from_pretrained(name_or_path, local_files_only=local)
        # Tensor cores want widths in multiples of 8; on a CPU every pad token is wasted work.
        multiple = 8 if device.startswith("/GPU") else None
        return cls(tokenizer, model, max_length=max_length, max_batch_tokens=max_batch_tokens,
                   max_rows=max_rows, device=device, pad_to_multiple_of=multiple)

    def probabilities(self, texts: Sequence[str]) -> tuple[np.ndarray, Encoded]:
        """Texts -> (float32 [len(texts), C] in input order, their Encoded)."""
        import tensorflow as tf

        encoded = encode(self.tokenizer, texts, self.max_length)
        lengths = [len(ids) for ids in encoded.input_ids]
        out = np.zeros((len(texts), self.model.config.num_labels), dtype=np.float32)
        self.last_shapes = []
        for indices in plan_sub_batches(lengths, self.max_batch_tokens, self.max_rows):
            inputs = pad_sub_batch(self.tokenizer, encoded, indices, self.pad_to_multiple_of)
            self.last_shapes.append(tuple(inputs["input_ids"].shape))
            with tf.device(self.device):
                out[indices] = self._probabilities(inputs).numpy()
        return out, encoded

    def predict(self, texts: Sequence[str], model_id: str | None = None) -> list[PredictionResult]:
        if not texts:
            return []
        probs, encoded = self.probabilities(texts)
        return [PredictionResult(example=text, inference={"probabilities": probs[i],
                                                          "token_count": encoded.token_counts[i],
                                                          "oov_count": encoded.oov_counts[i]},
                                 model_id=model_id)
                for i, text in enumerate(texts)]


class BertModelHandler(ModelHandler[str, PredictionResult, BertRunner]):
    """Beam ModelHandler: `str` examples -> PredictionResult (see module docstring).

    Holds only the checkpoint location and settings, so it pickles to workers; the tokenizer
    and model load once per worker process in `load_model()`.
    """

    def __init__(self, name_or_path: str, *, max_length: int = DEFAULT_MAX_LENGTH,
                 max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, max_rows: int = DEFAULT_MAX_ROWS,
                 min_batch_size: int | None = None, max_batch_size: int | None = None,
                 max_batch_duration_secs: float | None = None, large_model: bool = False,
                 model_copies: int | None = None):
        bucketed = max_batch_duration_secs is not None
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size,
                         max_batch_duration_secs=max_batch_duration_secs,
                         batch_length_fn=text_length if bucketed else None,
                         batch_bucket_boundaries=CHAR_BUCKETS if bucketed else None,
                         large_model=large_model, model_copies=model_copies)
        self.name_or_path = name_or_path
        self.max_length = max_length
        self.max_batch_tokens = max_batch_tokens
        self.max_rows = max_rows

    def load_model(self) -> BertRunner:
        # A gs:// checkpoint is copied to this machine first; a hub name or local directory is used as is.
        return BertRunner.load(locations.local_dir(self.name_or_path), max_length=self.max_length,
                               max_batch_tokens=self.max_batch_tokens, max_rows=self.max_rows)

    def run_inference(self, batch: Sequence[str], model: BertRunner,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[PredictionResult]:
        return model.predict([as_text(x) for x in batch], model_id=self.name_or_path)

    def validate_inference_args(self, inference_args: Optional[dict[str, Any]]):
        if inference_args:
            raise ValueError("the BERT handler takes no inference_args")

    def get_metrics_namespace(self) -> str:
        return "SentimentPulse_HF_TF"


def create_hf_handler(name_or_path: str, *, max_length: int | None = None,
                      **batching) -> tuple[BertModelHandler, ModelSpec]:
    """A checkpoint directory or hub name -> (BertModelHandler, ModelSpec from its id2label).

    Reads only the config here (a hub name needs network or the local cache; a gs:// directory
    is read through Beam's FileSystems); raises ValueError with one sentence when it cannot.
    The weights load on the worker (`BertModelHandler.load_model`).
    """
    from transformers import AutoConfig

    remote = locations.is_remote(name_or_path)
    local = remote or os.path.isdir(name_or_path)
    config_bytes = None
    try:
        if remote:
            config_bytes = locations.read_bytes(name_or_path, "config.json")
            with tempfile.TemporaryDirectory() as tmp:
                with open(os.path.join(tmp, "config.json"), "wb") as f:
                    f.write(config_bytes)
                config = AutoConfig.from_pretrained(tmp, local_files_only=True)
        else:
            config = AutoConfig.from_pretrained(name_or_path, local_files_only=local)
    except (OSError, ValueError) as e:
        where = "directory" if local else "hub model"
        raise ValueError(f"cannot read the Hugging Face config of {where} {name_or_path}: "
                         f"{str(e).splitlines()[0]}") from None
    positions = getattr(config, "max_position_embeddings", None)
    if max_length is not None and positions and max_length > positions:
        raise ValueError(f"max_length {max_length} exceeds the model's {positions} positions")
    # Default: the product brief's 256 tokens, or fewer where the model has fewer positions.
    limit = max_length or min(DEFAULT_MAX_LENGTH, positions or DEFAULT_MAX_LENGTH)
    spec = spec_from_id2label(config.id2label, version=checkpoint_version(name_or_path, config, config_bytes),
                              name=os.path.basename(os.path.normpath(name_or_path.rstrip("/"))),
                              max_length=limit)
    languages = checkpoint_languages(name_or_path) if local else None
    if languages is not None:
        spec = dataclasses.replace(spec, languages=languages)
    return BertModelHandler(name_or_path, max_length=limit, **batching), spec


def checkpoint_languages(directory: str) -> tuple[str, ...] | None:
    """The "languages" of a model.json beside a checkpoint's config.json, or None (any language)
    where there is none or it names none. A Hugging Face config says nothing about languages; a
    model.json in the directory is this project's way to say it (DESIGN.md, model contract).
    Raises ValueError for a model.json that is not a JSON object or names languages wrongly."""
    try:
        if locations.is_remote(directory):
            raw = locations.read_bytes(directory, "model.json")
        else:
            with open(os.path.join(directory, "model.json"), "rb") as f:
                raw = f.read()
    except (FileNotFoundError, IsADirectoryError):
        return None
    except OSError as e:
        if locations.is_remote(directory):
            return None  # Beam's FileSystems reports a missing remote file as an IOError of its own
        raise ValueError(f"cannot read {directory}/model.json: {e}") from None
    try:
        meta = json.loads(raw)
    except ValueError:
        raise ValueError(f"{directory}/model.json is not JSON") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{directory}/model.json is not a JSON object")
    languages = meta.get("languages")
    if languages is None:
        return None
    return ModelSpec(languages=tuple(languages) if isinstance(languages, list) else languages).languages
