"""Make Beam Metrics count every bundle on Beam's Python BundleBasedDirectRunner, without a leak.

Beam 2.77's BundleBasedDirectRunner makes a new MetricsContainer for every bundle
(`TransformExecutor.call`) and hands it to `StateSampler.scoped_state`, which caches the
ScopedState of a step by name together with the container of the first bundle that asked
for it. `Metrics.counter(...).inc()` finds its container through the sampler's current
state (`StateSampler.update_metric`), so later bundles counted into a container
that was already committed: counters reported only the first bundle of each step
(measured: 5 of 50 elements). Dataflow, Flink and the FnApiRunner are not affected.

The first fix rebuilt the ScopedState whenever a bundle brought a new container; the
Cython sampler appends every ScopedState it builds to a list it never trims, so that kept
three states and a MetricsContainer per bundle and step alive for the life of the job
(measured: 3,014 live containers after 500 bundles, 5 without it).

`install()` leaves the sampler alone. It records the container each `TransformExecutor`
makes for its bundle in a thread-local (the executor runs a bundle on one thread, start
to finish), and a metric update (`StateSampler.update_metric`, behind every Counter,
Distribution and Gauge) or `MetricsEnvironment.current_container()` uses that container
while the bundle runs. Nothing is cached per bundle, so nothing accumulates. Outside a
DirectRunner bundle (other runners, other threads) the original lookup is used.
`live_containers()` counts the MetricsContainers alive in the process, for the test that
checks the number does not grow with the bundles.

Written up for Beam, with a reproduction on stock Beam: docs/upstream/metrics_container_per_bundle.md.
"""
from __future__ import annotations

import gc
import threading

from apache_beam.metrics import execution as metrics_execution
from apache_beam.runners.direct import executor as direct_executor
from apache_beam.runners.worker import statesampler

_LOCK = threading.Lock()
_INSTALLED = False
_BUNDLE = threading.local()  # .container: the MetricsContainer of the bundle this thread runs


def install() -> None:
    global _INSTALLED
    with _LOCK:
        if _INSTALLED:
            return
        base = metrics_execution.MetricsContainer

        def bundle_container(step_name):
            container = base(step_name)
            _BUNDLE.container = container
            return container

        # TransformExecutor.call builds its bundle's container through this module-level name.
        direct_executor.MetricsContainer = bundle_container
        original_call = direct_executor.TransformExecutor.call

        def call(self, state_sampler):
            try:
                return original_call(self, state_sampler)
            finally:
                _BUNDLE.container = None

        direct_executor.TransformExecutor.call = call
        environment_cls = type(metrics_execution.MetricsEnvironment)
        original_current = environment_cls.current_container

        def current_container(self):
            container = getattr(_BUNDLE, "container", None)
            return container if container is not None else original_current(self)

        environment_cls.current_container = current_container
        original_update = statesampler.StateSampler.update_metric

        def update_metric(self, typed_metric_name, value):
            container = getattr(_BUNDLE, "container", None)
            if container is None:
                return original_update(self, typed_metric_name, value)
            container.get_metric_cell(typed_metric_name).update(value)

        # MetricUpdater (compiled) calls update_metric on the thread's tracker, an instance of
        # this Python subclass of the compiled sampler, so the override is what it finds.
        statesampler.StateSampler.update_metric = update_metric
        _INSTALLED = True


def live_containers() -> int:
    """How many MetricsContainer objects the process holds now (after a collection)."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, metrics_execution.MetricsContainer))
