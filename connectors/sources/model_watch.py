"""Watch a model registry's pointers: PBegin -> ModelMetadata, for RunInference(model_metadata_pcoll=...).

    WatchRegistry(pattern, interval_s) : PBegin -> ModelMetadata(model_id=pointer path)  (global window,
                                         fired by Repeatedly(AfterProcessingTime(1)), DISCARDING)

A promotion writes a new pointer file (models/registry.py: `pointers/<stamp>-<version>.json`, never
rewritten); the watch emits the newest one's path, and the job's model handler reads the pointer
and loads the version it names (models/savedmodel.py `update_model_path`). A first element with
an empty model_id means "nothing newer than the job": the launch model keeps scoring.

On Dataflow and Flink this is Beam's own `WatchFilePattern`. On Beam 2.77's Python
BundleBasedDirectRunner it cannot run: its `MatchContinuously` polls through splittable DoFns
(`Watch`, or `PeriodicImpulse` without deduplication), and that runner rejects their expansion
at submission ("Transform node ...ProcessKeyedElements/GroupByKey/GroupByKey, _GroupByKeyOnly)
was not replaced as expected"). There `DirectRegistryWatch`, a root primitive with its own
evaluator (registered the way connectors/sources/pubsub_direct.py registers its read), does the same:
every `interval_s` it matches the pattern through Beam's FileSystems and emits the newest
pointer when it changes; its watermark follows the wall clock, and `stop_watches()` (called by
`pulse run` when it drains) ends it, so a drained job still finishes.
pipelines/direct_runner/side_inputs.py makes the side input usable on that runner.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.ml.inference.base import ModelMetadata
from apache_beam.runners.direct.transform_evaluator import TransformEvaluatorRegistry, _TransformEvaluator
from apache_beam.runners.direct.util import TransformResult
from apache_beam.transforms import trigger, window
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Timestamp

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


def _triggered(pcoll):
    return pcoll | "ApplyGlobalWindow" >> beam.WindowInto(
        window.GlobalWindows(), trigger=trigger.Repeatedly(trigger.AfterProcessingTime(1)),
        accumulation_mode=trigger.AccumulationMode.DISCARDING)


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
        from apache_beam.ml.inference import utils

        if not _is_python_direct_runner(pbegin.pipeline.runner):
            return pbegin | "WatchFilePattern" >> utils.WatchFilePattern(
                file_pattern=self.pattern, interval=self.interval_s)
        return _triggered(pbegin | "DirectRegistryWatch" >> DirectRegistryWatch(self.pattern, self.interval_s))


def newest(pattern: str) -> str | None:
    """The path matching `pattern` whose file name sorts last (the registry's current pointer)."""
    from apache_beam.io.filesystems import FileSystems

    paths = [m.path for r in FileSystems.match([pattern]) for m in r.metadata_list]
    return max(paths, key=lambda p: (p.rstrip("/").rsplit("/", 1)[-1], p)) if paths else None


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
