"""Train the bundled sentiment model from the Hutto & Gilbert corpora and export it.

    python -m models.train --data data --out models/bundled            # `make train`, a few minutes
    python -m models.train --data data --out /tmp/tiny --subset 400 --epochs 2 --no-ablation

The model (element shapes: text `tf.string [batch]` -> probabilities `float32 [batch, 3]`,
classes negative / neutral / positive) keeps tokenisation inside the graph, so serving
takes raw strings and cannot drift from training:

  Standardize       lower-case; '!' and '?' become tokens of their own, other punctuation
                    runs (':)', '...') tokens of their own; apostrophes stay inside words
  TextVectorization 10,000-token vocabulary (pad, [UNK], the rest), 256 tokens at most
  LexiconFeatures   VADER prior knowledge: a trainable per-token valence initialised from
                    the VADER lexicon (MIT), VADER's negation (three tokens back, x-0.74),
                    intensifiers (+/-0.293 with decay), 'but' (0.5x before, 1.5x after) and
                    '!'/'?' emphasis, pooled to 10 post-level features (compound among them)
  CapsFeatures      share of ALL-CAPS words in the raw text (VADER's emphasis), read
                    before lower-casing
  Embedding         24-d learned embeddings (L2 1e-5), mean over the post's tokens
  Dense 32 relu -> Dropout 0.2 -> Dense 3 softmax

The vocabulary is built from the training split plus every VADER lexicon token, so a
lexicon word the training data never shows still carries its valence. Training text
is `models.textnorm.normalize(text)`: the pipeline's Clean step serves the model the
same function. Class weights balance the three labels (the metric is macro-F1).
Early stopping watches the validation loss; then per-class offsets, chosen on the
validation split to maximise mean per-corpus macro-F1, are folded into the output
bias. Test splits (the reserved tweets among them) are only ever scored, at the end.
`make train` also trains the ablation variants (VARIANTS) and records them in model.json.
"""
from __future__ import annotations

import argparse
import collections
import importlib.resources
import json
import math
import os
import sys
import time
from typing import Sequence

import models  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import tensorflow as tf
import tf_keras as keras
from tqdm import tqdm

from models import data as data_lib
from models import evaluate as eval_lib
from models import export as export_lib
from models.textnorm import normalize

MAX_TOKENS = 10_000
MAX_LENGTH = 256
EMBED_DIM = 24
HIDDEN = 32
BATCH = 64
LEARNING_RATE = 1e-3
CONV_FILTERS = 32
PER_CORPUS_WEIGHTS = False  # measured: per-corpus balancing lost 0.01 mean val macro-F1
CALIBRATE = True
EMBED_L2 = 1e-5
DEFAULT_EPOCHS = 12
OOV = "[UNK]"

# VADER's empirically derived constants (Hutto & Gilbert 2014), kept as in vaderSentiment.
NEGATION_SCALAR = -0.74
BUT_BEFORE, BUT_AFTER = 0.5, 1.5
BOOSTER_DECAY = (1.0, 0.95, 0.9)
EXCLAIM_INCR, EXCLAIM_CAP = 0.292, 4
QUESTION_INCR, QUESTION_CAP = 0.18, 0.96
COMPOUND_ALPHA = 15.0

# The ablation: each step adds one piece of prior knowledge or capacity; `make train` measures
# them all (validation macro-F1 per corpus, posts/s) and exports FINAL_VARIANT, chosen by
# mean validation macro-F1 at thousands of posts/s. The 3-gram convolution was measured and
# rejected: slower and worse on validation (it overfits 17k snippets).
_RULES = dict(lexicon=True, negation=True, rules=True)
VARIANTS = {
    "embeddings": dict(lexicon=False, negation=False, rules=False),
    "+lexicon": dict(lexicon=True, negation=False, rules=False),
    "+negation": dict(lexicon=True, negation=True, rules=False),
    "+intensifiers,but,!?": _RULES,
    "+caps": dict(_RULES, caps=True),
    "+caps,+conv3": dict(_RULES, caps=True, conv=True),
}
FINAL_VARIANT = "+caps"


