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
import threading
import time

import pytest

from connectors import accuracy_watch
from connectors.labels import ParquetLabelStore
from connectors.publisher import Publisher, post_message
from models import data as data_lib
from models import evaluate
from models import registry
from pipelines import cli, sentiment_pipeline
from tests.test_hot_swap import _count, _post, _sql, _wait_for

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


@pytest.fixture
def weak_champion(tmp_path, toy_corpus_dir):
    from models import train

    out = str(tmp_path / "weak")
    train.run(toy_corpus_dir, out, epochs=1, subset=10, ablation=False, progress=False, version="weak-1")
    return out


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
    stop = sentiment_pipeline.StopRequest()
    outcome = {}

    def run():
        try:
            outcome["result"] = sentiment_pipeline.run(
                ["--input", subscription, "--output", job_out, "--model", f"registry:{reg}",
                 "--model_watch_interval", "1", "--window_size", "10", "--early_firing", "1",
                 "--run_for", "400"], stop=stop)
        except BaseException as e:  # noqa: BLE001
            outcome["error"] = e

    publisher = Publisher(topic)
    before = [_post(i, time.time()) for i in range(5)]
    publisher.publish([post_message(p) for p in before])
    job = threading.Thread(target=run, daemon=True)
    job.start()
    try:
        _wait_for(lambda: _count(job_out) >= len(before) or "error" in outcome, 180, "the first posts")
        assert "error" not in outcome, outcome.get("error")

        # Retrain on a small budget: the toy corpus plus the labels; the challenger is promoted.
        assert cli.main(["retrain", "--output", output, "--registry", reg, "--data", toy_corpus_dir,
                         "--epochs", "6", "--resamples", "500"]) == 0
        printed = capsys.readouterr().out
        promoted = registry.current(reg)
        assert promoted.version != "weak-1" and promoted.previous == "weak-1", printed

        probes, n = [], 100
        while _count(job_out, f"model_version = '{promoted.version}'") == 0:
            assert len(probes) < 120 and "error" not in outcome, "the promotion was never picked up"
            probe = _post(n, time.time())
            n += 1
            probes.append(probe)
            publisher.publish([post_message(probe)])
            time.sleep(1)
        after = [_post(1000 + i, time.time()) for i in range(5)]
        publisher.publish([post_message(p) for p in after])
        publisher.close()
        _wait_for(lambda: _count(job_out) >= len(before) + len(probes) + len(after), 120, "the last posts")
    finally:
        stop.request("test over")
        job.join(120)
    assert not job.is_alive() and "error" not in outcome, outcome.get("error")
    assert outcome["result"].pulse_end.drained
    rows = dict(_sql(job_out, "SELECT post_id, model_version FROM scored_posts"))
    assert sorted(rows) == sorted(p["id"] for p in before + probes + after)
    assert _sql(job_out, "SELECT COUNT(*) = COUNT(DISTINCT post_id) FROM scored_posts") == [(True,)]
    assert {rows[p["id"]] for p in before} == {"weak-1"}
    assert {rows[p["id"]] for p in after} == {promoted.version}
