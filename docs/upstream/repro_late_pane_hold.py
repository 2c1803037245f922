"""A late pane keeps a watermark hold that no timer releases (Beam 2.77, Python trigger driver).

GeneralTriggerDriver._output (apache_beam/transforms/trigger.py) keeps a window's watermark
hold after a pane whenever the step's output watermark is before the window's end and the
trigger has an on-time pane. For AfterWatermark(late=AfterCount(1)) that is wrong once the
on-time pane has fired: a late element processed while the GroupByKey's output watermark is
still at the window's last instant (another key's on-time pane not yet committed) sets a hold
at the window's end, the late pane fires, and the hold stays with no timer left to release
it. On the DirectRunner the step's output watermark then never passes the window, and a
drained streaming job ends in "Monitor task detected a pipeline stall."

This drives the trigger driver the way the DirectRunner's _StreamingGroupAlsoByWindowEvaluator
does (InMemoryUnmergedState, as trigger_test.py does), with the step's output watermark held at
the window's end by another key: which key's bundle runs first is up to the runner's threads,
so a pipeline shows the stall only when the interleaving happens.

    python docs/upstream/repro_late_pane_hold.py   # exit 1: the bug reproduces; exit 0: fixed
"""
import sys

from apache_beam.transforms import trigger, window
from apache_beam.transforms.core import Windowing
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Duration, Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming, WindowedValue

W = window.IntervalWindow(0, 60)
driver = trigger.create_trigger_driver(
    Windowing(window.FixedWindows(60), triggerfn=trigger.AfterWatermark(late=trigger.AfterCount(1)),
              accumulation_mode=trigger.AccumulationMode.ACCUMULATING, allowed_lateness=Duration(seconds=300)))
state = trigger.InMemoryUnmergedState()


def fire_timers(watermark):
    panes = []
    for window_id, (name, time_domain, timestamp, _) in state.get_and_clear_timers(watermark):
        panes += driver.process_timer(window_id, name, time_domain, timestamp, state, watermark)
    return panes


# One element on time, then the watermark passes the window's end: the on-time pane.
list(driver.process_elements(state, [WindowedValue("a", 10, [W])], MIN_TIMESTAMP, MIN_TIMESTAMP))
[on_time] = fire_timers(Timestamp(70))
assert on_time.pane_info.timing == PaneInfoTiming.ON_TIME
# A late element (within the allowed lateness) while the step's output watermark is still at the
# window's last instant, held there by another key whose on-time pane is not committed yet.
[late] = driver.process_elements(state, [WindowedValue("b", 20, [W])], W.max_timestamp(), Timestamp(70))
assert sorted(late.value) == ["a", "b"], late
# The input watermark moves on (still within the allowed lateness): every timer due fires.
fire_timers(Timestamp(300))
hold = state.get_earliest_hold()
if hold < MAX_TIMESTAMP:
    print(f"BUG: after its late pane, with the input watermark at 300, the key still holds the watermark at "
          f"{hold} (window {W}), with {len(state.timers)} timer(s) pending, so "
          f"the GroupByKey's output watermark stays at the window's end")
    sys.exit(1)
print("FIXED: no watermark hold outlives the late pane")
