"""A fix that lets Beam's Python BundleBasedDirectRunner swap models while a job runs.

The running job watches the model registry with Beam's `WatchFilePattern`, whose output (a
`ModelMetadata` per promotion, in the global window, fired by `Repeatedly(AfterProcessingTime(1))`
with DISCARDING panes) feeds `RunInference(model_metadata_pcoll=...)` as a singleton side input.
Streaming runners (Dataflow, Flink) give a triggered global-window side input the latest pane
that has fired. Beam 2.77's Python DirectRunner does not:

1. **Side inputs wait for the end of the global window.** `_SideInputsContainer` blocks a
   main-input bundle until the side input's watermark passes the end of the side-input window
   its window maps to. For the global window that is the end of time, so with an unbounded
   watch every post waits forever (measured: nothing scored until the watch ended, then
   everything scored by the last model). Worse, the view is built from every element ever
   added, so the second promotion fails with "PCollection of size 2 ... accessed as a
   singleton view".

   `install()` changes this for side inputs in the global window with a trigger other than
   the default (a triggered side input: the model watch): a bundle waits only until the
   first pane has arrived, and then reads the latest element added: the model promoted last.
   Every other side input keeps Beam's behaviour.

Applied only when a job runs on the DirectRunner (pipelines/sentiment_pipeline.py).
"""
from __future__ import annotations

import threading

from apache_beam.runners.direct import evaluation_context
from apache_beam.transforms import trigger, window

_LOCK = threading.Lock()
_INSTALLED = False


def is_triggered_global(side_input) -> bool:
    """True for a side input in the global window fired by a trigger of its own (a model watch)."""
    try:
        windowing = side_input.pvalue.windowing
    except Exception:  # noqa: BLE001  (no windowing to judge: Beam's behaviour)
        return False
    return (isinstance(windowing.windowfn, window.GlobalWindows)
            and not isinstance(windowing.triggerfn, trigger.DefaultTrigger))


def install() -> None:
    global _INSTALLED
    with _LOCK:
        if _INSTALLED:
            return
        container = evaluation_context._SideInputsContainer
        original_get = container.get_value_or_block_until_ready
        original_update = container._update_watermarks_for_side_input_and_unblock_tasks

        def get_value_or_block_until_ready(self, side_input, task, block_until):
            if not is_triggered_global(side_input):
                return original_get(self, side_input, task, block_until)
            with self._lock:
                view = self._views[side_input]
                if view.elements:
                    del view.elements[:-1]  # the latest pane is the view; older ones are never read
                    view.value = self._pvalue_to_value(side_input, view.elements)
                    return view.value
                view.blocked_tasks.append((task, block_until))
                task.blocked = True
                return None

        def update_and_unblock(self, side_input, watermark):
            if not is_triggered_global(side_input):
                return original_update(self, side_input, watermark)
            with self._lock:
                view = self._views[side_input]
                view.watermark = watermark
                if not view.elements and watermark.output_watermark < window.GlobalWindow().max_timestamp():
                    return []
                del view.elements[:-1]
                view.value = self._pvalue_to_value(side_input, view.elements)
                unblocked = [task for task, _ in view.blocked_tasks]
                for task in unblocked:
                    task.blocked = False
                view.blocked_tasks.clear()
                return unblocked

        container.get_value_or_block_until_ready = get_value_or_block_until_ready
        container._update_watermarks_for_side_input_and_unblock_tasks = update_and_unblock

        _INSTALLED = True
