"""The job's patches to Beam's Python BundleBasedDirectRunner, one module per Beam bug.

Each module names the bug it works around and has an `install()`; `install_direct_runner_fixes()`
installs them all, and `pipelines.sentiment_pipeline.run` calls it before a DirectRunner job.
Dataflow, Flink and the FnApiRunner are not patched.

May import: apache_beam only (nothing of the project), so any layer's tests can install a fix.

    python -c "from pipelines.direct_runner import install_direct_runner_fixes; install_direct_runner_fixes()"
"""
from __future__ import annotations

import importlib
import os
import re

import apache_beam

from pipelines.direct_runner import metrics, side_inputs, specs, state, triggers

# What each patch replaces or wraps in Beam: (module, attribute path). Checked before any patch is
# installed, so a Beam that moved one of them fails loudly, never runs half-patched. (The trigger
# driver's methods must be GeneralTriggerDriver's own: its base class has abstract ones.)
PATCHED_INTERNALS = {
    "metrics": [("apache_beam.runners.direct.executor", "MetricsContainer"),
                ("apache_beam.runners.direct.executor", "TransformExecutor.call"),
                ("apache_beam.metrics.execution", "MetricsContainer"),
                ("apache_beam.metrics.execution", "MetricsEnvironment.current_container"),
                ("apache_beam.runners.worker.statesampler", "StateSampler.update_metric")],
    "triggers": [("apache_beam.transforms.trigger", "GeneralTriggerDriver._output"),
                 ("apache_beam.transforms.trigger", "GeneralTriggerDriver.process_elements"),
                 ("apache_beam.transforms.trigger", "GeneralTriggerDriver.process_timer"),
                 ("apache_beam.transforms.trigger", "MergeableStateAdapter._persist_window_ids")],
    "state": [("apache_beam.runners.direct.evaluation_context", "EvaluationContext.handle_result"),
              ("apache_beam.runners.direct.watermark_manager", "_TransformWatermarks.extract_transform_timers"),
              ("apache_beam.runners.direct.watermark_manager", "TimerFiring")],
    "specs": [("apache_beam.transforms.userstate", "get_dofn_specs"),
              ("apache_beam.runners.direct.transform_evaluator", "get_dofn_specs")],
    "side_inputs": [
        ("apache_beam.runners.direct.evaluation_context", "_SideInputsContainer.get_value_or_block_until_ready"),
        ("apache_beam.runners.direct.evaluation_context",
         "_SideInputsContainer._update_watermarks_for_side_input_and_unblock_tasks")],
}


class PatchedBeamMismatch(RuntimeError):
    """The installed Beam is not the one the patches were written against, said in one line."""


def pinned_beam_version() -> str | None:
    """The apache-beam version the project pins: its installed metadata, else requirements.in."""
    from importlib import metadata

    try:
        for requirement in metadata.requires("sentiment-pulse") or []:
            found = re.match(r"^apache-beam(\[[^\]]*\])?==(\S+)", requirement)
            if found:
                return found.group(2)
    except metadata.PackageNotFoundError:
        pass
    path = os.path.join(os.path.dirname(__file__), "..", "..", "requirements.in")
    if os.path.exists(path):
        found = re.search(r"^apache-beam(\[[^\]]*\])?==(\S+)", open(path, encoding="utf-8").read(), re.M)
        return found.group(2) if found else None
    return None


def check_beam(installed: str | None = None) -> None:
    """Raise PatchedBeamMismatch (one line) unless Beam is the pinned version and every patched
    internal is where the patches expect it."""
    installed = installed or apache_beam.__version__
    pinned = pinned_beam_version()
    if pinned is not None and installed != pinned:
        raise PatchedBeamMismatch(f"the DirectRunner patches (pipelines/direct_runner) are for apache-beam {pinned}, "
                                  f"this is {installed}: install the pinned version (pip install -r requirements.lock)")
    for patch, targets in PATCHED_INTERNALS.items():
        for module, path in targets:
            if not _defined(importlib.import_module(module), path.split("."), own=patch == "triggers"):
                raise PatchedBeamMismatch(f"apache-beam {installed} has no {module}.{path}, which the "
                                          f"DirectRunner patch pipelines/direct_runner/{patch}.py replaces")


def _defined(obj, names: list[str], own: bool) -> bool:
    """Whether obj.a.b... exists; with `own`, the last name defined by that very class (an
    override the patch wraps, not an abstract base method it would silently wrap instead)."""
    for i, name in enumerate(names):
        if not hasattr(obj, name):
            return False
        if own and i == len(names) - 1 and isinstance(obj, type) and name not in vars(obj):
            return False
        obj = getattr(obj, name)
    return True


def install_direct_runner_fixes() -> None:
    """The job's patches to Beam's Python BundleBasedDirectRunner (each module says what it fixes),
    after `check_beam`: all of them or none."""
    check_beam()
    metrics.install()  # counters count every bundle, without a container kept per bundle
    triggers.install()  # a drained job reaches DONE; expired windows leave no state
    state.install()  # keys whose state is gone stop costing timer scans
    specs.install()  # a DoFn's signature inspected once per bundle, not three to five times
    side_inputs.install()  # a model watch's side input: the latest promotion, and it stops
