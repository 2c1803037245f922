"""Model handlers: the one place that turns a `--model` value into a Beam ModelHandler + ModelSpec.

    TF_USE_LEGACY_KERAS=1 python -m models.handlers bundled "what a great day" "this is awful"
    TF_USE_LEGACY_KERAS=1 python -m models.handlers path/to/hf-checkpoint "5 stars, would buy again"

`create_model_handler(model)` accepts:

- `"bundled"`: the committed SavedModel in `models/bundled/` (see models/export.py);
- a local directory holding a SavedModel + `model.json` (the model contract);
- a local directory holding a Hugging Face checkpoint (`config.json` + `tf_model.h5` /
  `model.safetensors` + tokenizer files), served by models/hf.py;
- `"tfx:<dir>"` (or `"tfx:bundled"`): the same SavedModel served through tfx-bsl (models/tfx_serving.py);
- `"hf:<hub name>"`, e.g. `hf:nlptown/bert-base-multilingual-uncased-sentiment` (needs network,
  or the model in the local Hugging Face cache).

Every handler takes examples `str` (the cleaned post text) and yields, in input order,
`PredictionResult(example=text, inference={"probabilities": float32 [C], "token_count": int|None,
"oov_count": int|None})`. The pipeline wraps it in `KeyedModelHandler` and `RunInference`.

The SavedModel path is Beam's own `TFModelHandlerTensor` (its `load_model` is
`tf.keras.models.load_model`, which under TF_USE_LEGACY_KERAS=1 is tf_keras and loads the
SavedModel) with `contract_inference_fn`: it calls the model's `serving_default` signature so the
token and out-of-vocabulary counts (the drift signal) come back beside the probabilities.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Iterable, NamedTuple, Optional, Sequence

import models  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from models.contracts import ModelSpec


def _restore_beam_memory_probe() -> None:
    """Beam 2.77's `apache_beam.ml.inference.base` imports `resource` in the same try block as its
    torch-only ModelManager, so without torch `resource` is None there: RunInference then loses
    its model-memory metric and logs 'Resource module is not available' at every model load.
    Put the standard module back (this module is imported wherever a handler is unpickled)."""
    from apache_beam.ml.inference import base

    if getattr(base, "resource", True) is None:
        try:
            import resource
        except ImportError:  # not on this platform: Beam's own fallback stays
            return
        base.resource = resource


_restore_beam_memory_probe()

BUNDLED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bundled")
HF_PREFIX = "hf:"
TFX_PREFIX = "tfx:"
SPEC_FILE = "model.json"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
HF_WEIGHT_FILES = ("tf_model.h5", "model.safetensors", "model.safetensors.index.json",
                   "tf_model.h5.index.json", "pytorch_model.bin")


class ModelSource(NamedTuple):
    """Where a model comes from: kind is "savedmodel" or "tfx" (a contract SavedModel directory, served
    by Beam's TFModelHandlerTensor or by tfx-bsl) or "hf" (a checkpoint directory or hub name)."""

    kind: str
    location: str


def resolve_model(model: str) -> ModelSource:
    """A `--model` value -> ModelSource. Raises ValueError with one sentence for a user's mistake."""
    if not isinstance(model, str) or not model.strip():
        raise ValueError("--model must be 'bundled', a model directory or 'hf:<hub name>'")
    model = model.strip()
    if model.startswith(TFX_PREFIX):
        source = resolve_model(model[len(TFX_PREFIX):].strip() or "bundled")
        if source.kind != "savedmodel":
            raise ValueError(f"{model}: tfx-bsl serves contract SavedModels only, not Hugging Face checkpoints")
        return ModelSource("tfx", source.location)
    if model.startswith(HF_PREFIX):
        name = model[len(HF_PREFIX):].strip()
        if not name:
            raise ValueError("--model hf: needs a Hugging Face hub name, e.g. "
                             "hf:nlptown/bert-base-multilingual-uncased-sentiment")
        if os.path.isdir(name):
            return resolve_model(name)
        return ModelSource("hf", name)
    path = BUNDLED_DIR if model == "bundled" else os.path.abspath(os.path.expanduser(model))
    if not os.path.isdir(path):
        if model == "bundled":
            raise ValueError(f"the bundled model is missing: {path} does not exist (run `make train`)")
        raise ValueError(f"model directory {model} does not exist")
    files = set(os.listdir(path))
    if files & set(SAVED_MODEL_FILES):
        if SPEC_FILE not in files:
            raise ValueError(f"{model} holds a SavedModel but no {SPEC_FILE} describing its classes")
        return ModelSource("savedmodel", path)
    if "config.json" in files:
        if not files & set(HF_WEIGHT_FILES):
            raise ValueError(f"{model} holds a Hugging Face config.json but no weights "
                             f"({', '.join(HF_WEIGHT_FILES[:2])})")
        return ModelSource("hf", path)
    if model == "bundled":
        raise ValueError(f"the bundled model is missing: {path} holds no SavedModel (run `make train`)")
    raise ValueError(f"{model} is neither a SavedModel with {SPEC_FILE} nor a Hugging Face checkpoint")


def _as_text(example) -> str:
    if isinstance(example, str):
        return example
    if isinstance(example, bytes):
        return example.decode("utf-8", errors="replace")
    raise TypeError(f"model examples must be str, got {type(example).__name__}")


def text_length(example) -> int:
    """Example `str` or keyed `(key, str)` -> its length in characters (Beam's length-aware batching).

    KeyedModelHandler hands BatchElements the keyed tuples, so the text is the last item.
    """
    if isinstance(example, tuple):
        example = example[-1]
    return len(example) if isinstance(example, (str, bytes)) else 0


def _int_or_none(values, i: int) -> int | None:
    return None if values is None else int(values[i])


def contract_inference_fn(model, batch: Sequence[str], inference_args: Optional[dict[str, Any]] = None,
                          model_id: Optional[str] = None) -> Iterable[PredictionResult]:
    """TFModelHandlerTensor inference_fn: texts `str [batch]` -> one PredictionResult per text, in order.

    Calls the `serving_default` signature (probabilities + token/OOV counts); a model without
    it is called directly and gives probabilities only.
    """
    import tensorflow as tf

    texts = [_as_text(x) for x in batch]
    if not texts:
        return []
    tensor = tf.constant(texts, dtype=tf.string)
    signatures = getattr(model, "signatures", None)
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
        probabilities = np.asarray(model(tensor, training=False, **(inference_args or {})))
    probabilities = probabilities.astype(np.float32, copy=False)
    if probabilities.ndim != 2 or probabilities.shape[0] != len(texts):
        raise ValueError(f"model returned probabilities of shape {probabilities.shape} for {len(texts)} texts")
    return [
        PredictionResult(example=text, inference={"probabilities": probabilities[i],
                                                  "token_count": _int_or_none(tokens, i),
                                                  "oov_count": _int_or_none(oov, i)},
                         model_id=model_id)
        for i, text in enumerate(texts)
    ]


def _batching(min_batch_size, max_batch_size, max_batch_duration_secs) -> dict:
    kwargs = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size,
              "max_batch_duration_secs": max_batch_duration_secs}
    if min_batch_size is not None and max_batch_size is not None and min_batch_size > max_batch_size:
        raise ValueError(f"min_batch_size {min_batch_size} is larger than max_batch_size {max_batch_size}")
    return {k: v for k, v in kwargs.items() if v is not None}


