"""Watch a model registry's pointers: PBegin -> ModelMetadata, for RunInference(model_metadata_pcoll=...).

    WatchRegistry(pattern, interval_s) : PBegin -> ModelMetadata(model_id=newest valid pointer's path)
                                         (global window, Repeatedly(AfterProcessingTime(1)), ACCUMULATING:
                                         each pane is ONE element, the newest valid pointer seen so far)
    LatestPointer()                    : ModelMetadata (any number per pane) -> the same, reduced

A promotion writes a new pointer file (models/registry.py: `pointers/<stamp>-<version>.json`, never
rewritten); the job's model handler reads the pointer and loads the version it names
(models/savedmodel.py `update_model_path`). RunInference reads the watch as a singleton side
input, so `LatestPointer` reduces every pane to one element in the graph, on every runner: files
that are not pointers (`notes.json`: the registry's pointer-name format) or cannot be read are
dropped (counted, `model_pointers_skipped`), and the newest is chosen by file NAME (the
promotion's stamp), never by file time. Two promotions inside one interval are one pane of one
element; a pane never goes back to an older pointer (accumulating).

The files come from Beam's `MatchContinuously` (every new file once) on Dataflow and Flink. On Beam 2.77's Python
BundleBasedDirectRunner it cannot run: its `MatchContinuously` polls through splittable DoFns
(`Watch`, or `PeriodicImpulse` without deduplication), and that runner rejects their expansion
at submission ("Transform node ...ProcessKeyedElements/GroupByKey/GroupByKey, _GroupByKeyOnly)
was not replaced as expected"). There `DirectRegistryWatch`, a root primitive with its own
evaluator (registered the way connectors/sources/pubsub_direct.py registers its read), does the same:
every `interval_s` it matches the pattern through Beam's FileSystems and emits the newest
pointer when it changes; its watermark follows the wall clock, and `stop_watches()` (called by
`pulse run` when it drains) ends it, so a drained job still finishes.
pipelines/direct_runner/side_inputs.py makes the side input usable on that runner, for the
collection `LatestPointer` outputs alone (its last step is named VIEW_LABEL).
"""
from __future__ import annotations

import logging
import threading
import time
import uuid

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelMetadata
from apache_beam.runners.direct.transform_evaluator import TransformEvaluatorRegistry, _TransformEvaluator
from apache_beam.runners.direct.util import TransformResult
from apache_beam.transforms import trigger, window
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Timestamp

from models import pointers

_LOG = logging.getLogger(__name__)
_STOP = threading.Event()
_WATCHES: dict[str, dict] = {}
_WATCHES_LOCK = threading.Lock()


def stop_watches() -> None:
    """End every DirectRegistryWatch of this process at its next call (the job drains)."""
    _STOP.set()


def reset_watches() -> None:
    """A new job: its watches run until it stops."""
    _STOP.clear()


VIEW_LABEL = "LatestModelPointer"  # the watch's last step: the one side input the DirectRunner patch changes
NAMESPACE = "pulse"


def is_valid_pointer(path: str | None) -> bool:
    """A registry pointer the job can follow: named `<stamp>-<version>.json` and readable."""
    if not path or not pointers.is_pointer_name(path):
        return False
    try:
        pointers.read_pointer(path)
    except pointers.RegistryError:
        return False
    return True


def newer_pointer(a: str | None, b: str | None) -> str | None:
    """The newer of two pointer paths, by file name (the promotion's stamp); None counts as oldest."""
    if not a or not b:
        return a or b
    return max(a, b, key=lambda p: (pointers.basename(p), p))


def metadata_for(path: str) -> ModelMetadata:
    return ModelMetadata(model_id=path, model_name=pointers.basename(path).rsplit(".", 1)[0])


class NewestPointerFn(beam.CombineFn):
    """ModelMetadata of pointers -> ModelMetadata of the newest by file name."""

    def create_accumulator(self):
        return None

    def add_input(self, accumulator, metadata):
        return newer_pointer(accumulator, metadata.model_id)

    def merge_accumulators(self, accumulators):
        newest = None
        for path in accumulators:
            newest = newer_pointer(newest, path)
        return newest

    def extract_output(self, accumulator):
        return metadata_for(accumulator) if accumulator else ModelMetadata(model_id="", model_name="")


class _KeepValidPointers(beam.DoFn):
    def __init__(self):
        self.skipped = Metrics.counter(NAMESPACE, "model_pointers_skipped")

    def process(self, metadata: ModelMetadata):
        path = metadata.model_id
        if not path:  # "nothing newer than the job": the launch model keeps scoring
            return
        if is_valid_pointer(path):
            yield metadata_for(path)
            return
        self.skipped.inc()
        _LOG.warning("the model watch skips %s: not a readable registry pointer", path)


