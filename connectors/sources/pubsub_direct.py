"""Pub/Sub on Beam's Python BundleBasedDirectRunner: big pulls, acks after the write, a clean stop.

    DirectPubSubRead(subscription_or_topic, reader_id) : PBegin -> RawMessage (timestamp = publish time)
    reader(reader_id)   -> the Reader of a running read: request_stop(), maintain(), finish()

Why not Beam's ReadFromPubSub here: on this runner Beam reads with its own evaluator
(`_PubSubReadEvaluator`), which acknowledges every message as soon as it is pulled,
hands at most 10 messages per bundle, cannot be stopped (`cancel()` drops what is in
flight and never fires the last pane of open windows) and lets the client's retries
give up on a dead broker. Dataflow and Flink keep ReadFromPubSub (see connectors/sources/pubsub.py).

How it works. `DirectPubSubRead` is a root primitive with its own evaluator, registered
with the runner the way Beam registers its test evaluators. Each call of the evaluator:

1. knows that the messages of its previous call are in the pipeline (the runner
   re-invokes a root only after committing its last output) and, when the pipeline is
   idle (no bundle pending below the roots: a root's own next call, such as the model
   registry watch's heartbeat, never counts) and the job's `settled` check says every
   message read has been written
   (pipelines/ passes its accounting: read = scored + duplicates + dead letters, all of
   them stored), acknowledges them: only written messages are ever acknowledged;
2. pulls up to `max_messages` (500) with synchronous pulls, and emits them as one bundle
   of RawMessage, each timestamped with its publish time; it stops filling a bundle when
   a pull returns less than a full page (the broker had no more ready) or after
   `GATHER_S`, so a trickle is handed over at once rather than held to fill a bundle;
3. holds the source's watermark at the start of its last successful pull (wall clock, as
   Beam's own evaluator does), or, while a full batch shows a backlog, at the newest
   publish time read so far; so the watermark does not advance while the broker is
   unreachable, and neither an outage nor catching up a backlog makes posts late.

Stopping: `request_stop()` makes the next call pull nothing and put the watermark at
+infinity. Every window then fires its last pane, the pipeline finishes (DONE), and
`finish(written=True)` acknowledges what is left. Anything never pulled stays in the
subscription; `finish(written=False)` (the job failed, was aborted, or did not balance)
gives every unacknowledged message back at once (ack deadline 0) for the next run.

Broker faults: a failed pull or acknowledgement is logged when it happens, retried with
exponential backoff (0.5 s doubling to 10 s) for as long as the job runs, and logged again
when the broker answers; the client is rebuilt after connection errors, so a restarted
broker is picked up at the next attempt. A subscription that disappears mid-run (an
emulator restart forgets it) is retried the same way until it exists again.
While the job cannot acknowledge (the pipeline has not written everything yet), leases
are extended before their ack deadline runs out, and pulling pauses after
`pause_after_s` so that what was read can be written and acknowledged.
"""
from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from typing import Callable, NamedTuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.runners.direct.transform_evaluator import TransformEvaluatorRegistry, _TransformEvaluator
from apache_beam.runners.direct.util import TransformResult
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from models.contracts import RawMessage

_LOG = logging.getLogger(__name__)

MAX_MESSAGES = 500  # per bundle; a real Pub/Sub pull returns up to 1000, the emulator up to 100
ACK_CHUNK = 1000  # ack ids per acknowledge / modify_ack_deadline request (requests are capped at 512 kB)
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0
IDLE_POLL_S = 1.5  # deadline of a pull that may wait for messages (the emulator answers after deadline - 1 s)
NEXT_POLL_S = 1.0  # deadline of the follow-up pulls that fill a bundle
PAGE = 100  # a pull that returns fewer messages than this has emptied what the broker had ready
GATHER_S = 0.25  # seconds a bundle may spend filling up before it is handed over
_GLOBAL = (GlobalWindow(),)


class ReadReport(NamedTuple):
    """What a read did, for the job's summary line."""

    subscription: str
    pulled: int  # messages handed to the pipeline
    acknowledged: int  # acknowledged after the pipeline wrote them
    returned: int  # given back unacknowledged (ack deadline 0): they stay in the subscription
    refused: int  # acknowledgements the broker refused (expired ack ids): Pub/Sub delivers those again
    outages: int  # times the broker stopped answering
    outage_s: float  # seconds without a broker, in all
    stopped_by: str | None  # why the read stopped pulling
    unreachable_at_end: bool = False  # the broker had not answered the last attempt when the read ended

    def line(self) -> str:
        where = ("dropped with the temporary subscription: read a subscription to keep them" if " (via " in
                 self.subscription else "left in the subscription for the next run")
        text = (f"Pub/Sub {self.subscription}: pulled {self.pulled}, acknowledged {self.acknowledged} "
                f"(all written), not acknowledged {self.returned} ({where})")
        if self.refused:
            text += f", acknowledgements refused {self.refused} (Pub/Sub will deliver those again)"
        if self.outages:
            text += f"; broker unreachable {self.outages} time(s), {self.outage_s:.0f} s in all"
        if self.unreachable_at_end:
            text += " (still unreachable at the end)"
        return text


