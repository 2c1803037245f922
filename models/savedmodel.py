"""The contract SavedModel served through Beam's TFModelHandlerTensor.

`ContractSavedModelHandler(location)`: examples `str` (cleaned post text) ->
`PredictionResult(example=text, inference={"probabilities": float32 [C], "token_count": int|None,
"oov_count": int|None}, model_id=location)`, calling the model's `serving_default` signature so
the token and out-of-vocabulary counts (the drift signal) come back beside the probabilities.
Chosen by models/handlers.py for `bundled` and any directory holding a SavedModel + model.json.

Every row names the model that really scored it: `model_id` is the location of the model that
`load_model` returned (ContractModel.source()), not the handler's latest path, which Beam's
RunInference DoFn sets with `update_model_path` after every load, whatever the load did.

A version is usable when `vet` passes: model.json is a spec the job can read (classes, class
scores, languages), the SavedModel loads, and a probe batch (PROBE_TEXTS) comes back as one
row of len(classes) probabilities per text. The registry runs it before a promotion
(models/registry.py), the handler after every load of a swapped-in version: one it cannot use
is logged once and the model that scored before keeps scoring (in the process that loads, so
with --model_copies in the model server too).
"""
from __future__ import annotations

import json
import logging
import math
import re
import threading
from typing import Any, Iterable, Optional, Sequence

import models  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.ml.inference.tensorflow_inference import TFModelHandlerTensor

from models import locations, pointers
from models.contracts import LABELS, ModelSpec
from models.serving import as_text, configure_devices

_LOG = logging.getLogger(__name__)

# A probe batch: several languages, emoji, a long and a one-word text. Every usable model answers
# each with one row of len(classes) probabilities (whatever it thinks of the text).
PROBE_TEXTS = ("I love this phone", "the worst service I have ever had", "the app opens at nine",
               "Das ist wirklich großartig", "这个手机很好", "😀🔥", "ok",
               "battery " * 300)
_LANGUAGE_CODE = re.compile(r"^(\*|[a-z]{2,3}(-[a-z0-9]{1,8})*)$")
SPEC_FILE = "model.json"


def read_spec(location: str) -> ModelSpec:
    """model.json of a contract SavedModel location (bundled, local, any FileSystems URI) -> ModelSpec
    the job can use; ValueError (one sentence) when it is missing, not JSON, or not a valid spec."""
    try:
        if location == locations.BUNDLED:
            raw = open(f"{locations.bundled_dir()}/{SPEC_FILE}", "rb").read()
        else:
            raw = locations.read_bytes(location, SPEC_FILE)
        body = json.loads(raw.decode("utf-8"))
        if not isinstance(body, dict):
            raise ValueError("it is not a JSON object")
        spec = ModelSpec.from_dict(body)
    except Exception as e:  # noqa: BLE001  (unreadable, not JSON, not a spec: one verdict)
        raise ValueError(f"{location}/{SPEC_FILE} is not a model description the job can use: "
                         f"{_one_line(e)}") from None
    for code in spec.languages or ():
        if not _LANGUAGE_CODE.match(code):
            raise ValueError(f"{location}/{SPEC_FILE}: languages holds {code[:20]!r}, not a language code "
                             "(such as \"en\", \"pt-br\", or \"*\" for any)")
    return spec


def _one_line(error) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(error).__name__


def check_output(spec: ModelSpec, probabilities, n: int) -> None:
    """A model's probabilities for n probe texts vs its model.json; ValueError (one sentence) when a
    job could not turn them into rows: not [n, len(classes)], not finite, outside [0, 1], rows that
    do not sum to 1, or a label outside the contract's."""
    probabilities = np.asarray(probabilities)
    classes = len(spec.classes)
    if probabilities.ndim != 2 or probabilities.shape != (n, classes):
        width = probabilities.shape[-1] if probabilities.ndim else 0
        raise ValueError(f"model.json declares {classes} classes, the model outputs {width} "
                         f"(probabilities of shape {tuple(probabilities.shape)} for {n} texts)")
    if not np.all(np.isfinite(probabilities)):
        raise ValueError("the model outputs probabilities that are not finite")
    if probabilities.min() < -1e-6 or probabilities.max() > 1 + 1e-6:
        raise ValueError("the model outputs probabilities outside [0, 1]")
    sums = probabilities.sum(axis=1)
    if not np.all(np.abs(sums - 1.0) <= 1e-3):
        raise ValueError(f"the model's probabilities do not sum to 1 (a row sums to {float(sums[0]):.3f})")
    for row in probabilities:
        prediction = spec.predict(row)
        if prediction.label not in LABELS or not math.isfinite(prediction.score):
            raise ValueError(f"model.json maps an output to {prediction.label!r}, not one of {LABELS}")


def load_checked(location: str, load_model_args: Optional[dict] = None) -> "ContractModel":
    """Load the contract SavedModel at `location`, score the probe batch, compare with its model.json
    -> the ContractModel; ValueError (one sentence) when a job could not use it."""
    import tensorflow as tf

    spec = read_spec(location)
    try:
        model = tf.keras.models.load_model(locations.local_dir(location), **(load_model_args or {"compile": False}))
    except Exception as e:  # noqa: BLE001  (missing, truncated, not a SavedModel: one verdict)
        raise ValueError(f"{location} does not load as a SavedModel: {_one_line(e)}") from None
    contract = ContractModel(model, location)
    try:
        probabilities, _, _ = contract.score(PROBE_TEXTS)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{location} fails on the probe batch: {_one_line(e)}") from None
    check_output(spec, probabilities, len(PROBE_TEXTS))
    return contract


