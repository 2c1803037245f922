"""The contract SavedModel served through tfx-bsl's RunInference model handler.

    TF_USE_LEGACY_KERAS=1 python -m models.handlers tfx:bundled "what a great day"

Why tfx-bsl here: `tfx_bsl.public.beam.run_inference.CreateModelHandler` takes an
`InferenceSpecType` proto; with `saved_model_spec` it serves the SavedModel in process through
TensorFlow's own SavedModel loader and its `serving_default` signature (no Keras at all, so the
Keras 2/3 SavedModel question does not arise), and the same handler with `ai_platform_prediction_model_spec`
sends the batches to a Vertex AI / TF Serving-compatible endpoint instead: a deployment change,
not a code change. It feeds each example's bytes straight into the signature's one string input
(`text`), which is exactly the bundled contract, and returns one `PredictionLog` per example.

`TfxContractHandler` adapts that to the project's handler interface: examples `str`, and
`PredictionResult(example=text, inference={"probabilities": float32 [C], "token_count": int|None,
"oov_count": int|None})` in input order. The default `bundled` path stays on Beam's
TFModelHandlerTensor, which bench/run_all.py measures to be faster in process (tfx-bsl builds one
PredictionLog proto per post); `tfx:<dir>` selects this one.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

import models  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from models import locations
from models.serving import as_text, configure_devices

SIGNATURE = "serving_default"


def saved_model_spec(model_dir: str, min_batch_size: int | None = None, max_batch_size: int | None = None):
    """A contract SavedModel directory -> tfx-bsl InferenceSpecType serving it in process."""
    from tfx_bsl.public.proto import model_spec_pb2

    spec = model_spec_pb2.InferenceSpecType(saved_model_spec=model_spec_pb2.SavedModelSpec(
        model_path=model_dir, signature_name=[SIGNATURE]))
    if min_batch_size is not None:
        spec.batch_parameters.min_batch_size = min_batch_size
    if max_batch_size is not None:
        spec.batch_parameters.max_batch_size = max_batch_size
    return spec


def prediction_log_to_inference(log) -> dict:
    """tfx-bsl PredictionLog of one post -> {"probabilities": float32 [C], "token_count", "oov_count"}."""
    import tensorflow as tf

    outputs = log.predict_log.response.outputs
    if "probabilities" not in outputs:
        raise ValueError(f"the serving signature returned {sorted(outputs)}, no 'probabilities'")
    probabilities = tf.make_ndarray(outputs["probabilities"]).astype(np.float32).reshape(-1)

    def count(name):
        return int(tf.make_ndarray(outputs[name]).reshape(-1)[0]) if name in outputs else None

    return {"probabilities": probabilities, "token_count": count("token_count"), "oov_count": count("oov_count")}


class LoadedTfx:
    """What load_model returns: tfx-bsl's handler and its loaded model.

    Scoring is a method (`score`) so that it also works through the proxy RunInference hands
    out with `--model_copies` / `--large_model` (a model in another process).
    """

    def __init__(self, inner, model):
        self.inner, self.model = inner, model

    def score(self, texts: Sequence[str]) -> list[dict]:
        logs = self.inner.run_inference([t.encode("utf-8") for t in texts], self.model)
        return [prediction_log_to_inference(log) for log in logs]


class TfxContractHandler(ModelHandler[str, PredictionResult, Any]):
    """Beam ModelHandler: `str` examples -> PredictionResult, served by tfx-bsl (see module docstring).

    Holds the model's location (models/locations.py); the SavedModel spec proto is built in
    `load_model()` from the directory that location resolves to on the worker.
    """

    def __init__(self, location: str, *, min_batch_size: int | None = None,
                 max_batch_size: int | None = None, max_batch_duration_secs: float | None = None,
                 large_model: bool = False, model_copies: int | None = None):
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size,
                         max_batch_duration_secs=max_batch_duration_secs, large_model=large_model,
                         model_copies=model_copies)
        self._location = location

    def load_model(self) -> LoadedTfx:
        from tfx_bsl.public.beam.run_inference import CreateModelHandler

        configure_devices()
        inner = CreateModelHandler(saved_model_spec(locations.local_dir(self._location)))
        return LoadedTfx(inner, inner.load_model())

    def run_inference(self, batch: Sequence[str], model, inference_args: Optional[dict[str, Any]] = None
                      ) -> Iterable[PredictionResult]:
        texts = [as_text(x) for x in batch]
        if not texts:
            return []
        return [PredictionResult(example=text, inference=inference, model_id=self._location)
                for text, inference in zip(texts, model.score(texts))]

    def get_metrics_namespace(self) -> str:
        return "SentimentPulse_TFX"