def _summary(error: BaseException) -> str:
    """An exception as one short line (gRPC errors carry pages of debug text)."""
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    message = " ".join(str(message).split())
    if len(message) > 200:
        message = message[:197] + "..."
    return f"{type(error).__name__}: {message}"


class _Batch:
    __slots__ = ("ack_ids", "pulled_at", "leased_until")

    def __init__(self, ack_ids: list[str], pulled_at: float, leased_until: float):
        self.ack_ids = ack_ids
        self.pulled_at = pulled_at
        self.leased_until = leased_until


class Reader:
    """The state of one read in this process: client, ack ids in flight, stop flag, outage state.

    The evaluator (on the runner's worker thread) pulls and acknowledges; the job's
    main thread calls request_stop(), maintain() and finish(). `_lock` guards the lists.
    """

    def __init__(self, reader_id: str, path: str, max_messages: int = MAX_MESSAGES,
                 pause_after_s: float = 20.0):
        self.reader_id = reader_id
        self.path = path
        self.is_topic = "/topics/" in path
        self.max_messages = max(1, min(int(max_messages), 1000))
        self.pause_after_s = pause_after_s
        # Set by the job: (metrics) -> (ok, line): has every message read been written?
        self.settled: Callable | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.stopped_by: str | None = None
        self._stopped_logged = False
        self._client = None
        self._client_lock = threading.Lock()
        self.subscription: str | None = None if self.is_topic else path
        self._temporary = False
        self.ack_deadline_s = 10.0
        self._staged: list[_Batch] = []  # pulled by the last call: not yet known to be in the pipeline
        self._in_pipeline: list[_Batch] = []  # in the pipeline, not acknowledged
        self._watermark: float | None = None  # start of the last successful pull
        self.pulled = self.acknowledged = self.returned = self.refused = 0
        self.outages = 0
        self.outage_s = 0.0
        self._failures = 0
        self._outage_since: float | None = None
        self._retry_at = 0.0
        self._unsettled_since: float | None = None
        self._last_hold_log = 0.0
        self._finished = False

    # ---- client and subscription -------------------------------------------------------
    def _subscriber(self):
        with self._client_lock:
            if self._client is None:
                from google.cloud import pubsub_v1
                self._client = pubsub_v1.SubscriberClient()
            return self._client

    def _reset_client(self) -> None:
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001  (a broken channel may refuse to close cleanly)
                pass

    def _ensure_subscription(self) -> str:
        if self.subscription is None:
            # A topic: read through a subscription of our own, made now and deleted at the end
            # (messages published before the job started, or left unread, are not seen again).
            project = self.path.split("/")[1]
            name = f"projects/{project}/subscriptions/pulse_{int(time.time())}_{uuid.uuid4().hex[:8]}"
            self._subscriber().create_subscription(name=name, topic=self.path, ack_deadline_seconds=60,
                                                   timeout=30, retry=None)
            self.subscription, self._temporary = name, True
            self.ack_deadline_s = 60.0
            _LOG.info("reading topic %s through temporary subscription %s", self.path, name)
        return self.subscription

    def learn_ack_deadline(self) -> None:
        """Read the subscription's ack deadline (leases are extended before it runs out)."""
        if self.is_topic:
            return
        try:
            sub = self._subscriber().get_subscription(subscription=self.path, timeout=30)
            self.ack_deadline_s = float(sub.ack_deadline_seconds or 10)
        except Exception as e:  # noqa: BLE001  (the job checked the subscription; keep the default)
            _LOG.debug("could not read the ack deadline of %s: %s", self.path, _summary(e))

    # ---- outage bookkeeping ------------------------------------------------------------
    def _in_backoff(self) -> bool:
        return time.monotonic() < self._retry_at

    def _failed(self, what: str, error: BaseException) -> None:
        from google.api_core import exceptions as gexc
        now = time.monotonic()
        self._failures += 1
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (self._failures - 1)) * random.uniform(0.8, 1.0)
        self._retry_at = now + delay
        hint = ""
        if isinstance(error, gexc.NotFound):
            hint = " (the subscription is gone: deleted, or the broker restarted and lost it)"
        if self._outage_since is None:
            self._outage_since = now
            self.outages += 1
            _LOG.warning("Pub/Sub %s of %s failed: %s%s; retrying in %.1f s",
                         what, self.subscription or self.path, _summary(error), hint, delay)
        else:
            _LOG.warning("Pub/Sub still unavailable after %.0f s (%d attempts): %s failed: %s%s; "
                         "next attempt in %.1f s", now - self._outage_since, self._failures, what,
                         _summary(error), hint, delay)
        if not isinstance(error, (gexc.NotFound, gexc.InvalidArgument, gexc.PermissionDenied)):
            self._reset_client()  # a fresh channel connects at once when the broker is back

    def _succeeded(self) -> None:
        if self._outage_since is not None:
            down = time.monotonic() - self._outage_since
            self.outage_s += down
            _LOG.warning("Pub/Sub %s answers again after %.0f s (%d failed attempts); resuming the read",
                         self.subscription or self.path, down, self._failures)
        self._outage_since = None
        self._failures = 0
        self._retry_at = 0.0

    # ---- pulling ----------------------------------------------------------------------
    def pull(self) -> list | None:
        """Up to max_messages ReceivedMessage protobufs; None when no pull was attempted or it failed."""
        from google.api_core import exceptions as gexc
        if self._in_backoff():
            time.sleep(min(0.25, self._retry_at - time.monotonic()))
            return None
        started = time.time()
        received: list = []
        try:
            subscription = self._ensure_subscription()
            client = self._subscriber()
            deadline = IDLE_POLL_S
            while len(received) < self.max_messages and not self._stop.is_set():
                try:
                    response = client.pull(subscription=subscription,
                                           max_messages=self.max_messages - len(received),
                                           timeout=deadline, retry=None)
                except gexc.DeadlineExceeded:
                    break  # an empty long poll on real Pub/Sub
                page = type(response).pb(response).received_messages
                received.extend(page)
                # Hand over what is there unless the broker is clearly holding more (a full
                # page) and the bundle is young: a trickle is not held back to fill a bundle.
                if len(page) < PAGE or time.time() - started > GATHER_S:
                    break
                deadline = NEXT_POLL_S
        except Exception as e:  # noqa: BLE001  (every broker error is an outage to wait out)
            if not received:
                self._failed("pull", e)
                return None
        self._succeeded()
        # The watermark: when this pull started, or, while a backlog is being read (a full
        # batch), the newest publish time read so far, so catching up makes nothing late.
        candidate = started
        if len(received) >= self.max_messages:
            newest = max(m.message.publish_time.seconds + m.message.publish_time.nanos / 1e9 for m in received)
            candidate = min(started, newest)
        self._watermark = candidate if self._watermark is None else max(self._watermark, candidate)
        if received:
            now = time.monotonic()
            with self._lock:
                self._staged.append(_Batch([m.ack_id for m in received], now, now + self.ack_deadline_s))
            self.pulled += len(received)
        return received

    def watermark(self) -> Timestamp:
        return MIN_TIMESTAMP if self._watermark is None else Timestamp.of(self._watermark)

    # ---- acknowledging ----------------------------------------------------------------
    def committed(self) -> None:
        """The runner calls a root again only after committing its previous output: staged -> in pipeline."""
        with self._lock:
            self._in_pipeline.extend(self._staged)
            self._staged = []

    def has_unacknowledged(self) -> bool:
        with self._lock:
            return bool(self._in_pipeline or self._staged)

    def oldest_age(self) -> float:
        with self._lock:
            batches = self._in_pipeline + self._staged
        return time.monotonic() - min(b.pulled_at for b in batches) if batches else 0.0

    def _send(self, method: str, ack_ids: list[str], **kwargs) -> None:
        client = self._subscriber()
        for i in range(0, len(ack_ids), ACK_CHUNK):
            getattr(client, method)(subscription=self.subscription, ack_ids=ack_ids[i:i + ACK_CHUNK],
                                    timeout=30, retry=None, **kwargs)

    def acknowledge_in_pipeline(self) -> bool:
        """Acknowledge every message known to be in the pipeline (the caller knows they are written)."""
        from google.api_core import exceptions as gexc
        with self._lock:
            batches, self._in_pipeline = self._in_pipeline, []
        ids = [a for b in batches for a in b.ack_ids]
        if not ids:
            return True
        try:
            self._send("acknowledge", ids)
        except (gexc.InvalidArgument, gexc.NotFound, gexc.FailedPrecondition) as e:
            # Expired ack ids, or a subscription the broker lost: nothing to keep trying.
            self.refused += len(ids)
            _LOG.warning("Pub/Sub refused %d acknowledgements (%s); those messages are written and "
                         "may be delivered again", len(ids), _summary(e))
            return True
        except Exception as e:  # noqa: BLE001
            with self._lock:
                self._in_pipeline[:0] = batches
            self._failed("acknowledge", e)
            return False
        self._succeeded()
        self.acknowledged += len(ids)
        return True

    def maintain(self) -> None:
        """Extend the leases of unacknowledged messages before their ack deadline runs out."""
        if self._in_backoff() or self.subscription is None:
            return
        now = time.monotonic()
        with self._lock:
            due = [b for b in self._in_pipeline + self._staged
                   if b.leased_until - now < self.ack_deadline_s / 3]
        ids = [a for b in due for a in b.ack_ids]
        if not ids:
            return
        seconds = int(min(600, max(10, self.ack_deadline_s)))
        try:
            self._send("modify_ack_deadline", ids, ack_deadline_seconds=seconds)
        except Exception as e:  # noqa: BLE001  (expired ones are simply redelivered later)
            _LOG.warning("could not extend the leases of %d messages: %s", len(ids), _summary(e))
            return
        for b in due:
            b.leased_until = now + seconds

    # ---- stopping ---------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self.stopped_by = reason
            self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def finish(self, written: bool, ack_timeout_s: float = 30.0) -> ReadReport:
        """After the pipeline ended: acknowledge what it wrote, or give everything back."""
        if not self._finished:
            self._finished = True
            self.committed()  # the pipeline has ended: whatever was pulled went through it
            if written:
                deadline = time.monotonic() + ack_timeout_s
                self._retry_at = 0.0
                while self.has_unacknowledged() and time.monotonic() < deadline:
                    if self._in_backoff():
                        time.sleep(min(0.25, self._retry_at - time.monotonic()))
                        continue
                    self.acknowledge_in_pipeline()
            self._return_unacknowledged()
            if self._temporary:
                try:
                    self._subscriber().delete_subscription(subscription=self.subscription, timeout=30)
                except Exception as e:  # noqa: BLE001
                    _LOG.warning("could not delete temporary subscription %s: %s", self.subscription, _summary(e))
            self._reset_client()
            with _READERS_LOCK:
                _READERS.pop(self.reader_id, None)
        return self.report()

    def _return_unacknowledged(self) -> None:
        with self._lock:
            batches, self._in_pipeline, self._staged = self._in_pipeline + self._staged, [], []
        ids = [a for b in batches for a in b.ack_ids]
        if not ids:
            return
        self.returned += len(ids)
        try:
            self._send("modify_ack_deadline", ids, ack_deadline_seconds=0)
        except Exception as e:  # noqa: BLE001  (they come back anyway when their deadline runs out)
            _LOG.warning("could not hand %d messages back to %s at once (%s); Pub/Sub redelivers them "
                         "when their ack deadline runs out", len(ids), self.subscription, _summary(e))

    def report(self) -> ReadReport:
        outage_s = self.outage_s + (time.monotonic() - self._outage_since if self._outage_since else 0.0)
        return ReadReport(self.path if not self._temporary else f"{self.path} (via {self.subscription})",
                          self.pulled, self.acknowledged, self.returned, self.refused, self.outages,
                          outage_s, self.stopped_by, self._outage_since is not None)

    # ---- the acknowledgement gate --------------------------------------------------------
    def settle(self, evaluation_context, me) -> bool:
        """At the start of a call: acknowledge what the pipeline has written. True when nothing is held back."""
        self.committed()
        with self._lock:
            waiting = bool(self._in_pipeline)
        if not waiting:
            self._unsettled_since = None
            return True
        ok, line = _settled(evaluation_context, me, self.settled)
        if ok:
            self._unsettled_since = None
            if not self._in_backoff():
                self.acknowledge_in_pipeline()
            return True
        now = time.monotonic()
        if self._unsettled_since is None:
            self._unsettled_since = now
        if now - self._unsettled_since > 30 and now - self._last_hold_log > 30:
            self._last_hold_log = now
            _LOG.warning("holding %d acknowledgements for %.0f s: the pipeline has not written everything "
                         "it read yet (%s)", sum(len(b.ack_ids) for b in self._in_pipeline),
                         now - self._unsettled_since, line)
        return False


