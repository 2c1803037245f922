"""A small untrained model that honours the bundled model contract, for tests and benchmarks.

    python -m bench.contract_model /tmp/contract_model

Used where `models/bundled/` has not been built (yet): it takes `text: tf.string [batch]`,
returns `probabilities: float32 [batch, 3]`, `token_count` and `oov_count` from its
`serving_default` signature, is exported by the bundled model's own `models.export.export`
(so it loads exactly the way the committed artifact does), and ships a `model.json`.
Its weights are random: its predictions mean nothing, its timing and shapes do.
"""
from __future__ import annotations

import sys
from typing import Sequence

import models  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
import tf_keras as keras

from models.export import export

DEFAULT_VOCAB = ("good", "great", "love", "bad", "awful", "hate", "not", "the", "a", "is", "it", "!")


@keras.utils.register_keras_serializable(package="sentiment_pulse_bench")
class LowerCase(keras.layers.Layer):
    """`tf.string [batch]` -> `tf.string [batch]`, lower-cased, '!' split off."""

    def call(self, text):
        text = tf.strings.lower(text, encoding="utf-8")
        return tf.strings.strip(tf.strings.regex_replace(text, r"([!?])", r" \1 "))


def build(vocabulary: Sequence[str] = DEFAULT_VOCAB, max_length: int = 256, seed: int = 0) -> keras.Model:
    """Vocabulary -> untrained Keras model `tf.string [batch]` -> `float32 [batch, 3]`."""
    keras.utils.set_random_seed(seed)
    text = keras.Input(shape=(), dtype=tf.string, name="text")
    vectorize = keras.layers.TextVectorization(
        standardize=None, split="whitespace", output_mode="int", output_sequence_length=max_length,
        vocabulary=list(vocabulary), name="vectorize")
    ids = vectorize(LowerCase(name="standardize")(text))
    embedded = keras.layers.Embedding(len(vocabulary) + 2, 16, name="embedding")(ids)
    pooled = keras.layers.GlobalAveragePooling1D(name="mean_pool")(embedded)
    probs = keras.layers.Dense(3, activation="softmax", name="probabilities")(pooled)
    return keras.Model(text, probs, name="contract_model")


def export_contract_model(out_dir: str, vocabulary: Sequence[str] = DEFAULT_VOCAB,
                          max_length: int = 256) -> str:
    """Build and export the untrained contract model to out_dir (SavedModel + model.json)."""
    model = build(vocabulary, max_length)
    spec = {
        "classes": ["negative", "neutral", "positive"],
        "class_scores": [-1.0, 0.0, 1.0],
        "version": "contract-model-untrained",
        "name": "contract_model",
        "vocab_size": len(vocabulary) + 2,
        "max_length": max_length,
    }
    return export(model, out_dir, spec)


if __name__ == "__main__":
    print(export_contract_model(sys.argv[1] if len(sys.argv) > 1 else "contract_model"))
