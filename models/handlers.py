"""Model handlers: the one place that turns a `--model` value into a Beam ModelHandler + ModelSpec.

    TF_USE_LEGACY_KERAS=1 python -m models.handlers bundled "what a great day" "this is awful"
    TF_USE_LEGACY_KERAS=1 python -m models.handlers path/to/hf-checkpoint "5 stars, would buy again"

`create_model_handler(model)` accepts:

- `"bundled"`: the committed SavedModel in `models/bundled/` (see models/export.py), found by
  name inside the package where it is loaded (a worker's site-packages, not the launcher's path);
- a directory holding a SavedModel + `model.json` (the model contract): local, or any URI
  Beam's FileSystems reads (`gs://bucket/models/sentiment`), copied to the worker when it loads
  (models/locations.py);
- a directory holding a Hugging Face checkpoint (`config.json` + `tf_model.h5` /
  `model.safetensors` + tokenizer files), local or gs://, served by models/hf.py;
- `"tfx:<dir>"` (or `"tfx:bundled"`): the same SavedModel served through tfx-bsl (models/tfx_serving.py);
- `"hf:<hub name>"`, e.g. `hf:nlptown/bert-base-multilingual-uncased-sentiment` (needs network,
  or the model in the local Hugging Face cache).

Every handler takes examples `str` (the cleaned post text) and yields, in input order,
`PredictionResult(example=text, inference={"probabilities": float32 [C], "token_count": int|None,
"oov_count": int|None})`. The pipeline wraps it in `KeyedModelHandler` and `RunInference`.

The SavedModel path is Beam's own `TFModelHandlerTensor` (models/savedmodel.py: its
`load_model` is `tf.keras.models.load_model`, which under TF_USE_LEGACY_KERAS=1 is tf_keras and
loads the SavedModel) with `contract_inference_fn`: it calls the model's `serving_default`
signature so the token and out-of-vocabulary counts (the drift signal) come back beside the
probabilities. `large_model` / `model_copies` are Beam's model sharing, for every kind.

Imports: this module imports models.savedmodel, models.hf and models.tfx_serving (lazily);
they import only models.serving and models.locations, never this module.
"""
from __future__ import annotations

import logging
import os
import re
import sys
from typing import NamedTuple, Sequence

import models  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from apache_beam.ml.inference.base import ModelHandler

from models import locations
from models.contracts import ModelSpec
from models.locations import BUNDLED
from models.serving import text_length  # noqa: F401  (re-exported: tests and callers use it here)

_LOG = logging.getLogger(__name__)
_LOGGED: set[tuple[str, str]] = set()  # launch warnings already given in this process


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

BUNDLED_DIR = locations.bundled_dir()  # this machine's copy; workers resolve "bundled" in their own package
HF_PREFIX = "hf:"
TFX_PREFIX = "tfx:"
SPEC_FILE = "model.json"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
HF_WEIGHT_FILES = ("tf_model.h5", "model.safetensors", "model.safetensors.index.json",
                   "tf_model.h5.index.json", "pytorch_model.bin")


REGISTRY_PREFIX = "registry:"
_LANG_FLAG = re.compile(r"^(\*|[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*)=(.+)$")


class ModelSource(NamedTuple):
    """Where a model comes from: kind is "savedmodel" or "tfx" (a contract SavedModel directory, served
    by Beam's TFModelHandlerTensor or by tfx-bsl) or "hf" (a checkpoint directory or hub name).

    location is what the workers resolve when they load (models/locations.py): "bundled", a
    URI read through Beam's FileSystems (gs://...), an absolute local directory, or a hub name.
    """

    kind: str
    location: str


def _top_level_names(location: str) -> set[str] | None:
    """The names directly inside a model location, or None when it is not a directory there."""
    if location == BUNDLED:
        path = locations.bundled_dir()
        return set(os.listdir(path)) if os.path.isdir(path) else None
    if locations.is_remote(location):
        try:
            return {relative.split("/", 1)[0] for relative in locations.list_files(location)}
        except FileNotFoundError:
            return None
    return set(os.listdir(location)) if os.path.isdir(location) else None


