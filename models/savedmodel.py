"""The contract SavedModel served through Beam's TFModelHandlerTensor.

`ContractSavedModelHandler(location)`: examples `str` (cleaned post text) ->
`PredictionResult(example=text, inference={"probabilities": float32 [C], "token_count": int|None,
"oov_count": int|None}, model_id=location)`, calling the model's `serving_default` signature so
the token and out-of-vocabulary counts (the drift signal) come back beside the probabilities.
Chosen by models/handlers.py for `bundled` and any directory holding a SavedModel + model.json.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Optional, Sequence

import models  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.ml.inference.tensorflow_inference import TFModelHandlerTensor

from models import locations
from models.serving import as_text, configure_devices

_LOG = logging.getLogger(__name__)


def _int_or_none(values, i: int) -> int | None:
    return None if values is None else int(values[i])


class ContractModel:
    """A loaded contract SavedModel: what the SavedModel handler's `load_model()` returns.

    Scoring is a method (`score`), not attribute access on the Keras model, because with
    `--model_copies` / `--large_model` RunInference hands `run_inference` a proxy to a model
    living in another process, and such a proxy forwards method calls only.
    """

    def __init__(self, model):
        self.model = model

    def score(self, texts: Sequence[str], inference_args: Optional[dict[str, Any]] = None):
        """Texts -> (float32 [n, C] probabilities, int [n] token counts | None, int [n] OOV counts | None).

        Calls the `serving_default` signature (probabilities + token/OOV counts); a model
        without it is called directly and gives probabilities only.
        """
        import tensorflow as tf

        tensor = tf.constant(list(texts), dtype=tf.string)
        signatures = getattr(self.model, "signatures", None)
        serve = signatures.get("serving_default") if signatures is not None else None
        tokens = oov = None
        if serve is not None:
            outputs = serve(text=tensor)
            probabilities = outputs["probabilities"].numpy()
            if "token_count" in outputs:
                tokens = outputs["token_count"].numpy()
            if "oov_count" in outputs:
                oov = outputs["oov_count"].numpy()
        else:
            probabilities = np.asarray(self.model(tensor, training=False, **(inference_args or {})))
        return probabilities.astype(np.float32, copy=False), tokens, oov


def contract_inference_fn(model, batch: Sequence[str], inference_args: Optional[dict[str, Any]] = None,
                          model_id: Optional[str] = None) -> Iterable[PredictionResult]:
    """TFModelHandlerTensor inference_fn: texts `str [batch]` -> one PredictionResult per text, in order.

    `model` is a ContractModel, a proxy to one (model_copies), or a bare loaded SavedModel.
    """
    texts = [as_text(x) for x in batch]
    if not texts:
        return []
    scorer = model if hasattr(model, "score") else ContractModel(model)
    probabilities, tokens, oov = scorer.score(texts, inference_args)
    if probabilities.ndim != 2 or probabilities.shape[0] != len(texts):
        raise ValueError(f"model returned probabilities of shape {probabilities.shape} for {len(texts)} texts")
    return [
        PredictionResult(example=text, inference={"probabilities": probabilities[i],
                                                  "token_count": _int_or_none(tokens, i),
                                                  "oov_count": _int_or_none(oov, i)},
                         model_id=model_id)
        for i, text in enumerate(texts)
    ]



class ContractSavedModelHandler(TFModelHandlerTensor):
    """Beam's TFModelHandlerTensor for a contract SavedModel, loaded from its location on the worker.

    Beam's handler loads `model_uri` as given; here the URI is a location name ("bundled",
    gs://..., a local directory) that `load_model` resolves on the machine it runs on
    (models/locations.py), after turning on GPU memory growth, and the model comes back as a
    ContractModel. Batching, `large_model` / `model_copies`, metrics and `update_model_path`
    stay Beam's.
    """

    def __init__(self, location: str, **kwargs):
        # compile=False: serving needs no optimizer or metrics, and skips a warning per worker.
        super().__init__(location, inference_fn=contract_inference_fn, load_model_args={"compile": False},
                         **kwargs)

    def update_model_path(self, model_path: Optional[str] = None):
        """A model swap (RunInference's model_metadata side input): `model_path` is a registry pointer
        (`REGISTRY/pointers/*.json`, what the job's WatchFilePattern emits) or a model location. An
        empty path (WatchFilePattern's "nothing newer than the job") keeps the current model."""
        if not model_path:
            return
        if model_path.endswith(".json"):
            from models import registry

            try:
                model_path = registry.read_pointer(model_path).location
            except registry.RegistryError as e:  # a broken promotion never stops the scoring
                _LOG.error("model swap refused, %s keeps scoring: %s", self._model_uri, e)
                return
        self._model_uri = model_path

    @property
    def location(self) -> str:
        """Where the model that load_model() loads lives now (it changes with update_model_path)."""
        return self._model_uri

    def load_model(self) -> ContractModel:
        import tensorflow as tf

        configure_devices()
        path = locations.local_dir(self._model_uri)
        return ContractModel(tf.keras.models.load_model(path, **self._load_model_args))