@keras.utils.register_keras_serializable(package="sentiment_pulse")
class Standardize(keras.layers.Layer):
    """`tf.string [batch]` -> `tf.string [batch]`: lower-cased, punctuation split into tokens."""

    def call(self, text):
        text = tf.strings.lower(text, encoding="utf-8")
        text = tf.strings.regex_replace(text, "[\u2018\u2019`\u00b4]", "'")
        text = tf.strings.regex_replace(text, r"([!?])", r" \1 ")
        text = tf.strings.regex_replace(text, r"([^\p{L}\p{N}\s'!?]+)", r" \1 ")
        # Quotes around a word are not part of it; apostrophes inside ("don't") are.
        text = tf.strings.regex_replace(" " + text + " ", r"\s'+|'+\s", " ")
        return tf.strings.strip(tf.strings.regex_replace(text, r"\s+", " "))


def _shift_right(x, k):
    """[batch, L] -> [batch, L]: x[:, t - k], zeros for t < k (the k-th previous token)."""
    return tf.pad(x, [[0, 0], [k, 0]])[:, : tf.shape(x)[1]]


@keras.utils.register_keras_serializable(package="sentiment_pulse")
class LexiconFeatures(keras.layers.Layer):
    """Token ids `int64 [batch, L]` -> (VADER-style post features `float32 [batch, 10]`,
    negation scope `float32 [batch, L]`: 1 where one of the three previous tokens negates).

    Per-vocabulary-index tables (set once from the lexicon, saved as weights):
    `valence` (trainable, initialised to VADER's mean rating), `negator`, `booster`
    (+/-0.293), `but`, `exclaim`, `question` (0/1). Switches select the ablation step.
    """

    N_FEATURES = 10

    def __init__(self, vocab_size, lexicon=True, negation=True, rules=True, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = int(vocab_size)
        self.lexicon, self.negation, self.rules = bool(lexicon), bool(negation), bool(rules)

    def build(self, input_shape):
        def table(name, trainable=False):
            return self.add_weight(
                name=name, shape=(self.vocab_size,), initializer="zeros", trainable=trainable
            )

        self.valence = table("valence", trainable=self.lexicon)
        self.negator, self.booster, self.but = table("negator"), table("booster"), table("but")
        self.exclaim, self.question = table("exclaim"), table("question")
        super().build(input_shape)

    def set_tables(self, tables: dict):
        for name, values in tables.items():
            getattr(self, name).assign(np.asarray(values, dtype=np.float32))

    def call(self, ids):
        ids = tf.cast(ids, tf.int64)
        present = tf.cast(ids > 0, tf.float32)
        n_tokens = tf.reduce_sum(present, axis=1)
        exclaims = tf.reduce_sum(tf.gather(self.exclaim, ids), axis=1)
        questions = tf.reduce_sum(tf.gather(self.question, ids), axis=1)
        negated = tf.zeros_like(present)
        if self.negation:
            negator = tf.gather(self.negator, ids)
            negated = tf.reduce_max(tf.stack([_shift_right(negator, k) for k in (1, 2, 3)]), axis=0)
        if not self.lexicon:
            # The learned path alone: only counts, no valence.
            zeros = tf.zeros_like(n_tokens)
            return tf.stack([zeros] * 7 + [tf.math.log1p(n_tokens) / 5.0,
                                           tf.minimum(exclaims, 4.0) / 4.0,
                                           tf.minimum(questions, 4.0) / 4.0], axis=1), negated
        valence = tf.gather(self.valence, ids)
        is_lex = tf.cast(tf.not_equal(valence, 0.0), tf.float32)
        if self.rules:
            booster = tf.gather(self.booster, ids)
            boost = sum(d * _shift_right(booster, k + 1) for k, d in enumerate(BOOSTER_DECAY))
            valence = valence + tf.sign(valence) * boost
        if self.negation:
            valence = valence * (1.0 + (NEGATION_SCALAR - 1.0) * negated)
        total_raw = tf.reduce_sum(valence, axis=1)
        if self.rules:
            but = tf.gather(self.but, ids)
            after = tf.cast(tf.cumsum(_shift_right(but, 1), axis=1) > 0, tf.float32)
            has_but = tf.reduce_max(but, axis=1, keepdims=True)
            weight = after * BUT_AFTER + (1 - after) * (has_but * BUT_BEFORE + (1 - has_but))
            valence = valence * weight
        total = tf.reduce_sum(valence, axis=1)
        emphasis = 0.0
        if self.rules:
            emphasis = tf.minimum(exclaims, EXCLAIM_CAP) * EXCLAIM_INCR + tf.where(
                questions > 3, QUESTION_CAP, questions * QUESTION_INCR
            ) * tf.cast(questions > 1, tf.float32)
        emphasised = total + tf.sign(total) * emphasis
        compound = emphasised / tf.sqrt(emphasised * emphasised + COMPOUND_ALPHA)
        positive = tf.reduce_sum(tf.nn.relu(valence), axis=1)
        negative = tf.reduce_sum(tf.nn.relu(-valence), axis=1)
        n_lex = tf.reduce_sum(is_lex, axis=1)
        features = [
            compound,
            total_raw / tf.sqrt(total_raw * total_raw + COMPOUND_ALPHA),
            positive / (1.0 + positive),
            negative / (1.0 + negative),
            n_lex / (n_tokens + 1.0),
            tf.reduce_max(valence, axis=1) / 4.0,
            tf.reduce_min(valence, axis=1) / 4.0,
            tf.math.log1p(n_tokens) / 5.0,
            tf.minimum(exclaims, 4.0) / 4.0,
            tf.minimum(questions, 4.0) / 4.0,
        ]
        return tf.stack(features, axis=1), negated

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, lexicon=self.lexicon,
                      negation=self.negation, rules=self.rules)
        return config


