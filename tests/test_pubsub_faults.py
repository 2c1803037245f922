"""Broker faults: a missing subscription or topic fails at start; an outage mid-run is waited out.

Start-up (`pulse run`, in process): a subscription, input topic or alerts topic that does
not exist, or a broker that does not answer, is one line on stderr and exit status 2,
before any model is loaded or pipeline built; nothing is written.

Mid-run (the real emulator of this test's own, the real runner): the job reads a first
batch and acknowledges it, then the emulator is killed for 15 s and started again on the
same port. The outage is logged when it starts and when it ends, pulls are retried with
backoff, and once the topic and subscription are recreated (a restarted emulator has
forgotten them) the job reads a second batch. After a clean stop both batches are in the
tables exactly once, the job balances, and the subscription is empty.
"""
from __future__ import annotations

import logging
import threading
import time

import pytest
from apache_beam.runners.runner import PipelineState

from connectors.sources import pubsub_direct
from pipelines import sentiment_pipeline
from tests.fixtures.pubsub import PostStream, free_port, message_key
from tests.test_graceful_stop import incomplete_windows, job_flags, stored

OUTAGE_S = 15


def errors_of(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("pulse run")]


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["subscription", "topic", "alerts topic"])
def test_missing_pubsub_resource_is_one_line_and_exit_2(pubsub_env, tmp_path, capsys, kind):
    project = pubsub_env.project
    flags = ["--output", str(tmp_path / "out")]
    if kind == "subscription":
        missing = f"projects/{project}/subscriptions/not-there"
        flags += ["--input", missing]
    elif kind == "topic":
        missing = f"projects/{project}/topics/not-there"
        flags += ["--input", missing]
    else:
        missing = f"projects/{project}/topics/no-alerts-here"
        flags += ["--input", pubsub_env.subscription(pubsub_env.topic("posts")), "--alerts_topic", missing]
    started = time.monotonic()
    assert sentiment_pipeline.main(flags) == 2
    noun = "subscription" if kind == "subscription" else "topic"
    assert errors_of(capsys) == [f"pulse run: error: Pub/Sub {noun} {missing} does not exist on "
                                 f"the Pub/Sub emulator at {pubsub_env.host}"]
    assert time.monotonic() - started < 10  # checked before the model is loaded
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
def test_unreachable_broker_at_start_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", host)
    subscription = "projects/pulse-test/subscriptions/posts"
    assert sentiment_pipeline.main(["--input", subscription, "--output", str(tmp_path / "out")]) == 2
    [line] = errors_of(capsys)
    assert line.startswith(f"pulse run: error: the Pub/Sub emulator at {host} does not answer (ServiceUnavailable")
    assert line.endswith(f"cannot check subscription {subscription}")


