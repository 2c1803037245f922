"""Let Beam's Python DirectRunner finish a drained streaming job: no watermark hold outlives its pane.

Beam 2.77's Python trigger driver (`GeneralTriggerDriver._output`) keeps a window's
watermark hold after emitting a pane whenever the GroupByKey's output watermark is still
before the window's end and the trigger has an on-time pane, on the assumption that the
on-time timer will fire later and release it. That assumption fails for an
`AfterWatermark(..., late=...)` trigger once the on-time pane has been decided: a late
post for window W at one key, processed while another key's on-time firing for W is still
pending (so the step's output watermark sits at W's last instant), adds a hold at W's end
that no timer will ever release. Measured on the sentiment job: every pane is right (the
last pane of each window holds all its posts), but the Aggregate step's output watermark
stays at W's end for the rest of the job, so a drained job never reaches DONE (the runner
reports "Monitor task detected a pipeline stall") and downstream steps (alerts) stop
seeing event time advance.

`install()` wraps `_output`: when the trigger is past its on-time pane (`is_late`), the hold
is released as soon as the pane is out, which is what the driver already does for every
pane emitted at or after the window's end. Panes, their contents and their timing labels
are unchanged. Applied only when the job runs on the DirectRunner (Dataflow and Flink
run their own trigger implementations); a no-op on a Beam without `GeneralTriggerDriver._output`.
"""
from __future__ import annotations

import threading

from apache_beam.transforms import trigger as beam_trigger

_LOCK = threading.Lock()
_INSTALLED = False


def install() -> None:
    global _INSTALLED
    with _LOCK:
        driver = getattr(beam_trigger, "GeneralTriggerDriver", None)
        if _INSTALLED or driver is None or not hasattr(driver, "_output"):
            return
        original = driver._output

        def _output(self, window, finished, state, output_watermark, maybe_ontime):
            pane = original(self, window, finished, state, output_watermark, maybe_ontime)
            is_late = getattr(self.trigger_fn, "is_late", None)
            if (is_late is not None and state.get_state(window, self.WATERMARK_HOLD) is not None
                    and is_late(state.at(window, self.clock))):
                state.clear_state(window, self.WATERMARK_HOLD)
            return pane

        driver._output = _output
        _INSTALLED = True