@keras.utils.register_keras_serializable(package="sentiment_pulse")
class MaskedMean(keras.layers.Layer):
    """(ids `int [batch, L]`, embeddings `[batch, L, d]`, negation scope `[batch, L]`) -> `[batch, d]`:
    mean over non-pad tokens, a negated token's embedding scaled by VADER's -0.74 so that
    "not happy" lands on the other side of the learned space from "happy" (without it the
    learned path scored "not happy with it" 0.88 positive). Zeros for an empty post, where
    Keras's masked GlobalAveragePooling1D divides 0 by 0.
    """

    def call(self, inputs):
        ids, embedded, negated = inputs
        present = tf.cast(ids > 0, embedded.dtype)[..., None]
        scale = 1.0 + (NEGATION_SCALAR - 1.0) * negated[..., None]
        return tf.reduce_sum(embedded * present * scale, axis=1) / tf.maximum(tf.reduce_sum(present, axis=1), 1.0)


@keras.utils.register_keras_serializable(package="sentiment_pulse")
class CapsFeatures(keras.layers.Layer):
    """Raw text `tf.string [batch]` -> `float32 [batch, 2]`: share of ALL-CAPS words, and that
    share again only when some words are not capitalised (VADER's emphasis rule: shouting
    one word stresses it, an all-caps post says little). Read before Standardize lower-cases.
    """

    def call(self, text):
        words = tf.strings.split(text)
        caps = tf.cast(tf.strings.regex_full_match(words, r"\p{Lu}[\p{Lu}'!?.,]*\p{Lu}[\p{Lu}'!?.,]*"), tf.float32)
        n_caps = tf.reduce_sum(caps, axis=1)
        n_words = tf.cast(words.row_lengths(), tf.float32)
        share = n_caps / tf.maximum(n_words, 1.0)
        differential = tf.cast((n_caps > 0) & (n_caps < n_words), tf.float32)
        return tf.stack([share, share * differential], axis=1)


@keras.utils.register_keras_serializable(package="sentiment_pulse")
class MaskedMax(keras.layers.Layer):
    """(ids `int [batch, L]`, features `[batch, L, d]`) -> max over non-pad positions `[batch, d]` (0 if empty)."""

    def call(self, inputs):
        ids, values = inputs
        present = (ids > 0)[..., None]
        masked = tf.where(present, values, tf.fill(tf.shape(values), tf.constant(-1e9, values.dtype)))
        return tf.where(tf.reduce_any(present, axis=1), tf.reduce_max(masked, axis=1), 0.0)


def load_lexicon() -> dict[str, float]:
    """The VADER lexicon shipped in the vaderSentiment package -> {token: mean valence in [-4, 4]}."""
    text = (importlib.resources.files("vaderSentiment") / "vader_lexicon.txt").read_text("utf-8")
    lexicon = {}
    for line in text.splitlines():
        parts = line.strip().split("\t")
        if len(parts) >= 2:
            lexicon[parts[0].lower()] = float(parts[1])
    return lexicon


