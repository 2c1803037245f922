"""A GroupByKey never garbage-collects a window whose trigger has late firings (Beam 2.77).

GeneralTriggerDriver (apache_beam/transforms/trigger.py) clears a window's buffered
elements only when its trigger finishes (`_output`: "TODO(robertwb): allowed lateness"),
and sets no timer at the window's end + allowed lateness. With
AfterWatermark(late=AfterCount(1)) the trigger never finishes, so every window's
elements, pane indexes, trigger state and window id stay in the step's keyed state for the
life of a streaming job, although the window has expired (late data for it is already
dropped: `process_elements` ignores a window once the input watermark is past its end +
allowed lateness). Beam's Java runners drop it at that moment (ReduceFnRunner's
garbage-collection timer).

One key, one element in each of WINDOWS one-minute windows, allowed lateness one minute,
then the watermark goes to the end of time: every window has expired, yet the
GroupByKey's state for the key still holds all of them.

    python docs/upstream/repro_windows_never_expired.py   # exit 1: the bug reproduces; exit 0: fixed
"""
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms import trigger, window
from apache_beam.utils.timestamp import Duration

WINDOWS = 20
stream = (TestStream()
          .add_elements([window.TimestampedValue(("key", i), 60 * i + 1) for i in range(WINDOWS)])
          .advance_watermark_to_infinity())
p = beam.Pipeline(options=PipelineOptions(["--runner=BundleBasedDirectRunner", "--streaming"]))
_ = (p | stream
     | beam.WindowInto(window.FixedWindows(60), trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                       accumulation_mode=trigger.AccumulationMode.ACCUMULATING, allowed_lateness=Duration(seconds=60))
     | "Group" >> beam.GroupByKey())
result = p.run()
result.wait_until_finish()
held = 0  # windows with any state left, over the GroupByKey's keys
for step, keys in result._evaluation_context._transform_keyed_states.items():
    if step.full_label.startswith("Group/"):
        held += sum(1 for state in keys.values() for tags in state.state.values() if any(tags.values()))
if held:
    print(f"BUG: the watermark is past every window's end + allowed lateness, yet the GroupByKey still holds "
          f"state for {held} of {WINDOWS} windows")
    sys.exit(1)
print("FIXED: no state left for an expired window")
