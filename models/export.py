"""Export a trained Keras model as the bundled SavedModel plus its `model.json`.

    python -m models.train --data data --out models/bundled    # trains, then calls export()

The artifact honours the model contract (docs/DESIGN.md, "Models"):

- `tf.saved_model.load(dir).signatures["serving_default"](text=tf.string [batch])` returns
  `probabilities: float32 [batch, 3]`, `token_count: int64 [batch]` and `oov_count: int64 [batch]`
  (tokens after truncation at max length, and those mapped to the OOV index: the
  pipeline's oov_rate drift signal);
- `tf_keras.models.load_model(dir)` under TF_USE_LEGACY_KERAS=1 (what Beam's
  TFModelHandlerTensor calls) gives a model that maps `tf.string [batch]` to the
  probabilities when called directly;
- `model.json` is read by `models.contracts.ModelSpec.load(dir)`.

Saved in the TensorFlow SavedModel format by Keras 2 (tf_keras): Keras 3 cannot load
SavedModels with `load_model`, and a `.keras` file would not load with plain TensorFlow.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import models  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

MAX_BYTES = 20 * 1024 * 1024
SPEC_FILE = "model.json"


def serving_function(model) -> tf.types.experimental.ConcreteFunction:
    """Keras model with 'standardize' and 'vectorize' layers -> the serving_default signature."""
    standardize = model.get_layer("standardize")
    vectorize = model.get_layer("vectorize")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(text):
        ids = vectorize(standardize(text))
        return {
            "probabilities": tf.cast(model(text, training=False), tf.float32),
            "token_count": tf.reduce_sum(tf.cast(ids > 0, tf.int64), axis=1),
            "oov_count": tf.reduce_sum(tf.cast(tf.equal(ids, 1), tf.int64), axis=1),
        }

    return serve.get_concrete_function()


def write_spec(out_dir: str, spec: dict) -> str:
    path = os.path.join(out_dir, SPEC_FILE)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(spec, f, indent=2, sort_keys=False)
        f.write("\n")
    return path


def artifact_bytes(out_dir: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, files in os.walk(out_dir) for name in files)


def export(model, out_dir: str, spec: dict) -> str:
    """Trained model + model.json dict -> out_dir (replaced atomically enough: built beside, then swapped).

    Raises ValueError when the artifact would exceed 20 MB (it is committed).
    """
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        model.save(staging, save_format="tf", include_optimizer=False,
                   signatures={"serving_default": serving_function(model)})
        write_spec(staging, spec)
        size = artifact_bytes(staging)
        if size > MAX_BYTES:
            raise ValueError(f"exported model is {size / 1e6:.1f} MB, over the 20 MB limit for a committed artifact")
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
        os.chmod(out_dir, 0o755)  # mkdtemp made it private; the artifact is shared
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging)
    return out_dir
