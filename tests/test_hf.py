"""models/hf.py: the BERT path end to end on a tiny random BERT, and its pure parts."""
import pickle

import models  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from models import hf
from models.handlers import create_model_handler
from tests.fixtures.bert import build_tiny_bert

POSTS = [
    "the phone is very good !",
    "awful",
    "i hate the battery , the screen is slow and the service is bad . not happy at all , very sad",
    "zebra xylophone battery",
    "",
    "great price , fast service",
    "love it",
]


@pytest.fixture(scope="module")
def runner(tiny_bert_dir):
    handler, _spec = create_model_handler(tiny_bert_dir)
    return handler.load_model()


# ---- output mapping ------------------------------------------------------------------------

def test_five_star_classes_map_to_stars_and_expected_score():
    spec = hf.spec_from_id2label({i: f"{i + 1} star{'s' if i else ''}" for i in range(5)}, version="v", name="n")
    assert spec.predict([0, 0, 0, 0, 1]) == ("positive", 1.0, 5, 1.0)
    assert spec.predict([1, 0, 0, 0, 0]) == ("negative", -1.0, 1, 1.0)
    probs = np.array([0.05, 0.1, 0.15, 0.3, 0.4])
    expected_stars = float(probs @ np.arange(1, 6))
    prediction = spec.predict(probs)
    assert prediction.stars == 5  # argmax + 1
    assert prediction.score == pytest.approx((expected_stars - 3) / 2)  # expected stars in [-1, 1]
    assert prediction.label == "positive"  # expected stars 3.9 -> score 0.45
    assert spec.predict([0.3, 0.0, 0.4, 0.0, 0.3]) == ("neutral", 0.0, 3, 0.4)


@pytest.mark.parametrize("id2label, labels", [
    ({0: "NEGATIVE", 1: "POSITIVE"}, ("negative", "positive")),
    ({"0": "neg", "1": "neu", "2": "pos"}, ("negative", "neutral", "positive")),
    ({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}, ("negative", "neutral", "positive")),
    ({0: "LABEL_0", 1: "LABEL_1"}, ("negative", "positive")),
    ({0: "positive", 1: "negative", 2: "neutral"}, ("positive", "negative", "neutral")),
])
def test_two_and_three_class_layouts(id2label, labels):
    spec = hf.spec_from_id2label(id2label, version="v", name="n")
    assert spec.labels == labels
    assert spec.class_stars is None
    best = len(labels) - 1
    probs = [0.1] * len(labels)
    probs[best] = 0.8
    assert spec.predict(probs).label == labels[best]


@pytest.mark.parametrize("id2label", [
    {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2", 3: "LABEL_3"},
    {0: "joy", 1: "anger"},
    {0: "negative", 1: "negative"},
])
def test_unmappable_layouts_raise(id2label):
    with pytest.raises(ValueError, match="cannot map"):
        hf.spec_from_id2label(id2label, version="v", name="n")


def test_softmax_not_sigmoid():
    probs = hf.softmax(np.array([[2.0, 1.0, 0.0], [1000.0, 1000.0, 1000.0]]))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs[1], [1 / 3] * 3, rtol=1e-6)
    assert probs.dtype == np.float32


# ---- length-aware batching -----------------------------------------------------------------

def test_plan_sub_batches_covers_each_index_once_under_budget():
    lengths = [5, 120, 7, 30, 30, 2, 250, 9, 64, 31, 29]
    batches = hf.plan_sub_batches(lengths, max_batch_tokens=256, max_rows=3, buckets=(16, 32, 64, 128))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        widths = [lengths[i] for i in b]
        assert widths == sorted(widths)
        assert len(b) <= 3 and (len(b) == 1 or len(b) * max(widths) <= 256)
    assert [6] in batches  # the 250-token post fills a sub-batch alone
    assert [5, 0, 2] in batches and [7] in batches  # max_rows 3 cuts the <=16 bucket
    assert [10, 3, 4] in batches and [9] in batches  # one bucket (17..32), cut at 3 rows
    assert [8] in batches  # 64 is not padded together with the 120 beside it


def test_encode_counts_before_truncation_and_truncates(runner):
    tok = runner.tokenizer
    encoded = hf.encode(tok, ["the phone zebra", "good " * 100], max_length=16)
    assert encoded.token_counts == [3, 100]
    assert encoded.oov_counts == [1, 0]
    assert len(encoded.input_ids[1]) == 16
    assert encoded.input_ids[0][0] == tok.cls_token_id and encoded.input_ids[0][-1] == tok.sep_token_id
    assert len(encoded.input_ids[0]) == 5