def resolve_model(model: str) -> ModelSource:
    """A `--model` value -> ModelSource. Raises ValueError with one sentence for a user's mistake."""
    if not isinstance(model, str) or not model.strip():
        raise ValueError("--model must be 'bundled', a model directory (local or gs://) or 'hf:<hub name>'")
    model = model.strip()
    if model.startswith(REGISTRY_PREFIX):
        return _resolve_registry(model[len(REGISTRY_PREFIX):].strip())
    if model.startswith(TFX_PREFIX):
        source = resolve_model(model[len(TFX_PREFIX):].strip() or BUNDLED)
        if source.kind != "savedmodel":
            raise ValueError(f"{model}: tfx-bsl serves contract SavedModels only, not Hugging Face checkpoints")
        return ModelSource("tfx", source.location)
    if model.startswith(HF_PREFIX):
        name = model[len(HF_PREFIX):].strip()
        if not name:
            raise ValueError("--model hf: needs a Hugging Face hub name, e.g. "
                             "hf:nlptown/bert-base-multilingual-uncased-sentiment")
        if os.path.isdir(name) or locations.is_remote(name):
            return resolve_model(name)
        return ModelSource("hf", name)
    if model == BUNDLED:
        location = BUNDLED
    elif locations.is_remote(model):
        location = model.rstrip("/")
    else:
        location = os.path.abspath(os.path.expanduser(model))
    files = _top_level_names(location)
    if files is None:
        if model == BUNDLED:
            raise ValueError(f"the bundled model is missing: {locations.bundled_dir()} does not exist (run `make train`)")
        raise ValueError(f"model directory {model} does not exist")
    if files & set(SAVED_MODEL_FILES):
        if SPEC_FILE not in files:
            raise ValueError(f"{model} holds a SavedModel but no {SPEC_FILE} describing its classes")
        return ModelSource("savedmodel", location)
    if "config.json" in files:
        if not files & set(HF_WEIGHT_FILES):
            raise ValueError(f"{model} holds a Hugging Face config.json but no weights "
                             f"({', '.join(HF_WEIGHT_FILES[:2])})")
        return ModelSource("hf", location)
    if model == BUNDLED:
        raise ValueError(f"the bundled model is missing: {locations.bundled_dir()} holds no SavedModel (run `make train`)")
    raise ValueError(f"{model} is neither a SavedModel with {SPEC_FILE} nor a Hugging Face checkpoint")


def _resolve_registry(where: str) -> ModelSource:
    """`registry:DIR` -> the registry's current version (a contract SavedModel), watched by the job."""
    from models import registry

    root = registry_root(REGISTRY_PREFIX + where)
    try:
        if registry.current(root) is None:
            raise ValueError(f"model registry {where} has no current model "
                             f"(run `pulse registry init --registry {where}`)")
        pointer, refused = registry.serving(root)
    except registry.RegistryError as e:
        raise ValueError(str(e)) from None
    if pointer is None:
        raise ValueError(f"model registry {where}: no promoted version can serve ({refused[0][1]}; "
                         f"promote a version that loads)")
    if refused and (root, pointer.location) not in _LOGGED:
        _LOGGED.add((root, pointer.location))
        _LOG.error("model registry %s: %s; the job starts on version %s (promoted %s), the newest that loads",
                   where, "; ".join(why for _, why in refused), pointer.version, pointer.promoted_at)
    source = resolve_model(pointer.location)
    if source.kind != "savedmodel":
        raise ValueError(f"model registry {where}: its current version {pointer.version} is not a contract SavedModel")
    return ModelSource("savedmodel", source.location)


def registry_root(model: str) -> str | None:
    """`registry:DIR` -> the registry's directory (absolute, or the URI); None for any other model."""
    if not isinstance(model, str) or not model.strip().startswith(REGISTRY_PREFIX):
        return None
    where = model.strip()[len(REGISTRY_PREFIX):].strip()
    if not where:
        raise ValueError("--model registry: needs the registry's directory, e.g. registry:gs://bucket/models")
    return where.rstrip("/") if locations.is_remote(where) else os.path.abspath(os.path.expanduser(where))


