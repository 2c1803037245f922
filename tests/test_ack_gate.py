"""The Pub/Sub reader's one promise: no message is acknowledged before the sinks wrote it.

The reader (connectors/sources/pubsub_direct.py) acknowledges at the start of each of its calls, when
no bundle is waiting below the roots and the job says everything read was written. These tests
hold the sink shut on the real runner and the real emulator, so a gate that acknowledges early
is caught every time, not by chance:

- while the sink holds the messages, several reader calls go by and nothing is acknowledged;
- once the sink has written them, they are acknowledged while the job keeps running, also when
  the pipeline has a model registry watch, a root whose periodic heartbeat is always pending
  (it held every acknowledgement, and after `pause_after_s` every pull: the registry stall);
- a batch written after a stop is acknowledged by `finish`, not handed back: nothing is left in
  the subscription.

Acknowledgements are observed on the reader instance itself (its `_send`, which talks to the
emulator) and writes in the sink DoFn: each acknowledged message was written before.
"""
from __future__ import annotations

import threading
import time
import uuid

import apache_beam as beam
import pytest
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineState
from apache_beam.transforms.userstate import BagStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp

from connectors.sources import model_watch, pubsub_direct
from connectors.feeds.publisher import Message, Publisher
from pipelines.direct_runner import install_direct_runner_fixes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Per-run state of the sink, shared with the DoFns (the DirectRunner runs them in this process).
_RUNS: dict[str, dict] = {}


class _HeldSink(beam.DoFn):
    """Keeps each message in keyed state until the test opens its batch, or the drain (the watermark
    at the end, as the job's last panes), then writes it: records its id and when. The runner has
    one worker thread, so the sink holds messages in state, as the job's windows do, rather than
    blocking: the reader goes on being called meanwhile."""

    BUFFER = BagStateSpec("held", beam.coders.PickleCoder())
    POLL = TimerSpec("poll", beam.TimeDomain.REAL_TIME)
    DRAIN = TimerSpec("drain", beam.TimeDomain.WATERMARK)

    def __init__(self, run_id: str):
        self.run_id = run_id

    def process(self, keyed, held=beam.DoFn.StateParam(BUFFER), poll=beam.DoFn.TimerParam(POLL),
                drain=beam.DoFn.TimerParam(DRAIN)):
        held.add(keyed[1])
        poll.set(Timestamp.now() + 0.2)
        drain.set(GlobalWindow().max_timestamp())

    def _write(self, held, everything: bool) -> bool:
        run = _RUNS[self.run_id]
        waiting = []
        for raw in held.read():
            batch = raw.data.decode().split("-", 1)[0]
            if everything or (batch in run["open"] and run["open"][batch].is_set()):
                with run["lock"]:
                    run["written"][raw.message_id] = time.monotonic()
                Metrics.counter("gate", "written").inc()
            else:
                waiting.append(raw)
        held.clear()
        for raw in waiting:
            held.add(raw)
        return bool(waiting)

    @on_timer(POLL)
    def poll(self, held=beam.DoFn.StateParam(BUFFER), poll=beam.DoFn.TimerParam(POLL)):
        if self._write(held, everything=False):
            poll.set(Timestamp.now() + 0.2)

    @on_timer(DRAIN)
    def drain(self, held=beam.DoFn.StateParam(BUFFER)):
        self._write(held, everything=True)


def _entered(raw):
    Metrics.counter("gate", "entered").inc()
    return 0, raw


def _all_written(metrics) -> tuple[bool, str]:
    """The job's kind of check: every message that entered the pipeline has been written."""
    counts = {r.key.metric.name: r.committed for r in metrics.query()["counters"]
              if r.key.metric.namespace == "gate"}
    entered, written = counts.get("entered", 0), counts.get("written", 0)
    return entered == written, f"{entered - written} held"


