"""The learning loop end to end on the sample stream.

The sample output (the whole bundled sample stream through the job) gets labels: a reviewer
(the tweets corpus's own human ratings, which the sample stream is built from) labels the
review queue through the review desk's store. `pulse accuracy` computes the live model's
agreement. A Pub/Sub job scores with `--model registry:DIR`; `pulse retrain` trains a
challenger on a small budget (the toy corpus plus those labels) against a weak champion,
promotes it, and the running job picks it up: posts after the swap carry the new version,
none lost or scored twice, and the drain finishes.
"""
import os
import time

import pytest

from connectors.monitoring import accuracy_watch
from connectors.sinks.labels import ParquetLabelStore
from connectors.feeds.publisher import Publisher, post_message
from models import data as data_lib
from models import evaluate
from models import registry
from pipelines import cli
from tests.fixtures.pubsub import BackgroundJob
from tests.test_hot_swap import _count, _post, _sql, _wait_for, probe_until_scored_by, swap_job_argv

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")


def label_review_queue(output: str, limit: int = 240) -> int:
    """The corpus's human label for each review-queue post (ids t<N> are tweet N), oldest first."""
    truth = {f"t{e.id}": data_lib.label_of(e.rating) for e in data_lib.load_corpus(DATA, "tweets")}
    rows = _sql(output, f"SELECT post_id, keyword, lang, text, label, model_version FROM read_parquet("
                        f"'{output}/review_queue/**/*.parquet', union_by_name=true) ORDER BY created_at")
    store = ParquetLabelStore(output)
    n = 0
    for post_id, keyword, lang, text, label, version in rows:
        if post_id not in truth or n >= limit:
            continue
        post = {"post_id": post_id, "keyword": keyword, "lang": lang, "text": text, "label": label,
                "model_version": version}
        store.record(post, truth[post_id], "corpus")
        n += 1
    return n


def test_labels_accuracy_retrain_promote_and_a_running_job_swaps(
        fresh_dashboard_output, pubsub_env, weak_champion, toy_corpus_dir, tmp_path, capsys):
    output = fresh_dashboard_output
    labelled = label_review_queue(output)
    assert labelled >= 100

    # Accuracy: the live model against the labels, with the number of labels behind it.
    assert cli.main(["accuracy", "--output", output, "--min-labels", "1000"]) == 0
    printed = capsys.readouterr().out
    assert "macro_f1" in printed
    rows, posts = accuracy_watch.read(output)
    overall = [r for r in rows if (r["model_version"], r["keyword"], r["lang"]) != ("*", "*", "*")
               and r["keyword"] == "*" and r["lang"] == "*"]
    assert len(overall) == 1 and overall[0]["labels"] == len(posts) <= labelled  # contested aside
    truth = [data_lib.LABELS.index(p["label"]) for p in posts]
    model = [data_lib.LABELS.index(p["model_label"]) for p in posts]
    assert overall[0]["macro_f1"] == pytest.approx(evaluate.macro_f1(truth, model), abs=1e-9)

    # A job scoring with the registry's current model (the weak champion).
    reg = str(tmp_path / "registry")
    registry.init(reg, weak_champion)
    topic = pubsub_env.topic("loop")
    subscription = pubsub_env.subscription(topic)
    job_out = str(tmp_path / "job")
    publisher = Publisher(topic)
    before = [_post(i, time.time()) for i in range(5)]
    publisher.publish([post_message(p) for p in before])
    job = BackgroundJob(swap_job_argv(subscription, job_out, reg, 400)).start()
    try:
        _wait_for(lambda: _count(job_out) >= len(before) or job.failed, 180, "the first posts")
        assert not job.failed, job.error

        # Retrain on a small budget: the toy corpus plus the labels; the challenger is promoted.
        assert cli.main(["retrain", "--output", output, "--registry", reg, "--data", toy_corpus_dir,
                         "--epochs", "6", "--resamples", "500"]) == 0
        printed = capsys.readouterr().out
        promoted = registry.current(reg)
        assert promoted.version != "weak-1" and promoted.previous == "weak-1", printed

        probes = probe_until_scored_by(job, publisher, job_out, promoted.version, 100)
        after = [_post(1000 + i, time.time()) for i in range(5)]
        publisher.publish([post_message(p) for p in after])
        publisher.close()
        _wait_for(lambda: _count(job_out) >= len(before) + len(probes) + len(after), 120, "the last posts")
    finally:
        job.stop()
    assert not job.thread.is_alive() and not job.failed, job.error
    assert job.result.pulse_end.drained
    rows = dict(_sql(job_out, "SELECT post_id, model_version FROM scored_posts"))
    assert sorted(rows) == sorted(p["id"] for p in before + probes + after)
    assert _sql(job_out, "SELECT COUNT(*) = COUNT(DISTINCT post_id) FROM scored_posts") == [(True,)]
    assert {rows[p["id"]] for p in before} == {"weak-1"}
    assert {rows[p["id"]] for p in after} == {promoted.version}
