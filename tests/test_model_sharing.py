"""GPU memory growth for every TensorFlow model, and Beam's model sharing (--model_copies,
--large_model) through the job's handlers.

No GPU here: `tf.config.list_physical_devices("GPU")` is answered with stand-in devices and
`set_memory_growth` is recorded, which is exactly what each handler's load_model must call
before it builds a model. The sharing runs for real: with model_copies, RunInference loads the
model behind Beam's multi_process_shared and hands run_inference a proxy that forwards method
calls only, which the handlers must work through.
"""
import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.testing.util import assert_that, equal_to

from models.handlers import create_model_handler
from transforms.inference import IsolateFailures

TEXTS = ["I love this, it is great", "this is awful and I hate it", "the flight is at noon", "meh"]


class FakeGPU:
    def __init__(self, i):
        self.name, self.device_type = f"/physical_device:GPU:{i}", "GPU"


@pytest.fixture
def two_gpus(monkeypatch):
    grown = []
    real = tf.config.list_physical_devices
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: [FakeGPU(0), FakeGPU(1)] if kind == "GPU" else real(kind))
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth", lambda d, on: grown.append((d.name, on)))
    # The models are still placed where TensorFlow can put them (this machine's CPU).
    monkeypatch.setattr(tf, "device", lambda name: tf.init_scope() if False else _NoDevice())
    return grown


class _NoDevice:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("kind", ["savedmodel", "tfx", "hf"])
def test_every_tensorflow_model_turns_on_memory_growth_before_it_loads(kind, two_gpus, tiny_bundled_model,
                                                                       tiny_bert_dir):
    model = {"savedmodel": tiny_bundled_model, "tfx": "tfx:" + tiny_bundled_model, "hf": tiny_bert_dir}[kind]
    handler, _ = create_model_handler(model)
    loaded = handler.load_model()
    assert two_gpus == [("/physical_device:GPU:0", True), ("/physical_device:GPU:1", True)]
    assert len(list(handler.run_inference(TEXTS, loaded))) == len(TEXTS)


@pytest.mark.parametrize("kwargs, shared, copies", [({}, False, 1), ({"large_model": True}, True, 1),
                                                     ({"model_copies": 2}, True, 2)])
def test_sharing_options_reach_beam_through_the_job_wrappers(kwargs, shared, copies, tiny_bundled_model):
    handler, _ = create_model_handler(tiny_bundled_model, **kwargs)
    wrapped = KeyedModelHandler(IsolateFailures(handler))
    assert (wrapped.share_model_across_processes(), wrapped.model_copies()) == (shared, copies)


def test_model_copies_below_one_is_refused(tiny_bundled_model):
    with pytest.raises(ValueError, match="model_copies must be at least 1"):
        create_model_handler(tiny_bundled_model, model_copies=0)


@pytest.mark.integration
@pytest.mark.parametrize("prefix", ["", "tfx:"])
def test_a_shared_model_scores_like_a_private_one(prefix, tiny_bundled_model):
    private, _ = create_model_handler(prefix + tiny_bundled_model)
    expected = [(f"k{i}", [round(float(p), 5) for p in r.inference["probabilities"]])
                for i, r in enumerate(private.run_inference(TEXTS, private.load_model()))]
    shared, _ = create_model_handler(prefix + tiny_bundled_model, model_copies=1, max_batch_size=2)

    def summarise(kv):
        key, result = kv
        return key, [round(float(p), 5) for p in result.inference["probabilities"]]

    with beam.Pipeline("BundleBasedDirectRunner") as p:
        out = (p | beam.Create([(f"k{i}", t) for i, t in enumerate(TEXTS)])
               | RunInference(KeyedModelHandler(IsolateFailures(shared)))
               | beam.Map(summarise))
        assert_that(out, equal_to(expected))
    assert np.isfinite([v for _, probs in expected for v in probs]).all()
