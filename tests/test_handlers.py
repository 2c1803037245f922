"""models/handlers.py: --model resolution, and the SavedModel contract served through RunInference."""
import os
import pickle

import models  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from models.contracts import ModelSpec
from models.handlers import BUNDLED_DIR, create_model_handler, resolve_model, text_length

# (text, token_count, oov_count) under bench.contract_model's vocabulary, which lower-cases
# and splits "!" off: "Awful" is in the vocabulary, "weather" and "sunday" are not.
CASES = [
    ("good great love", 3, 0),
    ("Awful weather !", 3, 1),
    ("", 0, 0),
    ("not bad , sunday", 4, 2),
    ("I hate it", 3, 1),
]


@pytest.fixture(scope="module")
def contract_model_dir(tmp_path_factory):
    """A small untrained SavedModel of the bundled contract, exported by models.export."""
    from bench.contract_model import export_contract_model

    return export_contract_model(str(tmp_path_factory.mktemp("contract") / "model"))


@pytest.mark.parametrize("model, message", [
    ("/no/such/dir", "does not exist"),
    ("hf:", "needs a Hugging Face hub name"),
    ("  ", "must be 'bundled'"),
])
def test_bad_model_values_raise_one_sentence(model, message):
    with pytest.raises(ValueError, match=message):
        create_model_handler(model)


def test_directory_of_neither_kind_raises(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="neither a SavedModel"):
        create_model_handler(str(tmp_path))


def test_savedmodel_without_model_json_raises(tmp_path, contract_model_dir):
    (tmp_path / "saved_model.pb").write_bytes(open(os.path.join(contract_model_dir, "saved_model.pb"), "rb").read())
    with pytest.raises(ValueError, match="no model.json"):
        create_model_handler(str(tmp_path))