def test_dynamic_padding_and_order_restoration(runner):
    runner.max_batch_tokens, runner.max_rows = 48, 4  # several sub-batches for 7 posts
    try:
        probs, encoded = runner.probabilities(POSTS)
        shapes = list(runner.last_shapes)
    finally:
        runner.max_batch_tokens, runner.max_rows = hf.DEFAULT_MAX_BATCH_TOKENS, hf.DEFAULT_MAX_ROWS
    lengths = [len(ids) for ids in encoded.input_ids]
    plan = hf.plan_sub_batches(lengths, 48, 4)
    assert len(shapes) == len(plan) > 1
    # Each sub-batch is padded to its own longest post, not to max_length.
    assert shapes == [(len(b), max(lengths[i] for i in b)) for b in plan]
    assert max(w for _, w in shapes) < runner.max_length
    # Scored alone (no padding at all), each post gets the same probabilities: order restored.
    for i, post in enumerate(POSTS):
        alone, _ = runner.probabilities([post])
        np.testing.assert_allclose(probs[i], alone[0], atol=1e-5)
    assert len({tuple(np.round(p, 4)) for p in probs}) == len(POSTS)  # outputs really differ


def test_configure_devices_on_this_machine():
    import tensorflow as tf

    expected = "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"
    assert hf.configure_devices() == expected


# ---- create_model_handler on a checkpoint directory ---------------------------------------

def test_checkpoint_handler_spec_and_pickling(tiny_bert_dir):
    handler, spec = create_model_handler(tiny_bert_dir, max_batch_size=16, max_batch_duration_secs=1)
    assert isinstance(handler, hf.BertModelHandler)
    assert spec.classes == ("1 star", "2 stars", "3 stars", "4 stars", "5 stars")
    assert spec.class_stars == (1, 2, 3, 4, 5)
    assert spec.version.startswith("hf:tiny-bert-5-stars@") and spec.max_length == 64
    kwargs = handler.batch_elements_kwargs()
    assert kwargs["max_batch_size"] == 16 and kwargs["bucket_boundaries"] == hf.CHAR_BUCKETS
    clone = pickle.loads(pickle.dumps(handler))
    assert clone.name_or_path == tiny_bert_dir


def test_checkpoint_max_length_beyond_positions_raises(tiny_bert_dir):
    with pytest.raises(ValueError, match="exceeds the model's 64 positions"):
        create_model_handler(tiny_bert_dir, max_length=512)


def test_corrupt_checkpoint_config_raises(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "tf_model.h5").write_bytes(b"")
    with pytest.raises(ValueError, match="cannot read the Hugging Face config"):
        create_model_handler(str(tmp_path))


def test_three_class_checkpoint_serves_labels(tmp_path):
    path = build_tiny_bert(str(tmp_path / "three"), id2label={0: "negative", 1: "neutral", 2: "positive"})
    handler, spec = create_model_handler(path)
    results = list(handler.run_inference(["good", "bad"], handler.load_model()))
    assert all(r.inference["probabilities"].shape == (3,) for r in results)
    assert spec.labels == ("negative", "neutral", "positive") and spec.class_stars is None


@pytest.mark.integration
def test_tiny_bert_through_runinference(tiny_bert_dir, runner):
    handler, spec = create_model_handler(tiny_bert_dir, max_batch_size=3)
    reference, encoded = runner.probabilities(POSTS)
    expected = [(f"post-{i}", spec.predict(reference[i]).stars, spec.predict(reference[i]).label,
                 encoded.token_counts[i], encoded.oov_counts[i]) for i in range(len(POSTS))]

    def to_row(keyed):
        key, result = keyed
        prediction = spec.predict(result.inference["probabilities"])
        return key, prediction.stars, prediction.label, result.inference["token_count"], result.inference["oov_count"]

    with TestPipeline() as p:
        rows = (p
                | "CreatePosts" >> beam.Create([(f"post-{i}", text) for i, text in enumerate(POSTS)])
                | "RunInference" >> RunInference(KeyedModelHandler(handler))
                | "ToRows" >> beam.Map(to_row))
        assert_that(rows, equal_to(expected), label="CheckStars")
