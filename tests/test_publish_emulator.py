"""`pulse publish` into the Pub/Sub emulator: files verbatim, synthetic posts, missing topics."""
import json

import pytest

from pipelines.cli import publish

pytestmark = pytest.mark.integration


def test_file_is_published_line_for_line(pubsub_env, tmp_path, capsys):
    topic = pubsub_env.topic("replay")
    subscription = pubsub_env.subscription(topic)
    lines = [json.dumps({"id": str(i), "text": f"post {i}", "created_at": "2026-11-25T07:00:00Z",
                         "keyword": "acme", "lang": "en"}).encode() for i in range(30)]
    lines += [b"{not json", lines[3], "{\"id\": \"x\", \"text\": \"caf\u00e9\"}".encode()]
    path = tmp_path / "posts.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n\n")

    assert publish.main(["--topic", topic, "--file", str(path), "--no_progress"]) == 0
    out = capsys.readouterr().out
    assert f"published 33 messages to {topic}" in out and "1 without Post attributes" in out
    assert "1 empty line skipped" in out

    pulled = pubsub_env.pull_all(subscription)
    assert sorted(m.data for m in pulled) == sorted(lines)  # byte for byte, duplicates included
    by_data = {m.data: m.attributes for m in pulled}
    assert by_data[lines[0]] == {"post_id": "0", "event_time": "2026-11-25T07:00:00Z",
                                 "keyword": "acme", "lang": "en", "post_key": "0|acme"}
    assert by_data[b"{not json"] == {}


def test_synthetic_posts_at_a_rate_with_progress(pubsub_env, capsys):
    topic = pubsub_env.topic("load")
    subscription = pubsub_env.subscription(topic)
    assert publish.main(["--topic", topic, "--synthetic", "40", "--rate", "100", "--seed", "5"]) == 0
    captured = capsys.readouterr()
    assert "40/40" in captured.err  # the tqdm bar reached the total
    pulled = pubsub_env.pull_all(subscription)
    assert len(pulled) == 40 and len({m.attributes["post_id"] for m in pulled}) == 40
    assert all(json.loads(m.data)["created_at"] == m.attributes["event_time"] for m in pulled)
    assert all(m.attributes["post_key"] == f"{m.attributes['post_id']}|{m.attributes['keyword']}" for m in pulled)


def test_missing_topic_is_one_line_unless_created(pubsub_env, capsys):
    topic = f"projects/{pubsub_env.project}/topics/not-there-yet"
    assert publish.main(["--topic", topic, "--synthetic", "3", "--no_progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"pulse publish: error: topic {topic} does not exist (pass --create_topic to create it)"]
    assert publish.main(["--topic", topic, "--synthetic", "3", "--no_progress", "--create_topic"]) == 0
