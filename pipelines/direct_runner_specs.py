"""Let Beam's Python BundleBasedDirectRunner inspect a DoFn once, not once per bundle.

Beam 2.77's DirectRunner starts every bundle of every ParDo with `is_stateful_dofn` and
`get_dofn_specs` (`_ParDoEvaluator.start_bundle`, then again in `DoFnRunner` and the
user-state context): each walks `dir(dofn)` and builds an `inspect.signature` of every
method to find its state and timer parameters. The answer depends only on the DoFn's
methods, which do not change while a job runs, yet it was recomputed for every bundle of
every step: 13.6 % of the job's samples at 2,000 msg/s, the largest single cost after
the fixes in direct_runner_state.py.

`install()` memoizes `get_dofn_specs` per DoFn object (most DoFns cannot be weakly
referenced, so the cache holds them, up to MAX_ENTRIES) and re-points the names the runner imported. Each caller gets
its own copies of the two sets, as before. Applied only when a job runs on the
DirectRunner.
"""
from __future__ import annotations

import threading

from apache_beam.runners.direct import transform_evaluator
from apache_beam.transforms import userstate

_LOCK = threading.Lock()
_INSTALLED = False
MAX_ENTRIES = 4096  # DoFns remembered (a process that builds many pipelines starts over)


def install() -> None:
    global _INSTALLED
    with _LOCK:
        if _INSTALLED:
            return
        original = userstate.get_dofn_specs
        cache: dict[int, tuple] = {}  # id(dofn) -> (dofn, specs): the DoFn is held, so its id is not reused

        def get_dofn_specs(dofn):
            entry = cache.get(id(dofn))
            if entry is None or entry[0] is not dofn:
                if len(cache) >= MAX_ENTRIES:
                    cache.clear()
                entry = cache[id(dofn)] = (dofn, original(dofn))
            state_specs, timer_specs = entry[1]
            return set(state_specs), set(timer_specs)

        userstate.get_dofn_specs = get_dofn_specs  # is_stateful_dofn looks it up here
        transform_evaluator.get_dofn_specs = get_dofn_specs
        _INSTALLED = True
