"""The DirectRunner never forgets a key, even when its state and timers are all cleared (Beam 2.77).

EvaluationContext (apache_beam/runners/direct/evaluation_context.py) keeps one
DirectUnmergedState per (step, key) in `_transform_keyed_states`, and `handle_result` only
ever adds to it. A stateful DoFn that clears its state and has no timer left for a key still
leaves that key in the map, and the monitor loop's timer scan
(watermark_manager._TransformWatermarks.extract_transform_timers) walks every key of every
stateful step on every pass, so the cost of a pass grows with every key a streaming job has
ever seen.

Here a stateful DoFn buffers one element per key and clears the buffer from an event-time
timer. After the job, every key's state is empty, yet the runner still holds all of them.

    python docs/upstream/repro_keyed_state_leak.py   # exit 1: the bug reproduces; exit 0: fixed
"""
import sys

import apache_beam as beam
from apache_beam.coders import StrUtf8Coder
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.window import TimestampedValue

KEYS = 50


class BufferUntilTimer(beam.DoFn):
    """(key, value) -> value, once the event-time timer at the element's time + 10 s fires."""
    BUFFER = userstate.BagStateSpec("buffer", StrUtf8Coder())
    FLUSH = userstate.TimerSpec("flush", TimeDomain.WATERMARK)

    def process(self, kv, timestamp=beam.DoFn.TimestampParam, buffer=beam.DoFn.StateParam(BUFFER),
                flush=beam.DoFn.TimerParam(FLUSH)):
        buffer.add(kv[1])
        flush.set(timestamp + 10)

    @userstate.on_timer(FLUSH)
    def on_flush(self, buffer=beam.DoFn.StateParam(BUFFER)):
        yield from buffer.read()
        buffer.clear()


stream = (TestStream()
          .add_elements([TimestampedValue((f"key-{i}", f"v{i}"), i) for i in range(KEYS)])
          .advance_watermark_to_infinity())
p = beam.Pipeline(options=PipelineOptions(["--runner=BundleBasedDirectRunner", "--streaming"]))
_ = p | stream | "Buffer" >> beam.ParDo(BufferUntilTimer())
result = p.run()
result.wait_until_finish()
held = {step.full_label: len(keys) for step, keys in result._evaluation_context._transform_keyed_states.items()
        if keys}
if held.get("Buffer"):
    print(f"BUG: every key's state and timers are cleared, yet the runner still holds {held['Buffer']} of "
          f"{KEYS} keys for step Buffer (all held: {held})")
    sys.exit(1)
print(f"FIXED: no key left for step Buffer (held: {held})")
