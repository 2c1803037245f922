"""Beam Metrics count only the first bundle of each step on the BundleBasedDirectRunner (Beam 2.77).

TransformExecutor.call (apache_beam/runners/direct/executor.py) makes a new MetricsContainer
for every bundle and passes it to StateSampler.scoped_state
(apache_beam/runners/worker/statesampler.py), which caches the ScopedState of a step by its
counter name together with the container of the first bundle that asked. A counter's `inc()`
finds its container through the sampler's current state (StateSampler.update_metric), so
every later bundle of the step counts into the first bundle's container, which was
committed long ago: the job's counters report the first bundle only.

Ten bundles of five elements (a TestStream makes each `add_elements` a bundle) through one
DoFn that counts each element: the counter should say 50.

    python docs/upstream/repro_metrics_container_per_bundle.py   # exit 1: the bug reproduces; exit 0: fixed
"""
import sys

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream

BUNDLES, PER_BUNDLE = 10, 5


class CountElements(beam.DoFn):
    def __init__(self):
        self.seen = Metrics.counter("repro", "seen")

    def process(self, element):
        self.seen.inc()
        yield element


stream = TestStream()
for b in range(BUNDLES):
    stream = stream.add_elements(list(range(b * PER_BUNDLE, (b + 1) * PER_BUNDLE)))
stream = stream.advance_watermark_to_infinity()
p = beam.Pipeline(options=PipelineOptions(["--runner=BundleBasedDirectRunner", "--streaming"]))
_ = p | stream | "Count" >> beam.ParDo(CountElements())
result = p.run()
result.wait_until_finish()
[counter] = result.metrics().query(MetricsFilter().with_name("seen"))["counters"]
expected = BUNDLES * PER_BUNDLE
if (counter.committed, counter.attempted) != (expected, expected):
    print(f"BUG: {expected} elements in {BUNDLES} bundles, the counter says committed={counter.committed} "
          f"attempted={counter.attempted} (the first bundle only)")
    sys.exit(1)
print(f"FIXED: the counter says {expected}")