def only_on_this_machine(source: ModelSource) -> bool:
    """True for a model in a local directory: workers on other machines cannot read it."""
    return os.path.isabs(source.location) and os.path.isdir(source.location)


def load_spec(location: str) -> ModelSpec:
    """The model.json of a contract SavedModel location (bundled, local or any FileSystems URI)."""
    import json

    if location == BUNDLED:
        return ModelSpec.load(locations.bundled_dir())
    return ModelSpec.from_dict(json.loads(locations.read_bytes(location, SPEC_FILE)))


def _batching(min_batch_size, max_batch_size, max_batch_duration_secs) -> dict:
    kwargs = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size,
              "max_batch_duration_secs": max_batch_duration_secs}
    if min_batch_size is not None and max_batch_size is not None and min_batch_size > max_batch_size:
        raise ValueError(f"min_batch_size {min_batch_size} is larger than max_batch_size {max_batch_size}")
    return {k: v for k, v in kwargs.items() if v is not None}


def _sharing(large_model: bool, model_copies: int | None) -> dict:
    """Beam's model sharing: model_copies N loads N models per worker machine, in processes of
    their own, shared by every SDK process there (one per GPU); large_model alone means N = 1."""
    if model_copies is not None and model_copies < 1:
        raise ValueError(f"model_copies must be at least 1, got {model_copies}")
    out = {}
    if large_model:
        out["large_model"] = True
    if model_copies is not None:
        out["model_copies"] = model_copies
    return out


def create_model_handler(model: str = BUNDLED, *, min_batch_size: int | None = None,
                         max_batch_size: int | None = None, max_batch_duration_secs: float | None = None,
                         max_length: int | None = None, large_model: bool = False,
                         model_copies: int | None = None) -> tuple[ModelHandler, ModelSpec]:
    """`--model` value -> (ModelHandler of str examples, ModelSpec mapping its probabilities).

    Nothing heavy happens here: the model loads in the handler's `load_model()` on the worker,
    from the location resolved there. Raises ValueError (one sentence) for a missing or
    unrecognised model.
    """
    source = resolve_model(model)
    kwargs = {**_batching(min_batch_size, max_batch_size, max_batch_duration_secs),
              **_sharing(large_model, model_copies)}
    if source.kind in ("savedmodel", "tfx"):
        try:
            spec = load_spec(source.location)
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"{model}/{SPEC_FILE} is not a valid model description: {e}") from None
        # max_length is the bundled graph's own (its TextVectorization truncates at it).
        if source.kind == "tfx":
            from models.tfx_serving import TfxContractHandler

            return TfxContractHandler(source.location, **kwargs), spec
        from models.savedmodel import ContractSavedModelHandler

        return ContractSavedModelHandler(source.location, **kwargs), spec
    from models import hf

    return hf.create_hf_handler(source.location, max_length=max_length, **kwargs)


def split_model_flag(value: str) -> tuple[str | None, str]:
    """A `--model` value -> (language, model): `en=bundled` -> ('en', 'bundled'), `*=DIR` -> ('*', 'DIR'),
    `bundled` -> (None, 'bundled'). A value whose left of '=' is not a language tag is a model."""
    match = _LANG_FLAG.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        return None, value
    return match.group(1).lower().replace("_", "-"), match.group(2).strip()


class SpecLookup:
    """model_id (a contract SavedModel's location) -> its ModelSpec, read once per process.

    Given to the job's ScorePosts: after a swap, rows carry the version (and class mapping) of
    the model that scored them. A model_id that is not a contract model's location (a Hugging
    Face checkpoint name) or cannot be read gives the route's launch spec.
    """

    _cache: dict = {}

    def __call__(self, model_id: str | None, fallback: ModelSpec) -> ModelSpec:
        if not model_id:
            return fallback
        spec = self._cache.get(model_id)
        if spec is None:
            try:
                spec = load_spec(model_id)
            except Exception:  # noqa: BLE001  (not a contract model: the launch spec describes it)
                spec = False
            self._cache[model_id] = spec
        return spec or fallback


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
