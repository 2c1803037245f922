"""A job on a model registry keeps reading: the operator's trickle, end to end.

`pulse run --model registry:DIR` (a subprocess, as an operator starts it) reads a subscription
that receives 240 posts at 4 per second; half-way through, a new version is promoted; 20 s after
the last post the job gets SIGINT. Until the acknowledgement gate stopped waiting for the
registry watch's heartbeat, such a job stopped reading about 20 s after its first message (74 of
240 stored, the rest left unread). Checked at the sinks and in the subscription:

- every post stored exactly once (240 of 240) and nothing left in the subscription;
- the job read, acknowledged and balanced all 240, drained, exit status 0;
- the versions, in publish order, switch once from the launch version to the promoted one, and
  every post published a few watch intervals after the promotion is scored by the new version.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import time

import duckdb
import pytest

from bench.registry_soak import model_variant
from connectors.feeds.publisher import Publisher, post_message, rfc3339
from models import registry
from tests.test_graceful_stop import pulse_command

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POSTS, RATE, PROMOTE_AT, WATCH_S = 240, 4.0, 120, 2
TEXTS = ("I love this phone", "I hate the new update, worst ever", "the app opens at nine")


def test_a_registry_job_reads_a_trickle_to_the_end_across_a_promotion(pubsub_env, tiny_bundled_model, tmp_path):
    root = str(tmp_path / "registry")
    registry.init(root, tiny_bundled_model)  # current: tiny-test
    registry.add_version(root, model_variant(tiny_bundled_model, str(tmp_path / "v2"), "tiny-v2"))
    topic = pubsub_env.topic("trickle")
    subscription = pubsub_env.subscription(topic)
    out = str(tmp_path / "out")
    env = dict(os.environ, PUBSUB_EMULATOR_HOST=pubsub_env.host, TF_USE_LEGACY_KERAS="1",
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(pulse_command() + ["--input", subscription, "--output", out, "--model", f"registry:{root}",
                                        "--model_watch_interval", str(WATCH_S), "--window_size", "10"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    publisher = Publisher(topic)
    published_at: dict[str, float] = {}
    promoted_at = None
    try:
        start = time.monotonic()
        for i in range(POSTS):
            if i == PROMOTE_AT:
                registry.promote(root, "tiny-v2", {"why": "test: promoted while the job reads a trickle"})
                promoted_at = time.monotonic()
            post = {"id": f"t{i:03d}", "text": TEXTS[i % len(TEXTS)], "keyword": "acme", "lang": "en",
                    "author_id": str(i), "created_at": rfc3339(dt.datetime.now(dt.timezone.utc))}
            publisher.publish([post_message(post)])
            published_at[post["id"]] = time.monotonic()
            assert proc.poll() is None, f"pulse run exited early:\n{proc.communicate()[0]}"
            time.sleep(max(0.0, start + (i + 1) / RATE - time.monotonic()))
        publisher.close()
        time.sleep(20)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    left = pubsub_env.pull_all(subscription, idle_s=2)

    assert proc.returncode == 0, output
    assert "Traceback" not in output
    assert "DONE (stopped by SIGINT, drained)" in output and "(balanced)" in output, output
    m = re.search(r"pulled (\d+), acknowledged (\d+) \(all written\), not acknowledged (\d+)", output)
    assert m and tuple(map(int, m.groups())) == (POSTS, POSTS, 0), output
    assert left == [], f"{len(left)} posts left unread in the subscription"
    rows = duckdb.connect().execute(
        f"SELECT post_id, model_version FROM read_parquet('{out}/scored_posts/**/*.parquet')").fetchall()
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)) == POSTS, f"{len(set(ids))} of {POSTS} stored, {len(ids)} rows"
    version = dict(rows)
    in_order = [version[p] for p in sorted(published_at, key=published_at.get)]
    switch = in_order.index("tiny-v2")
    assert set(in_order[:switch]) <= {"tiny-test"} and set(in_order[switch:]) == {"tiny-v2"}, \
        "the versions in publish order do not switch once, from the launch version to the promoted one"
    late = [p for p, t in published_at.items() if t > promoted_at + 5 * WATCH_S]
    assert late and {version[p] for p in late} == {"tiny-v2"}, "posts long after the promotion scored by the old model"
    print(f"\nregistry trickle: {POSTS} published, {len(ids)} stored once, switch at post {switch} "
          f"(promoted at {PROMOTE_AT}), {len(left)} left unread")