class LatestPointer(beam.PTransform):
    """ModelMetadata (any number per pane, any order, any file) -> per pane one ModelMetadata: the
    newest readable pointer seen so far, by file name (module docstring)."""

    def expand(self, metadata):
        return (metadata
                | "KeepValidPointers" >> beam.ParDo(_KeepValidPointers())
                | "ApplyGlobalWindow" >> beam.WindowInto(
                    window.GlobalWindows(), trigger=trigger.Repeatedly(trigger.AfterProcessingTime(1)),
                    accumulation_mode=trigger.AccumulationMode.ACCUMULATING)
                | "NewestByName" >> beam.CombineGlobally(NewestPointerFn()).without_defaults()
                | VIEW_LABEL >> beam.Map(lambda m: m))


def _is_python_direct_runner(runner) -> bool:
    from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
    return isinstance(runner, BundleBasedDirectRunner)


class WatchRegistry(beam.PTransform):
    def __init__(self, pattern: str, interval_s: float = 30.0):
        super().__init__()
        if interval_s <= 0:
            raise ValueError("the model watch interval must be positive")
        self.pattern = pattern
        self.interval_s = interval_s

    def expand(self, pbegin):
        from apache_beam.io.fileio import MatchContinuously

        if not _is_python_direct_runner(pbegin.pipeline.runner):
            files = (pbegin
                     | "MatchPointers" >> MatchContinuously(self.pattern, interval=self.interval_s,
                                                            has_deduplication=True)
                     | "ToModelMetadata" >> beam.Map(lambda f: metadata_for(f.path)))
        else:
            files = pbegin | "DirectRegistryWatch" >> DirectRegistryWatch(self.pattern, self.interval_s)
        return files | "LatestPointer" >> LatestPointer()


def newest(pattern: str) -> str | None:
    """The newest valid pointer matching `pattern`, by file name (the registry's current pointer);
    files that are not pointers or cannot be read are skipped."""
    from apache_beam.io.filesystems import FileSystems

    paths = [m.path for r in FileSystems.match([pattern]) for m in r.metadata_list]
    for path in sorted(paths, key=lambda p: (pointers.basename(p), p), reverse=True):
        if is_valid_pointer(path):
            return path
    return None


class DirectRegistryWatch(beam.PTransform):
    """PBegin -> ModelMetadata of the newest file matching `pattern`, when it changes (DirectRunner only)."""

    def __init__(self, pattern: str, interval_s: float):
        super().__init__()
        self.pattern, self.interval_s = pattern, interval_s
        self.watch_id = uuid.uuid4().hex

    def expand(self, pbegin):
        return pvalue.PCollection(pbegin.pipeline, is_bounded=False)

    def get_windowing(self, unused_inputs):
        return beam.Windowing(GlobalWindows())


class _DirectRegistryWatchEvaluator(_TransformEvaluator):
    """One call = at most one match of the pattern (once per interval); the heartbeat calls it again."""

    def start_bundle(self):
        pass

    def process_element(self, element):
        pass

    def finish_bundle(self) -> TransformResult:
        transform = self._applied_ptransform.transform
        if _STOP.is_set():
            return TransformResult(self, [], [], None, {None: MAX_TIMESTAMP})
        with _WATCHES_LOCK:
            state = _WATCHES.setdefault(transform.watch_id, {"last": None, "next": 0.0, "failed": False})
        bundles = []
        now = time.time()
        if now >= state["next"]:
            state["next"] = now + transform.interval_s
            try:
                path = newest(transform.pattern)
                if state["failed"]:
                    _LOG.info("the model registry answers again: %s", transform.pattern)
                state["failed"] = False
            except Exception as e:  # noqa: BLE001  (an unreachable registry: keep scoring, look again)
                if not state["failed"]:
                    _LOG.warning("cannot look at the model registry %s: %s; the current model keeps "
                                 "scoring", transform.pattern, e)
                state["failed"] = True
                path = state["last"]
            if path is not None and path != state["last"]:
                state["last"] = path
                name = path.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
                bundle = self._evaluation_context.create_bundle(list(self._outputs)[0])
                bundle.output(GlobalWindows.windowed_value(ModelMetadata(model_id=path, model_name=name),
                                                           timestamp=Timestamp.of(now)))
                bundles.append(bundle)
        else:
            time.sleep(min(0.2, state["next"] - now))  # nothing to do yet: do not spin
        heartbeat = self._evaluation_context.create_bundle(pvalue.PBegin(transform.pipeline))
        heartbeat.add(GlobalWindows.windowed_value(b"", timestamp=Timestamp.of(now)))
        return TransformResult(self, bundles, [heartbeat], None, {None: Timestamp.of(now)})


TransformEvaluatorRegistry._test_evaluators_overrides[DirectRegistryWatch] = _DirectRegistryWatchEvaluator