def vader_rules() -> tuple[set[str], dict[str, float]]:
    from vaderSentiment import vaderSentiment as vs

    return {w.lower() for w in vs.NEGATE}, {w.lower(): v for w, v in vs.BOOSTER_DICT.items()}


def standardize_texts(texts: Sequence[str], batch: int = 2048) -> list[str]:
    layer = Standardize()
    out = []
    for start in range(0, len(texts), batch):
        out.extend(s.decode("utf-8") for s in layer(tf.constant(list(texts[start : start + batch]))).numpy())
    return out


def build_vocabulary(standardized: Sequence[str], lexicon: dict, max_tokens: int = MAX_TOKENS) -> list[str]:
    """Training texts (standardised) + lexicon -> vocabulary without pad/OOV (max_tokens - 2 entries).

    Order: negators, boosters, 'but', '!', '?'; then training tokens seen twice or more
    by frequency, interleaved with lexicon tokens so that every lexicon token the
    training data shows goes first; then unseen lexicon tokens by |valence|.
    """
    negators, boosters = vader_rules()
    counts = collections.Counter(tok for text in standardized for tok in text.split())
    budget = max_tokens - 2
    ordered = list(dict.fromkeys(sorted(negators) + sorted(boosters) + ["but", "!", "?"]))
    # Ties broken by the token so the vocabulary is identical run to run.
    seen_lexicon = sorted((t for t in lexicon if counts[t] > 0), key=lambda t: (-counts[t], t))
    frequent = sorted((t for t, c in counts.items() if c >= 2), key=lambda t: (-counts[t], t))
    unseen_lexicon = sorted((t for t in lexicon if counts[t] == 0), key=lambda t: (-abs(lexicon[t]), t))
    vocab = list(dict.fromkeys(ordered + seen_lexicon + frequent + unseen_lexicon))
    vocab = [t for t in vocab if t and " " not in t and t not in ("", OOV)]
    return vocab[:budget]


def lexicon_tables(vocabulary: Sequence[str], lexicon: dict) -> dict:
    """Full vocabulary (index 0 pad, 1 OOV) -> per-index tables for LexiconFeatures."""
    negators, boosters = vader_rules()
    n = len(vocabulary)
    tables = {name: np.zeros(n, np.float32) for name in ("valence", "negator", "booster", "but", "exclaim", "question")}
    for i, tok in enumerate(vocabulary):
        if i < 2:
            continue
        tables["valence"][i] = lexicon.get(tok, 0.0)
        tables["negator"][i] = float(tok in negators or tok.endswith("n't"))
        tables["booster"][i] = boosters.get(tok, 0.0)
        tables["but"][i] = float(tok == "but")
        tables["exclaim"][i] = float(tok == "!")
        tables["question"][i] = float(tok == "?")
    return tables


def build_model(vocab: Sequence[str], lexicon: dict, variant: dict, seed: int) -> keras.Model:
    """Vocabulary (no pad/OOV) + lexicon -> Keras model: `tf.string [batch]` -> `float32 [batch, 3]`."""
    variant = dict(variant)
    caps, conv = variant.pop("caps", False), variant.pop("conv", False)
    init = keras.initializers.GlorotUniform(seed=seed)
    text = keras.Input(shape=(), dtype=tf.string, name="text")
    vectorize = keras.layers.TextVectorization(
        max_tokens=MAX_TOKENS, standardize=None, split="whitespace",
        output_mode="int", output_sequence_length=MAX_LENGTH, vocabulary=list(vocab), name="vectorize",
    )
    ids = vectorize(Standardize(name="standardize")(text))
    full_vocab = vectorize.get_vocabulary()
    lex = LexiconFeatures(len(full_vocab), name="lexicon_features", **variant)
    features, negated = lex(ids)
    embedded = keras.layers.Embedding(
        len(full_vocab), EMBED_DIM, name="embedding",
        embeddings_regularizer=keras.regularizers.L2(EMBED_L2),
        embeddings_initializer=keras.initializers.RandomUniform(-0.05, 0.05, seed=seed),
    )(ids)
    pooled = MaskedMean(name="mean_pool")([ids, embedded, negated])
    inputs = [features, pooled]
    if caps:
        inputs.append(CapsFeatures(name="caps_features")(text))
    if conv:
        conv_out = keras.layers.Conv1D(CONV_FILTERS, 3, padding="same", activation="relu",
                                       kernel_initializer=init, name="conv3")(embedded)
        inputs.append(MaskedMax(name="conv_max")([ids, conv_out]))
    x = keras.layers.Concatenate(name="concat")(inputs)
    x = keras.layers.Dense(HIDDEN, activation="relu", kernel_initializer=init, name="hidden")(x)
    x = keras.layers.Dropout(0.2, seed=seed, name="dropout")(x)
    probs = keras.layers.Dense(3, activation="softmax", kernel_initializer=init, name="probabilities")(x)
    model = keras.Model(text, probs, name="bundled_sentiment")
    lex.set_tables(lexicon_tables(full_vocab, lexicon))
    return model