def vet(location: str) -> ModelSpec:
    """Is the version at `location` usable by a job? -> its ModelSpec; ValueError (one sentence) if not."""
    configure_devices()
    load_checked(location)
    return read_spec(location)


def _int_or_none(values, i: int) -> int | None:
    return None if values is None else int(values[i])


class ContractModel:
    """A loaded contract SavedModel: what the SavedModel handler's `load_model()` returns.

    Scoring is a method (`score`), not attribute access on the Keras model, because with
    `--model_copies` / `--large_model` RunInference hands `run_inference` a proxy to a model
    living in another process, and such a proxy forwards method calls only.
    """

    def __init__(self, model, location: str | None = None):
        self.model = model
        self.location = location

    def source(self) -> str | None:
        """Where this model was loaded from: the model_id its predictions carry (a method, so that
        a model_copies proxy answers it too)."""
        return self.location

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
    # The model that scores names itself: the handler's path may already be a newer one (Beam
    # calls update_model_path after every load, also when the load fell back to the last good model).
    model_id = (scorer.source() if hasattr(scorer, "source") else None) or model_id
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



_SWAPS_LOCK = threading.Lock()
_REFUSED: dict[str, str] = {}  # swap path -> why it was refused (logged once per process)
_ACCEPTED: dict[str, str] = {}  # swap path -> model location (a pointer is never rewritten)
_BROKEN: dict[str, str] = {}  # model location -> why it could not be used (logged once per process)


class ContractSavedModelHandler(TFModelHandlerTensor):
    """Beam's TFModelHandlerTensor for a contract SavedModel, loaded from its location on the worker.

    Beam's handler loads `model_uri` as given; here the URI is a location name ("bundled",
    gs://..., a local directory) that `load_model` resolves on the machine it runs on
    (models/locations.py), after turning on GPU memory growth, and the model comes back as a
    ContractModel that knows where it came from. Batching, `large_model` / `model_copies`,
    metrics and `update_model_path` stay Beam's.

    Swaps are checked twice: `update_model_path` refuses a pointer it cannot read or whose
    version's model.json the job cannot use (the current model stays); `load_model` loads and
    probes (`load_checked`) and, when the new version fails, loads the model that scored before
    (the handler carries the locations it served before, so this works in whatever process loads,
    a model_copies server included). Each refusal is logged once per process.
    """

    MAX_FALLBACKS = 3

    def __init__(self, location: str, **kwargs):
        # compile=False: serving needs no optimizer or metrics, and skips a warning per worker.
        super().__init__(location, inference_fn=contract_inference_fn, load_model_args={"compile": False},
                         **kwargs)
        self._fallbacks: list[str] = []  # locations served before, newest first

    def update_model_path(self, model_path: Optional[str] = None):
        """A model swap (RunInference's model_metadata side input): `model_path` is a registry pointer
        (`REGISTRY/pointers/*.json`, what the job's watch emits) or a model location. An empty path
        (WatchFilePattern's "nothing newer than the job") or one that is refused keeps the model."""
        if not model_path:
            return
        target = swap_target(model_path)
        if target is None or target == self._model_uri:
            return
        self._fallbacks = ([self._model_uri] + [f for f in self._fallbacks if f not in (self._model_uri, target)]
                           )[:self.MAX_FALLBACKS]
        self._model_uri = target

    @property
    def location(self) -> str:
        """Where the model that load_model() loads lives now (it changes with update_model_path)."""
        return self._model_uri

    def load_model(self) -> ContractModel:
        configure_devices()
        candidates = [self._model_uri] + [f for f in self._fallbacks if f != self._model_uri]
        error = None
        for location in candidates:
            if location in _BROKEN and location != candidates[-1]:
                continue
            try:
                return load_checked(location, self._load_model_args)
            except ValueError as e:
                error = e
                if len(candidates) == 1:
                    raise  # the launch model itself: nothing scored before it
                with _SWAPS_LOCK:
                    first = location not in _BROKEN
                    _BROKEN[location] = str(e)
                if first:
                    _LOG.error("model swap refused: %s; the model that scored before keeps scoring", e)
        raise error


def swap_target(model_path: str) -> str | None:
    """A swap's path (a registry pointer or a model location) -> the model location to load, or None
    when the job cannot use it (logged once per process: the pointer or the version's model.json
    is unreadable, or names another version)."""
    with _SWAPS_LOCK:
        if model_path in _ACCEPTED:
            return _ACCEPTED[model_path]
        if model_path in _REFUSED:
            return None
    try:
        location = model_path
        if model_path.endswith(".json"):
            try:
                pointer = pointers.read_pointer(model_path)
            except pointers.RegistryError as e:
                raise ValueError(str(e)) from None
            location = pointer.location
            spec = read_spec(location)
            if spec.version != pointer.version:
                raise ValueError(f"pointer {model_path} names version {pointer.version}, "
                                 f"{location}/{SPEC_FILE} says {spec.version}")
        else:
            read_spec(location)
    except ValueError as e:
        with _SWAPS_LOCK:
            first = model_path not in _REFUSED
            _REFUSED[model_path] = str(e)
        if first:
            _LOG.error("model swap refused, the current model keeps scoring: %s", e)
        return None
    with _SWAPS_LOCK:
        _ACCEPTED[model_path] = location
    return location