def savedmodel_handler(model_dir: str, **batching) -> ModelHandler:
    """A contract SavedModel directory -> Beam's TFModelHandlerTensor with contract_inference_fn."""
    from apache_beam.ml.inference.tensorflow_inference import TFModelHandlerTensor

    # compile=False: serving needs no optimizer or metrics, and skips a warning per worker.
    return TFModelHandlerTensor(model_dir, inference_fn=contract_inference_fn,
                                load_model_args={"compile": False}, **batching)


def create_model_handler(model: str = "bundled", *, min_batch_size: int | None = None,
                         max_batch_size: int | None = None, max_batch_duration_secs: float | None = None,
                         max_length: int | None = None) -> tuple[ModelHandler, ModelSpec]:
    """`--model` value -> (ModelHandler of str examples, ModelSpec mapping its probabilities).

    Nothing heavy happens here: the model loads in the handler's `load_model()` on the worker.
    Raises ValueError (one sentence) for a missing or unrecognised model.
    """
    source = resolve_model(model)
    batching = _batching(min_batch_size, max_batch_size, max_batch_duration_secs)
    if source.kind in ("savedmodel", "tfx"):
        try:
            spec = ModelSpec.load(source.location)
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"{model}/{SPEC_FILE} is not a valid model description: {e}") from None
        # max_length is the bundled graph's own (its TextVectorization truncates at it).
        if source.kind == "tfx":
            from models.tfx_serving import TfxContractHandler, saved_model_spec

            return TfxContractHandler(saved_model_spec(source.location), **batching), spec
        return savedmodel_handler(source.location, **batching), spec
    from models import hf

    return hf.create_hf_handler(source.location, max_length=max_length, **batching)


def main(argv: Sequence[str] | None = None) -> int:
    """Score a few texts from the command line: `python -m models.handlers MODEL TEXT...`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2:
        print("usage: python -m models.handlers MODEL TEXT [TEXT...]", file=sys.stderr)
        return 2
    try:
        handler, spec = create_model_handler(argv[0])
        loaded = handler.load_model()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for result in handler.run_inference(argv[1:], loaded):
        p = spec.predict(result.inference["probabilities"])
        print(f"{p.label:8s} score={p.score:+.3f} stars={p.stars} confidence={p.confidence:.3f} "
              f"tokens={result.inference['token_count']} oov={result.inference['oov_count']}  {result.example}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