class _Spy:
    """Records, on one Reader, which message each ack id stands for and when it was acknowledged."""

    def __init__(self, reader: pubsub_direct.Reader):
        self.reader = reader
        self.message_of: dict[str, str] = {}
        self.acked: dict[str, float] = {}
        self.settles = 0
        pull, send, settle = reader.pull, reader._send, reader.settle

        def spy_pull():
            received = pull()
            for m in received or ():
                self.message_of[m.ack_id] = m.message.message_id
            return received

        def spy_send(method, ack_ids, **kwargs):
            send(method, ack_ids, **kwargs)
            if method == "acknowledge":
                now = time.monotonic()
                for a in ack_ids:
                    self.acked[self.message_of[a]] = now

        def spy_settle(*args):
            self.settles += 1
            return settle(*args)

        reader.pull, reader._send, reader.settle = spy_pull, spy_send, spy_settle


def _wait(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _publish(topic: str, client, batch: str, n: int) -> None:
    Publisher(topic, client=client).publish([Message(f"{batch}-{i}".encode(), {}) for i in range(n)])


@pytest.mark.parametrize("with_watch", [False, True], ids=["read-only", "with-registry-watch"])
def test_nothing_is_acknowledged_before_the_sink_wrote_it(pubsub_env, tmp_path, with_watch):
    topic = pubsub_env.topic("gate")
    subscription = pubsub_env.subscription(topic)
    publisher_client, _ = pubsub_env._clients()
    run_id = uuid.uuid4().hex
    _RUNS[run_id] = {"open": {"a": threading.Event()}, "written": {},
                     "lock": threading.Lock()}
    run = _RUNS[run_id]
    pointers = tmp_path / "pointers"
    pointers.mkdir()
    (pointers / "20260101T000000Z-v1.json").write_text('{"version": "v1"}')

    install_direct_runner_fixes()
    model_watch.reset_watches()
    options = PipelineOptions(["--direct_num_workers=1"])
    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(runner="BundleBasedDirectRunner", options=options)
    read = pubsub_direct.DirectPubSubRead(subscription)
    _ = p | "Read" >> read | "Enter" >> beam.Map(_entered) | "Sink" >> beam.ParDo(_HeldSink(run_id))
    if with_watch:
        # The job's registry watch: a periodic root of its own beside the read.
        _ = (p | "Watch" >> model_watch.WatchRegistry(str(pointers / "*.json"), interval_s=1)
             | "UseModel" >> beam.Map(lambda meta: meta.model_id))
    reader = pubsub_direct.reader(read.reader_id)
    reader.settled = _all_written
    spy = _Spy(reader)

    _publish(topic, publisher_client, "a", 20)
    result = p.run()
    try:
        _wait(lambda: reader.pulled >= 20, 120, "the first batch to be read")
        settles = spy.settles
        _wait(lambda: spy.settles >= settles + 4, 60, "more calls of the reader")
        assert spy.acked == {}, "acknowledged while the sink had not written anything"

        run["open"]["a"].set()
        _wait(lambda: len(run["written"]) == 20, 60, "the sink to write the first batch")
        # The job keeps running: the gate opens at its next calls, not only when the job ends.
        _wait(lambda: len(spy.acked) == 20, 60, "the written batch to be acknowledged while the job runs")
        assert result.state == PipelineState.RUNNING

        # A second batch read, then a stop while the sink still holds it: the drain writes it,
        # and `finish` acknowledges it (nothing written is handed back to the subscription).
        _publish(topic, publisher_client, "b", 10)
        _wait(lambda: reader.pulled >= 30, 120, "the second batch to be read")
        reader.request_stop("test over")
        model_watch.stop_watches()
        result.wait_until_finish()
        assert len(spy.acked) == 20, "acknowledged the second batch before the sink wrote it"
        report = reader.finish(written=True)
    finally:
        for event in run["open"].values():
            event.set()
        reader.request_stop("test over")
        model_watch.stop_watches()
        if not PipelineState.is_terminal(result.state):
            result.cancel()
        _RUNS.pop(run_id, None)
    assert result.state == PipelineState.DONE
    assert len(run["written"]) == 30
    for message_id, acked_at in spy.acked.items():
        assert run["written"][message_id] <= acked_at, f"message {message_id} acknowledged before it was written"
    assert set(spy.acked) == set(run["written"])
    assert (report.pulled, report.acknowledged, report.returned) == (30, 30, 0)
    assert pubsub_env.pull_all(subscription, idle_s=2) == [], "a written message is still in the subscription"