def test_hf_config_without_weights_raises(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no weights"):
        resolve_model(str(tmp_path))


def test_resolves_kinds(contract_model_dir):
    assert resolve_model(contract_model_dir) == ("savedmodel", contract_model_dir)
    assert resolve_model("hf:nlptown/bert-base-multilingual-uncased-sentiment") == (
        "hf", "nlptown/bert-base-multilingual-uncased-sentiment")
    assert resolve_model("hf:" + contract_model_dir) == ("savedmodel", contract_model_dir)


def test_text_length_reads_keyed_examples():
    assert text_length("abcd") == 4
    assert text_length(("post-1", "abc")) == 3


def test_handler_spec_batching_and_pickling(contract_model_dir):
    handler, spec = create_model_handler(contract_model_dir, min_batch_size=2, max_batch_size=64,
                                         max_batch_duration_secs=5)
    assert spec == ModelSpec.load(contract_model_dir)
    assert spec.version == "contract-model-untrained"
    assert handler.batch_elements_kwargs() == {"min_batch_size": 2, "max_batch_size": 64,
                                               "max_batch_duration_secs": 5}
    clone = pickle.loads(pickle.dumps(handler))
    assert clone.batch_elements_kwargs() == handler.batch_elements_kwargs()
    with pytest.raises(ValueError, match="larger than max_batch_size"):
        create_model_handler(contract_model_dir, min_batch_size=10, max_batch_size=2)


def test_run_inference_keeps_order_and_counts(contract_model_dir):
    handler, spec = create_model_handler(contract_model_dir)
    model = handler.load_model()
    texts = [c[0] for c in CASES]
    results = list(handler.run_inference(texts, model))
    assert [r.example for r in results] == texts
    for result, (_text, tokens, oov) in zip(results, CASES):
        probs = result.inference["probabilities"]
        assert probs.dtype == np.float32 and probs.shape == (3,)
        assert probs.sum() == pytest.approx(1.0, abs=1e-5)
        assert (result.inference["token_count"], result.inference["oov_count"]) == (tokens, oov)
        assert spec.predict(probs).label in ("negative", "neutral", "positive")
    # The same text scores the same alone as inside a batch.
    alone = list(handler.run_inference([texts[3]], model))[0].inference["probabilities"]
    np.testing.assert_allclose(alone, results[3].inference["probabilities"], rtol=1e-5)


@pytest.mark.integration
def test_bundled_contract_through_runinference(contract_model_dir):
    handler, _spec = create_model_handler(contract_model_dir, max_batch_size=2)
    expected = [(f"post-{i}", text, tokens, oov) for i, (text, tokens, oov) in enumerate(CASES)]

    def summarise(keyed):
        key, result = keyed
        probs = result.inference["probabilities"]
        assert abs(float(probs.sum()) - 1.0) < 1e-5 and probs.shape == (3,)
        return key, result.example, result.inference["token_count"], result.inference["oov_count"]

    with TestPipeline() as p:
        scored = (p
                  | "CreatePosts" >> beam.Create([(key, text) for key, text, _t, _o in expected])
                  | "RunInference" >> RunInference(KeyedModelHandler(handler))
                  | "Summarise" >> beam.Map(summarise))
        assert_that(scored, equal_to(expected), label="CheckScored")


@pytest.mark.skipif(not os.path.exists(os.path.join(BUNDLED_DIR, "model.json")),
                    reason="models/bundled/ is not built yet (make train)")
def test_committed_bundled_model_serves_through_handler():
    handler, spec = create_model_handler("bundled")
    results = list(handler.run_inference(["I love this, it is great!", "This is awful and I hate it."],
                                         handler.load_model()))
    labels = [spec.predict(r.inference["probabilities"]).label for r in results]
    assert labels == ["positive", "negative"]
    assert all(r.inference["token_count"] > 0 for r in results)


# ---- tfx-bsl (models/tfx_serving.py) -------------------------------------------------------

def test_tfx_handler_matches_tf_handler(contract_model_dir):
    from models.tfx_serving import TfxContractHandler

    tfx_handler, tfx_spec = create_model_handler("tfx:" + contract_model_dir, max_batch_size=8)
    assert isinstance(tfx_handler, TfxContractHandler)
    assert tfx_spec == ModelSpec.load(contract_model_dir)
    tfx_handler = pickle.loads(pickle.dumps(tfx_handler))
    tf_handler, _ = create_model_handler(contract_model_dir)
    texts = [c[0] for c in CASES]
    via_tfx = list(tfx_handler.run_inference(texts, tfx_handler.load_model()))
    via_tf = list(tf_handler.run_inference(texts, tf_handler.load_model()))
    assert [r.example for r in via_tfx] == texts
    for a, b in zip(via_tfx, via_tf):
        np.testing.assert_allclose(a.inference["probabilities"], b.inference["probabilities"], rtol=1e-5)
        assert (a.inference["token_count"], a.inference["oov_count"]) == (
            b.inference["token_count"], b.inference["oov_count"])


@pytest.mark.integration
def test_tfx_handler_through_runinference(contract_model_dir):
    handler, _spec = create_model_handler("tfx:" + contract_model_dir, max_batch_size=2)
    expected = [(f"post-{i}", tokens, oov) for i, (_text, tokens, oov) in enumerate(CASES)]
    with TestPipeline() as p:
        counts = (p
                  | "CreatePosts" >> beam.Create([(f"post-{i}", c[0]) for i, c in enumerate(CASES)])
                  | "RunInference" >> RunInference(KeyedModelHandler(handler))
                  | "Counts" >> beam.MapTuple(lambda key, r: (key, r.inference["token_count"],
                                                              r.inference["oov_count"])))
        assert_that(counts, equal_to(expected), label="CheckCounts")


def test_tfx_prefix_rejects_hf_checkpoints(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tf_model.h5").write_bytes(b"")
    with pytest.raises(ValueError, match="tfx-bsl serves contract SavedModels only"):
        create_model_handler("tfx:" + str(tmp_path))


def test_run_inference_can_measure_model_memory():
    # Beam 2.77 loses `resource` without torch installed; models.handlers puts it back, so
    # RunInference's model-memory metric works and model loads log no warning.
    from apache_beam.ml.inference import base

    assert base.resource is not None
    assert base._get_current_process_memory_in_bytes() > 0


def test_is_transient_judges_an_error_by_its_classes_not_its_exact_class():
    """A reset connection (a ConnectionError subclass, and subclasses of that) is worth a retry:
    judged by the exact class only, a brief outage would dead-letter valid posts."""
    from transforms.inference import is_transient

    class ResetByProxy(ConnectionResetError):
        pass

    assert is_transient(ConnectionResetError(104, "Connection reset by peer"))
    assert is_transient(ResetByProxy("reset"))
    assert is_transient(BrokenPipeError()) and is_transient(TimeoutError())
    assert not is_transient(ValueError("bad input")) and not is_transient(KeyError("text"))
