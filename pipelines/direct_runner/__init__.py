"""The job's patches to Beam's Python BundleBasedDirectRunner, one module per Beam bug.

Each module names the bug it works around and has an `install()`; `install_direct_runner_fixes()`
installs them all, and `pipelines.sentiment_pipeline.run` calls it before a DirectRunner job.
Dataflow, Flink and the FnApiRunner are not patched.

May import: apache_beam only (nothing of the project), so any layer's tests can install a fix.

    python -c "from pipelines.direct_runner import install_direct_runner_fixes; install_direct_runner_fixes()"
"""
from __future__ import annotations

from pipelines.direct_runner import metrics, side_inputs, specs, state, triggers


def install_direct_runner_fixes() -> None:
    """The job's patches to Beam's Python BundleBasedDirectRunner (each module says what it fixes)."""
    metrics.install()  # counters count every bundle, without a container kept per bundle
    triggers.install()  # a drained job reaches DONE; expired windows leave no state
    state.install()  # keys whose state is gone stop costing timer scans
    specs.install()  # a DoFn's signature inspected once per bundle, not three to five times
    side_inputs.install()  # a model watch's side input: the latest promotion, and it stops
