"""The COMMITTED artifact models/bundled/, loaded with plain TensorFlow and tf_keras only (no project code).

This is what a user or a Beam worker sees: if these pass, the model contract holds
(docs/DESIGN.md, "Models") whatever happens to the training code.
"""
import json
import os
import pathlib

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before TensorFlow: Keras 2 loads SavedModels

import numpy as np
import pytest
import tensorflow as tf

BUNDLED = pathlib.Path(__file__).resolve().parents[1] / "models" / "bundled"
CLASSES = ["negative", "neutral", "positive"]

OBVIOUS = [
    ("I love this, best phone ever!", "positive"),
    ("Absolutely fantastic support, thank you so much :)", "positive"),
    ("Great camera and the battery lasts for days", "positive"),
    ("This is the worst service, I hate it", "negative"),
    ("not good at all", "negative"),
    ("I am not happy with it", "negative"),
    ("I don't like it, total waste of money", "negative"),
    ("Terrible update, the app keeps crashing", "negative"),
]


@pytest.fixture(scope="module")
def signature():
    return tf.saved_model.load(str(BUNDLED)).signatures["serving_default"]


def run(signature, texts):
    return {k: v.numpy() for k, v in signature(text=tf.constant(texts, dtype=tf.string)).items()}


def test_artifact_is_small_and_described():
    files = [p for p in BUNDLED.rglob("*") if p.is_file()]
    assert (BUNDLED / "saved_model.pb").exists()
    assert sum(p.stat().st_size for p in files) < 20 * 1024 * 1024
    meta = json.loads((BUNDLED / "model.json").read_text())
    assert meta["classes"] == CLASSES and meta["class_scores"] == [-1.0, 0.0, 1.0]
    assert meta["vocab_size"] == 10_000 and meta["max_length"] == 256
    assert meta["name"] and meta["version"] and len(meta["label_cuts"]) == 2
    table = meta["evaluation"]["per_split"]
    assert set(table) == {"tweets", "movies", "amazon", "nyt"}
    for split, row in table.items():  # the bar: beat VADER on macro-F1 on every test split
        assert row["model"]["macro_f1"] > row["vader"]["macro_f1"], split
        gain = row["model_vs_vader"]  # and how sure that is: a paired bootstrap over the same posts
        assert gain["ci95"][0] <= gain["gain"] <= gain["ci95"][1] and 0 <= gain["share_a_better"] <= 1
    assert table["tweets"]["support"] == 840
    assert meta["ablation"] and meta["label_rule"] and meta["training"]["seed"] is not None


def test_serving_signature_contract(signature):
    _, inputs = signature.structured_input_signature
    assert list(inputs) == ["text"] and inputs["text"].dtype == tf.string and inputs["text"].shape.rank == 1
    assert set(signature.structured_outputs) == {"probabilities", "token_count", "oov_count"}
    texts = ["I love it", "", "zzqxv blorfle " * 200, "ok"]
    out = run(signature, texts)
    assert out["probabilities"].shape == (4, 3) and out["probabilities"].dtype == np.float32
    assert np.all(np.isfinite(out["probabilities"])) and np.all(out["probabilities"] >= 0)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    assert out["token_count"].tolist() == [3, 0, 256, 1]  # truncated at 256 tokens
    assert out["oov_count"].tolist() == [0, 0, 256, 0]


def test_obvious_posts(signature):
    texts = [t for t, _ in OBVIOUS]
    probs = run(signature, texts)["probabilities"]
    predicted = [CLASSES[i] for i in probs.argmax(axis=1)]
    assert predicted == [label for _, label in OBVIOUS]


def test_batch_independence(signature):
    # A post scores the same alone and in a batch (no padding leaking into the pooled features).
    alone = run(signature, ["not good at all"])["probabilities"][0]
    batched = run(signature, ["a much longer post about the phone " * 5, "not good at all"])["probabilities"][1]
    np.testing.assert_allclose(alone, batched, rtol=1e-5, atol=1e-6)


def test_loads_with_tf_keras_and_scores_raw_strings(signature):
    import tf_keras

    model = tf_keras.models.load_model(str(BUNDLED))  # what Beam's TFModelHandlerTensor calls
    texts = [t for t, _ in OBVIOUS]
    direct = model(tf.constant(texts)).numpy()
    np.testing.assert_allclose(direct, run(signature, texts)["probabilities"], rtol=1e-5, atol=1e-6)


@pytest.mark.integration
def test_serves_through_beam_run_inference():
    # The path the pipeline takes: Beam's TFModelHandlerTensor calls tf_keras load_model
    # and then the model on a batch of stacked tf.string scalars.
    import apache_beam as beam
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.ml.inference.tensorflow_inference import TFModelHandlerTensor
    from apache_beam.testing.util import assert_that, equal_to

    texts = [t for t, _ in OBVIOUS]
    with beam.Pipeline() as p:
        labels = (
            p
            | "Posts" >> beam.Create(texts)
            | "ToTensor" >> beam.Map(tf.constant)
            | "Score" >> RunInference(TFModelHandlerTensor(model_uri=str(BUNDLED)))
            | "Label" >> beam.Map(lambda r: (r.example.numpy().decode(), CLASSES[int(r.inference.numpy().argmax())]))
        )
        assert_that(labels, equal_to(OBVIOUS), label="CheckLabels")
