"""Stopping a Pub/Sub job drains it: --run_for, SIGINT and SIGTERM, against the real emulator and runner.

A thread publishes posts (and malformed messages) at a steady rate before, during and
after the job, so every stop lands mid-stream. After each stop the checks are at the
sinks and in the subscription:

- the job ended DONE, balanced, and exit status 0 (`pulse run` as a subprocess for signals);
- every message the job acknowledged is in scored_posts or dead_letters, once;
- every message it did not acknowledge is still in the subscription (pulled afterwards);
  stored + left = published, with nothing in both;
- the last pane of every window (the one open at the stop included) counts all its posts.

A second signal aborts without draining (exit 130): nothing is lost, what was not
acknowledged is handed back to the subscription at once.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import duckdb
import pytest
from apache_beam.runners.runner import PipelineState

from pipelines import sentiment_pipeline
from tests.fixtures.pubsub import PostStream, message_key

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WINDOW_S = 10
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def job_flags(subscription: str, out: str, model: str) -> list[str]:
    return ["--input", subscription, "--output", out, "--model", model,
            "--window_size", str(WINDOW_S), "--early_firing", "2"]


def stored(out: str) -> list:
    """Keys (post id, or payload of a malformed message) of every row in scored_posts and dead_letters."""
    con = duckdb.connect()
    keys = [r[0] for r in con.execute(
        f"SELECT post_id FROM read_parquet('{out}/scored_posts/**/*.parquet')").fetchall()]
    if os.path.isdir(f"{out}/dead_letters"):
        keys += [message_key(bytes(r[0])) for r in con.execute(
            f"SELECT payload FROM read_parquet('{out}/dead_letters/**/*.parquet')").fetchall()]
    return keys


def incomplete_windows(out: str) -> dict:
    """(keyword, window start) -> (posts in its last pane, posts in scored_posts), where they differ."""
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    truth = Counter()
    for keyword, created_at in con.execute(
            f"SELECT keyword, epoch(created_at) FROM read_parquet('{out}/scored_posts/**/*.parquet')").fetchall():
        start = int(created_at // WINDOW_S * WINDOW_S)
        truth[(keyword, start)] += 1
        truth[("*", start)] += 1
    last = {(k, int(s)): posts for k, s, posts in con.execute(f"""
        SELECT keyword, epoch(window_start), arg_max(posts, pane_index)
        FROM read_parquet('{out}/sentiment_windows/**/*.parquet', union_by_name=true)
        WHERE lang = '*' GROUP BY keyword, window_start""").fetchall()}
    return {key: (last.get(key), n) for key, n in truth.items() if last.get(key) != n}


def check_stop(out: str, published: list, left: list, acknowledged: int) -> None:
    keys = stored(out)
    assert len(keys) == len(set(keys)), "a message is stored twice"
    assert len(keys) == acknowledged, "acknowledged messages and stored rows differ"
    assert not set(keys) & set(left), "a stored (acknowledged) message is still in the subscription"
    assert sorted(map(repr, set(keys) | set(left))) == sorted(map(repr, published)), "a message was lost"
    assert keys and left, "the stop did not land mid-stream"
    assert incomplete_windows(out) == {}, "a window's last pane does not count all its posts"


def test_run_for_drains_stores_every_acknowledged_message(pubsub_env, tiny_bundled_model, tmp_path):
    topic = pubsub_env.topic("graceful")
    subscription = pubsub_env.subscription(topic)
    out = str(tmp_path / "out")
    stream = PostStream(pubsub_env, topic, prefix="r").start()
    try:
        result = sentiment_pipeline.run(job_flags(subscription, out, tiny_bundled_model) + ["--run_for", "25"])
        time.sleep(2)  # the stream goes on after the stop: those messages must stay in the subscription
    finally:
        published = stream.stop()
    left = [message_key(m.data) for m in pubsub_env.pull_all(subscription)]
    end = result.pulse_end
    assert result.state == PipelineState.DONE and end.drained and end.stopped_by == "--run_for 25 s"
    ok, line = sentiment_pipeline.accounting(sentiment_pipeline.counters(result))
    assert ok, line
    assert end.read.pulled == end.read.acknowledged and end.read.returned == 0
    assert sentiment_pipeline.exit_status(result, ok) == 0
    check_stop(out, published, left, end.read.acknowledged)
    print(f"\n--run_for: published {len(published)}, acknowledged {end.read.acknowledged}, "
          f"stored {len(stored(out))}, left in the subscription {len(left)}")


def pulse_command() -> list[str]:
    pulse = os.path.join(os.path.dirname(sys.executable), "pulse")
    return [pulse, "run"] if os.access(pulse, os.X_OK) else [sys.executable, "-m", "pipelines.cli", "run"]


def start_job(emulator, subscription: str, out: str, model: str) -> subprocess.Popen:
    env = dict(os.environ, PUBSUB_EMULATOR_HOST=emulator.host, TF_USE_LEGACY_KERAS="1",
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    return subprocess.Popen(pulse_command() + job_flags(subscription, out, model), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_until_writing(proc: subprocess.Popen, out: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not (os.path.isdir(f"{out}/scored_posts") and any(
            name.endswith(".parquet") for _, _, names in os.walk(f"{out}/scored_posts") for name in names)):
        assert proc.poll() is None, f"pulse run exited early:\n{proc.communicate()[0]}"
        assert time.monotonic() < deadline, "pulse run wrote nothing"
        time.sleep(0.5)
    time.sleep(4)  # mid-stream: several bundles in, windows open


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_drains_and_exits_0(pubsub_env, tiny_bundled_model, tmp_path, sig):
    topic = pubsub_env.topic("signal")
    subscription = pubsub_env.subscription(topic)
    out = str(tmp_path / "out")
    stream = PostStream(pubsub_env, topic, prefix=f"{sig.name}-").start()
    proc = start_job(pubsub_env, subscription, out, tiny_bundled_model)
    try:
        wait_until_writing(proc, out)
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=180)
        time.sleep(2)
    finally:
        if proc.poll() is None:
            proc.kill()
        published = stream.stop()
    left = [message_key(m.data) for m in pubsub_env.pull_all(subscription)]
    assert proc.returncode == 0, output
    assert "Traceback" not in output
    assert f"DONE (stopped by {sig.name}, drained)" in output and "(balanced)" in output, output
    m = re.search(r"pulled (\d+), acknowledged (\d+) \(all written\), not acknowledged (\d+)", output)
    assert m, output
    pulled, acknowledged, returned = map(int, m.groups())
    assert pulled == acknowledged and returned == 0
    check_stop(out, published, left, acknowledged)
    print(f"\n{sig.name}: published {len(published)}, acknowledged {acknowledged}, "
          f"stored {len(stored(out))}, left in the subscription {len(left)}")


def test_second_signal_aborts_without_losing_anything(pubsub_env, tiny_bundled_model, tmp_path):
    topic = pubsub_env.topic("abort")
    subscription = pubsub_env.subscription(topic)
    out = str(tmp_path / "out")
    stream = PostStream(pubsub_env, topic, prefix="a").start()
    proc = start_job(pubsub_env, subscription, out, tiny_bundled_model)
    try:
        wait_until_writing(proc, out)
        # Two different signals at once (two SIGINTs may be merged into one by the kernel).
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
        published = stream.stop()
    left = [message_key(m.data) for m in pubsub_env.pull_all(subscription)]
    assert proc.returncode in (130, 143), output  # 128 + the signal handled second
    assert "Traceback" not in output and "not drained" in output, output
    keys = stored(out)
    # At least once: a message may be stored and handed back (written, not acknowledged), never lost.
    assert set(published) <= set(keys) | set(left)


def test_trigger_releases_the_hold_of_a_pane_past_its_on_time_decision():
    """The Beam trigger-driver fix a drained job needs to reach DONE (pipelines/direct_runner/triggers.py)."""
    from apache_beam.runners.direct.clock import TestClock
    from apache_beam.transforms import trigger, window
    from apache_beam.transforms.core import Windowing
    from apache_beam.utils.timestamp import MAX_TIMESTAMP, Duration, Timestamp
    from apache_beam.utils.windowed_value import WindowedValue

    from pipelines.direct_runner import triggers as direct_runner_triggers
    from transforms.windowing import WindowSpec

    direct_runner_triggers.install()
    spec = WindowSpec(size_s=10, allowed_lateness_s=600, early_firing_s=2)
    windowing = Windowing(window.FixedWindows(10), triggerfn=spec.trigger(),
                          accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                          allowed_lateness=Duration(seconds=600))
    driver = trigger.GeneralTriggerDriver(windowing, TestClock())
    state = trigger.InMemoryUnmergedState()
    w = window.IntervalWindow(100, 110)
    # The input watermark is past the window, another key holds the output watermark at its last instant.
    panes = list(driver.process_elements(state, [WindowedValue("post", w.max_timestamp(), (w,))],
                                         output_watermark=w.max_timestamp(), input_watermark=Timestamp(111)))
    assert [p.value for p in panes] == [["post"]]
    assert state.get_earliest_hold() == MAX_TIMESTAMP  # Beam 2.77 alone leaves a hold at 109.999998 forever


def test_reader_holds_leases_until_written_and_gives_back_the_rest(pubsub_env):
    """Unwritten messages are not redelivered while the job holds them (leases extended past the
    10 s ack deadline), and a job that cannot say they were written hands them back at once."""
    from connectors.sources.pubsub_direct import Reader
    from connectors.feeds.publisher import Message, Publisher

    topic = pubsub_env.topic("lease")
    subscription = topic.replace("/topics/", "/subscriptions/")
    publisher_client, subscriber = pubsub_env._clients()
    with subscriber:
        subscriber.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=10)
    Publisher(topic, client=publisher_client).publish([Message(f"m{i}".encode(), {}) for i in range(5)])
    reader = Reader("lease-test", subscription)
    reader.learn_ack_deadline()
    assert reader.ack_deadline_s == 10
    assert len(reader.pull()) == 5
    reader.committed()
    for _ in range(14):  # past the ack deadline
        reader.maintain()
        time.sleep(1)
    assert pubsub_env.pull_all(subscription, idle_s=1) == []  # still leased to the job
    report = reader.finish(written=False)
    assert (report.pulled, report.acknowledged, report.returned) == (5, 0, 5)
    assert sorted(m.data for m in pubsub_env.pull_all(subscription, idle_s=1)) == [f"m{i}".encode() for i in range(5)]