def _settled(evaluation_context, me, settled) -> tuple[bool, str]:
    """Is the pipeline idle (no bundle waiting anywhere but at a root) and, per the job, all written?

    A root's pending bundle is only ever its own next call: this read's heartbeat, a model
    registry watch's, an Impulse's. It carries no message, and a periodic root (the watch) always
    has one waiting, so waiting for roots would hold every acknowledgement for as long as the job
    runs. Messages are in flight only in the bundles pending at the transforms below the roots.
    """
    try:
        with evaluation_context._lock:
            for transform, tw in evaluation_context._watermark_manager._transform_to_watermarks.items():
                if transform is me or evaluation_context.is_root_transform(transform):
                    continue
                if any(b.has_elements() for b in list(tw._pending)):
                    return False, "bundles in flight"
            if settled is None:
                return True, "idle"
            return settled(evaluation_context.metrics())
    except AttributeError:  # a Beam without these internals: only the job's own check is left
        return (True, "") if settled is None else settled(evaluation_context.metrics())


_READERS: dict[str, Reader] = {}
_READERS_LOCK = threading.Lock()


def reader(reader_id: str) -> Reader | None:
    """The Reader of a read in this process, or None (not started, or finished)."""
    with _READERS_LOCK:
        return _READERS.get(reader_id)