class TqdmEpochs(keras.callbacks.Callback):
    """One progress bar over epochs with the latest losses (Keras's own bar is per epoch)."""

    def __init__(self, epochs: int, desc: str, disable: bool = False):
        super().__init__()
        self.bar = tqdm(total=epochs, desc=desc, unit="epoch", disable=disable, leave=False)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.bar.set_postfix(loss=f"{logs.get('loss', 0):.3f}", val_loss=f"{logs.get('val_loss', 0):.3f}")
        self.bar.update(1)

    def on_train_end(self, logs=None):
        self.bar.close()


def _arrays(examples, texts):
    y = np.array([data_lib.label_index(e.rating) for e in examples], dtype=np.int64)
    return tf.constant(texts), y


def class_weights(labels: np.ndarray) -> np.ndarray:
    counts = np.bincount(labels, minlength=3).astype(float)
    return np.where(counts > 0, len(labels) / (3 * np.maximum(counts, 1)), 0.0)


def example_weights(examples, labels: np.ndarray, per_corpus: bool) -> np.ndarray:
    """Balanced class weights, globally or within each corpus (each test split is scored alone)."""
    if not per_corpus:
        return class_weights(labels)[labels]
    corpora = np.array([e.corpus for e in examples])
    out = np.zeros(len(labels))
    for corpus in set(corpora):
        idx = corpora == corpus
        out[idx] = class_weights(labels[idx])[labels[idx]] * idx.mean() * len(set(corpora))
    return out / out.mean()


BIAS_GRID = np.round(np.arange(-1.5, 1.51, 0.1), 2)


def calibrate_bias(probabilities: np.ndarray, examples) -> np.ndarray:
    """Validation probabilities -> log-space class offsets maximising mean per-corpus macro-F1.

    Folded into the output layer's bias (softmax(z + b)), it moves the decision
    thresholds that class weighting sets only roughly. Validation data only.
    """
    logp = np.log(np.clip(probabilities, 1e-9, 1.0))
    truth = np.array([data_lib.label_index(e.rating) for e in examples])
    corpora = np.array([e.corpus for e in examples])
    groups = [corpora == c for c in sorted(set(corpora))]

    def objective(bias):
        pred = (logp + bias).argmax(-1)
        return np.mean([eval_lib.macro_f1(truth[g], pred[g]) for g in groups])

    best, best_bias = objective(np.zeros(3)), np.zeros(3)
    for b_neg in BIAS_GRID:
        for b_neu in BIAS_GRID:
            bias = np.array([b_neg, b_neu, 0.0])
            value = objective(bias)
            if value > best + 1e-9:
                best, best_bias = value, bias
    return best_bias