def wait_for(what: str, condition, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def stored_count(out: str) -> int:
    try:
        return len(stored(out))
    except Exception:  # noqa: BLE001  (no table written yet)
        return 0


@pytest.mark.integration
@pytest.mark.slow
def test_emulator_killed_and_restarted_mid_run_loses_nothing(restartable_pubsub_emulator, tiny_bundled_model,
                                                             tmp_path, monkeypatch, caplog):
    emulator = restartable_pubsub_emulator
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator.host)
    caplog.set_level(logging.INFO, logger="connectors.sources.pubsub_direct")
    topic = f"projects/{emulator.project}/topics/outage"
    subscription = f"projects/{emulator.project}/subscriptions/outage"
    emulator.create(topic, subscription)
    out = str(tmp_path / "out")
    stop = sentiment_pipeline.StopRequest()
    timeline: dict = {}
    failures: list = []

    def reader():
        return next(iter(pubsub_direct._READERS.values()), None)

    def orchestrate():
        try:
            first = PostStream(emulator, topic, rate=60, prefix="before-")
            first.start()
            time.sleep(4)
            timeline["first"] = first.stop()
            wait_for("the first batch to be stored", lambda: stored_count(out) == len(timeline["first"]))
            wait_for("the first batch to be acknowledged",
                     lambda: reader() is not None and reader().acknowledged == len(timeline["first"]))
            timeline["killed"] = time.time()
            emulator.stop()
            time.sleep(OUTAGE_S)
            emulator.start()
            timeline["restarted"] = time.time()
            emulator.create(topic, subscription)  # the restarted emulator has forgotten both
            second = PostStream(emulator, topic, rate=60, prefix="after-")
            second.start()
            time.sleep(4)
            timeline["second"] = second.stop()
            timeline["second_at"] = time.time()
            total = len(timeline["first"]) + len(timeline["second"])
            wait_for("the second batch to be stored", lambda: stored_count(out) == total)
            timeline["left"] = None
        except BaseException as e:  # noqa: BLE001  (re-raised by the test)
            failures.append(e)
        finally:
            stop.request("test over")

    threading.Thread(target=orchestrate, daemon=True).start()
    result = sentiment_pipeline.run(job_flags(subscription, out, tiny_bundled_model) + ["--run_for", "240"],
                                    stop=stop)
    if failures:
        raise failures[0]
    end = result.pulse_end
    ok, line = sentiment_pipeline.accounting(sentiment_pipeline.counters(result))
    assert result.state == PipelineState.DONE and end.drained and ok, line
    assert sentiment_pipeline.exit_status(result, ok) == 0

    published = timeline["first"] + timeline["second"]
    keys = stored(out)
    assert sorted(map(repr, keys)) == sorted(map(repr, published))  # every message once, none lost
    assert end.read.pulled == end.read.acknowledged == len(published) and end.read.returned == 0
    assert [message_key(m.data) for m in emulator.pull_all(subscription)] == []
    assert incomplete_windows(out) == {}

    # The outage was logged as it happened, retried, and logged again when the broker came back.
    warnings = [r for r in caplog.records if r.name == "connectors.sources.pubsub_direct" and r.levelno >= logging.WARNING]
    down = [r for r in warnings if "failed" in r.getMessage() and r.created >= timeline["killed"]]
    assert down and down[0].created - timeline["killed"] < 5, [r.getMessage() for r in warnings]
    assert len([r for r in warnings if timeline["killed"] <= r.created < timeline["restarted"]]) >= 3
    back = [r for r in warnings if "answers again" in r.getMessage()]
    assert back and back[0].created >= timeline["restarted"]
    assert end.read.outages >= 1 and end.read.outage_s >= OUTAGE_S - 1
    print(f"\nemulator killed for {OUTAGE_S} s: published {len(published)} "
          f"({len(timeline['first'])} before, {len(timeline['second'])} after), "
          f"acknowledged {end.read.acknowledged}, stored {len(keys)}, left in the subscription 0; "
          f"outage logged {len(warnings)} times; broker back after {back[0].created - timeline['killed']:.0f} s")


@pytest.mark.integration
@pytest.mark.slow
def test_stopping_while_the_broker_is_down_is_not_success(restartable_pubsub_emulator, tiny_bundled_model,
                                                          tmp_path, monkeypatch):
    emulator = restartable_pubsub_emulator
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator.host)
    topic = f"projects/{emulator.project}/topics/down"
    subscription = f"projects/{emulator.project}/subscriptions/down"
    emulator.create(topic, subscription)
    stop = sentiment_pipeline.StopRequest()

    def kill_then_stop():
        try:
            wait_for("the first pull", lambda: any(r._watermark is not None for r in pubsub_direct._READERS.values()))
            emulator.stop()
            time.sleep(4)
        finally:
            stop.request("test over")

    threading.Thread(target=kill_then_stop, daemon=True).start()
    result = sentiment_pipeline.run(job_flags(subscription, str(tmp_path / "out"), tiny_bundled_model)
                                    + ["--run_for", "120"], stop=stop)
    ok, line = sentiment_pipeline.accounting(sentiment_pipeline.counters(result))
    assert result.state == PipelineState.DONE and ok, line  # drained: nothing was read, nothing is missing
    read = result.pulse_end.read
    assert read.outages == 1 and read.unreachable_at_end
    assert "still unreachable at the end" in read.line()
    assert sentiment_pipeline.exit_status(result, ok) == 1