def _reader_for(transform: "DirectPubSubRead") -> Reader:
    with _READERS_LOCK:
        r = _READERS.get(transform.reader_id)
        if r is None:
            r = _READERS[transform.reader_id] = Reader(transform.reader_id, transform.path,
                                                       transform.max_messages)
        return r


class DirectPubSubRead(beam.PTransform):
    """PBegin -> RawMessage from a subscription (or a topic), on the BundleBasedDirectRunner only."""

    def __init__(self, path: str, reader_id: str | None = None, max_messages: int = MAX_MESSAGES):
        super().__init__()
        self.path = path
        self.reader_id = reader_id or uuid.uuid4().hex
        self.max_messages = max_messages
        _reader_for(self)  # registered now, so the job can reach it before the runner starts

    def expand(self, pbegin):
        # A runner-native primitive: the evaluator below produces the elements.
        return pvalue.PCollection(pbegin.pipeline, is_bounded=False)

    def get_windowing(self, unused_inputs):
        return beam.Windowing(GlobalWindows())


class _DirectPubSubReadEvaluator(_TransformEvaluator):
    """One call = acknowledge what was written, then one pull; the heartbeat bundle calls it again."""

    def __init__(self, evaluation_context, applied_ptransform, input_committed_bundle, side_inputs):
        assert not side_inputs
        super().__init__(evaluation_context, applied_ptransform, input_committed_bundle, side_inputs)
        self._reader = _reader_for(applied_ptransform.transform)

    def start_bundle(self):
        pass

    def process_element(self, element):
        pass  # the heartbeat element carries nothing

    def finish_bundle(self) -> TransformResult:
        r = self._reader
        settled = r.settle(self._evaluation_context, self._applied_ptransform)
        if r.stop_requested:
            if not r._stopped_logged:
                r._stopped_logged = True
                _LOG.info("stopped pulling from %s (%s): %d messages read; draining",
                          r.subscription or r.path, r.stopped_by, r.pulled)
            # No heartbeat and a hold at +infinity: every window fires its last pane and the job ends.
            return TransformResult(self, [], [], None, {None: MAX_TIMESTAMP})
        r.maintain()
        bundles = []
        if not settled and r.oldest_age() > r.pause_after_s:
            time.sleep(0.05)  # let timers and batches flush what was read, so it can be acknowledged
        else:
            received = r.pull()
            if received:
                bundle = self._evaluation_context.create_bundle(list(self._outputs)[0])
                watermark = float(r.watermark())
                for m in received:
                    msg = m.message
                    pt = msg.publish_time
                    micros = pt.seconds * 1_000_000 + pt.nanos // 1000
                    raw = RawMessage(msg.data, dict(msg.attributes), micros / 1e6, watermark,
                                     msg.message_id or None)
                    bundle.output(WindowedValue(raw, Timestamp(micros=micros), _GLOBAL))
                bundles.append(bundle)
        watermark = r.watermark()
        heartbeat = self._evaluation_context.create_bundle(pvalue.PBegin(self._applied_ptransform.transform.pipeline))
        # An element (not an empty bundle) so the runner drops it from its pending set once processed.
        heartbeat.add(GlobalWindows.windowed_value(b"", timestamp=watermark))
        return TransformResult(self, bundles, [heartbeat], None, {None: watermark})


TransformEvaluatorRegistry._test_evaluators_overrides[DirectPubSubRead] = _DirectPubSubReadEvaluator