def fit(parts, clean, lexicon, variant, seed, epochs, progress=True, desc="train"):
    """Splits + normalised texts -> (trained model, vocabulary, epochs run)."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    train_std = standardize_texts(clean["train"])
    vocab = build_vocabulary(train_std, lexicon)
    model = build_model(vocab, lexicon, variant, seed)
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss="sparse_categorical_crossentropy",
                  weighted_metrics=["accuracy"])
    x, y = _arrays(parts["train"], clean["train"])
    vx, vy = _arrays(parts["val"], clean["val"])
    sw, vsw = example_weights(parts["train"], y, PER_CORPUS_WEIGHTS), example_weights(parts["val"], vy, PER_CORPUS_WEIGHTS)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
    history = model.fit(
        x, y, sample_weight=sw, validation_data=(vx, vy, vsw),
        batch_size=BATCH, epochs=epochs, shuffle=True, verbose=0,
        callbacks=[stop, TqdmEpochs(epochs, desc, disable=not progress)],
    )
    bias = np.zeros(3)
    if CALIBRATE:
        bias = calibrate_bias(predict_probabilities(model, clean["val"]), parts["val"])
        layer = model.get_layer("probabilities")
        layer.bias.assign(layer.bias.numpy() + bias.astype(np.float32))
    return model, vocab, len(history.history["loss"]), bias


def predict_probabilities(model, texts: Sequence[str], batch: int = 1024) -> np.ndarray:
    out = [model(tf.constant(list(texts[i : i + batch])), training=False).numpy()
           for i in range(0, len(texts), batch)]
    return np.concatenate(out) if out else np.zeros((0, 3), np.float32)


def predict_classes(model, texts: Sequence[str]) -> np.ndarray:
    return predict_probabilities(model, texts).argmax(-1)


def per_corpus_f1(model, examples, texts) -> dict:
    predicted = predict_classes(model, texts)
    out = {}
    for corpus in data_lib.CORPORA:
        idx = [i for i, e in enumerate(examples) if e.corpus == corpus]
        if idx:
            truth = [data_lib.label_index(examples[i].rating) for i in idx]
            out[corpus] = round(eval_lib.macro_f1(truth, predicted[idx]), 4)
    return out


def posts_per_second(model, texts: Sequence[str], batch: int = 256, repeats: int = 3) -> float:
    """Throughput of the Keras model on the given texts (the caller sets the thread count)."""
    batches = [tf.constant(list(texts[i : i + batch])) for i in range(0, len(texts), batch)]
    serve = tf.function(lambda t: model(t, training=False))
    serve(batches[0])  # trace once
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for b in batches:
            serve(b).numpy()
        best = min(best, time.perf_counter() - start)
    return len(texts) / best


def subsample(parts: dict, n: int, seed: int) -> dict:
    """Keep at most n training examples (val and test: n // 4), chosen by a seeded draw."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, rows in parts.items():
        k = n if name == "train" else max(1, n // 4)
        if len(rows) > k:
            rows = [rows[i] for i in sorted(rng.choice(len(rows), size=k, replace=False))]
        out[name] = rows
    return out


def run(data_dir, out_dir, seed=data_lib.DEFAULT_SEED, epochs=DEFAULT_EPOCHS, subset=None,
        ablation=True, progress=True, version=None, measure_throughput=False) -> dict:
    """Load, split, (ablate), train, evaluate against VADER, export. Returns the model.json dict."""
    started = time.perf_counter()
    parts = data_lib.split(data_lib.load_all(data_dir), seed)
    if subset:
        parts = subsample(parts, subset, seed)
    clean = {name: [normalize(e.text) for e in rows] for name, rows in parts.items()}
    lexicon = load_lexicon()

    ablation_rows = []
    variants = VARIANTS if ablation else {FINAL_VARIANT: VARIANTS[FINAL_VARIANT]}
    final = None
    for name, variant in variants.items():
        t0 = time.perf_counter()
        model, vocab, ran, bias = fit(parts, clean, lexicon, variant, seed, epochs, progress, desc=name)
        seconds = time.perf_counter() - t0
        val = per_corpus_f1(model, parts["val"], clean["val"])
        row = {"variant": name, "val_macro_f1": val, "val_macro_f1_mean": round(float(np.mean(list(val.values()))), 4),
               "posts_per_second_in_process": round(posts_per_second(model, clean["val"])),
               "calibration_bias": [round(float(b), 2) for b in bias],
               "epochs": ran, "train_seconds": round(seconds, 1)}
        ablation_rows.append(row)
        tqdm.write(f"{name:22} val macro-F1 {row['val_macro_f1_mean']:.3f} {val} "
                   f"{row['posts_per_second_in_process']} posts/s ({ran} epochs, {seconds:.0f} s)")
        if name == FINAL_VARIANT:
            final, final_vocab, final_epochs = model, vocab, ran

    evaluation = eval_lib.evaluation_table(
        parts["test"], lambda texts: predict_classes(final, [normalize(t) for t in texts])
    )
    tqdm.write(eval_lib.format_table(evaluation))
    spec = {
        "name": "bundled-vader-lexicon-bag",
        "architecture": f"{FINAL_VARIANT}: " + ", ".join(k for k, v in VARIANTS[FINAL_VARIANT].items() if v),
        "version": version or weights_version(final),
        "classes": list(data_lib.LABELS),
        "class_scores": [-1.0, 0.0, 1.0],
        "label_cuts": list(data_lib.LABEL_CUTS),
        "vocab_size": MAX_TOKENS,
        "max_length": MAX_LENGTH,
        "languages": ["en"],  # the corpora are English (transforms/language.supports routes the rest)
        "input_normalization": "models.textnorm.normalize",
        "outputs": {"probabilities": "float32 [batch, 3]", "token_count": "int64 [batch]",
                    "oov_count": "int64 [batch]"},
        "label_rule": {
            "rating_scale": [-4, 4],
            "negative": "mean rating < -0.5", "neutral": "-0.5 <= mean rating <= 0.5",
            "positive": "mean rating > 0.5", "score": "rating / 4",
            "why": "raters chose integers in [-4, 4]; beyond +/-0.5 their mean rounds to a non-zero "
                   "point of their own scale; the issue's VADER baseline uses the same cut",
        },
        "evaluation": {
            "test_splits": "tweets: id % 5 == 0 (reserved); movies/amazon/nyt: seeded stratified 10%",
            "baseline": "vaderSentiment 3.3.2 SentimentIntensityAnalyzer compound, cuts +/-0.05",
            "per_split": evaluation,
        },
        "training": {
            "data": f"{data_lib.SDIST} sdist, {data_lib.INNER_ARCHIVE} (Hutto & Gilbert 2014, MIT)",
            "lexicon": "vaderSentiment 3.3.2 vader_lexicon.txt (MIT)",
            "seed": seed, "epochs_max": epochs, "epochs_run": final_epochs, "subset": subset,
            "split_sizes": {k: len(v) for k, v in parts.items()},
            "seconds": None,
            "tensorflow": tf.__version__, "keras": keras.__version__,
        },
        "ablation": ablation_rows,
    }
    export_lib.export(final, out_dir, spec)
    spec["training"]["seconds"] = round(time.perf_counter() - started, 1)
    if measure_throughput:
        spec["throughput"] = measure_in_subprocess(out_dir, data_dir)
        tqdm.write(f"throughput (1 thread): {spec['throughput']}")
    export_lib.write_spec(out_dir, spec)
    return spec


def weights_version(model) -> str:
    """'1.<sha256 of the weights, 10 hex>': the same training run gives the same version,
    and any change to data, code or seed that changes the model changes it."""
    import hashlib

    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    return f"1.{digest.hexdigest()[:10]}"


def measure_in_subprocess(model_dir: str, data_dir: str) -> dict | None:
    """Posts/s of the exported model on one CPU thread, in a fresh process (thread counts are
    fixed once TensorFlow starts, and this one trained on all cores)."""
    import subprocess

    cmd = [sys.executable, "-m", "models.evaluate", "--throughput", "--model", model_dir, "--data", data_dir]
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tqdm.write(f"throughput not measured: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
        return None
    return json.loads(lines[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="data", help="folder holding hutto_ICWSM_2014/ (make data)")
    parser.add_argument("--out", default="models/bundled", help="export folder (replaced)")
    parser.add_argument("--seed", type=int, default=data_lib.DEFAULT_SEED)
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--subset", type=int, default=None, help="train on at most N examples (tests)")
    parser.add_argument("--no-ablation", dest="ablation", action="store_false",
                        help="train only the final variant")
    parser.add_argument("--version", default=None, help="model version (default: 1.<hash of the weights>)")
    args = parser.parse_args(argv)
    if args.epochs < 1 or (args.subset is not None and args.subset < 10):
        parser.error("--epochs must be >= 1 and --subset >= 10")
    try:
        spec = run(args.data, args.out, args.seed, args.epochs, args.subset, args.ablation,
                   version=args.version, measure_throughput=not args.subset)
    except data_lib.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.out} ({spec['training']['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
