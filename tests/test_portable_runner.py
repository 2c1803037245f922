"""The job through PortableRunner to Beam's Python local job service on loopback: the same
Job API (gRPC: prepare, stage artifacts, run, stream state) that Flink's job server speaks,
so `make flink` exercises this path. Replay file in (bounded on non-Direct runners), Parquet
out, read back with DuckDB through the connectors/query/ queries.

    .venv/bin/pytest tests/test_portable_runner.py -q
"""
import json

import pytest
from apache_beam.runners.portability import local_job_service
from apache_beam.runners.runner import PipelineState

from connectors.query import duckdb_sql
from pipelines import sentiment_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TEXTS = ["I love this, best service ever", "worst delay, I hate this airline", "the flight is at noon"]


@pytest.fixture(scope="module")
def job_service():
    servicer = local_job_service.LocalJobServicer()
    port = servicer.start_grpc_server(0)
    try:
        yield f"localhost:{port}"
    finally:
        servicer.stop()


@pytest.fixture(scope="module")
def portable_run(tmp_path_factory, job_service, tiny_bundled_model):
    tmp = tmp_path_factory.mktemp("portable")
    lines = [json.dumps({"id": f"p{i}", "text": TEXTS[i % 3], "keyword": ("acme", "nimbus")[i % 2], "lang": "en",
                         "created_at": f"2026-11-24T14:{i // 10:02d}:{(7 * i) % 60:02d}Z"}) for i in range(30)]
    lines += [lines[0], "not json"]  # a redelivered duplicate and a broken message
    (tmp / "in.jsonl").write_text("\n".join(lines) + "\n")
    result = sentiment_pipeline.run([
        "--runner", "PortableRunner", "--job_endpoint", job_service, "--environment_type", "LOOPBACK",
        "--input", str(tmp / "in.jsonl"), "--output", str(tmp / "out"), "--model", str(tiny_bundled_model),
        # Bounded replay runs with batch semantics, where processing-time (early) triggers
        # have no clock: the local job service, like Flink batch, emits on-time panes only.
        "--early_firing", "0"])
    return result, str(tmp / "out")


def rows(out, sql):
    return duckdb_sql.query(out, sql)[1]


def test_job_finishes_through_the_job_api(portable_run):
    result, _ = portable_run
    assert result.state == PipelineState.DONE


def test_every_post_scored_once_and_broken_input_dead_lettered(portable_run):
    _, out = portable_run
    assert rows(out, "SELECT COUNT(*), COUNT(DISTINCT post_id) FROM scored_posts") == [(30, 30)]
    assert rows(out, "SELECT keyword, COUNT(*) FROM scored_posts GROUP BY 1 ORDER BY 1") == [
        ("acme", 15), ("nimbus", 15)]
    assert rows(out, "SELECT stage, COUNT(*) FROM dead_letters GROUP BY 1") == [("parse", 1)]


def test_windows_are_on_time_panes_that_match_the_scored_posts(portable_run):
    _, out = portable_run
    assert rows(out, "SELECT DISTINCT pane_timing FROM sentiment_windows") == [("ON_TIME",)]
    assert rows(out, "SELECT SUM(posts) FROM sentiment_windows_latest WHERE keyword = '*' AND lang = '*'") == [(30,)]
    assert duckdb_sql.run_query(out, "window_consistency")[1] == []


def test_the_balance_is_checked_at_the_sinks(portable_run, tmp_path):
    """What the tables hold, not what the steps counted: true on a runner that retries bundles."""
    import glob
    import os
    import shutil

    result, out = portable_run
    source = os.path.join(os.path.dirname(out), "in.jsonl")
    assert result.pulse_sinks == (True, "at the sinks: read 32 lines = 30 scored posts + 1 dead letters stored "
                                        "+ 1 duplicates (balanced: the job counted 1 duplicates)")
    assert sentiment_pipeline.exit_status(result, True) == 0

    # A retried bundle that wrote its file a second time (another name, new clock stamps): counted once.
    copy = str(tmp_path / "retried")
    shutil.copytree(out, copy)
    first = sorted(glob.glob(os.path.join(copy, "scored_posts", "**", "*.parquet"), recursive=True))[0]
    shutil.copy(first, first.replace(".parquet", "-retry.parquet"))
    ok, line = sentiment_pipeline.sink_accounting(copy, source, 1)
    assert ok, line
    # Attempted counts that a retry inflated (2 duplicates counted for 1) do not make it UNBALANCED...
    assert sentiment_pipeline.sink_accounting(copy, source, 2, counted_exactly=False)[0]
    # ...but committed counts that disagree with the tables do.
    assert not sentiment_pipeline.sink_accounting(copy, source, 2)[0]

    # A file lost between the job and the table: its posts are in no table.
    os.remove(first)
    os.remove(first.replace(".parquet", "-retry.parquet"))
    lost = rows(copy, "SELECT count(*) FROM scored_posts")[0][0]
    ok, line = sentiment_pipeline.sink_accounting(copy, source, 1, counted_exactly=False)
    assert not ok and f"so {30 - lost} messages are in no table" in line


def test_attempted_counts_are_never_read_as_a_balance():
    """Dataflow streaming reports attempted counts only: a retried bundle counts twice in one step."""
    retried = {"read": 10, "scored": 12, "duplicates": 0, "dead_letter_parse": 0}
    ok, line = sentiment_pipeline.accounting(retried, attempted=True)
    assert ok and "UNBALANCED" not in line and line.startswith("attempted counts")
    assert not sentiment_pipeline.accounting(retried)[0]  # as committed counts, it is a real imbalance


def test_attempted_only_is_told_from_the_runners_metrics():
    from apache_beam.metrics.execution import MetricKey, MetricResult
    from apache_beam.metrics.metricbase import MetricName

    class Result:
        def __init__(self, committed, attempted):
            key = MetricKey("Score", MetricName("SentimentPulse", "scored"))
            self._counters = [MetricResult(key, committed, attempted)]

        def metrics(self):
            return self

        def query(self, _filter=None):
            return {"counters": self._counters}

    assert sentiment_pipeline.attempted_only(Result(None, 12))  # Dataflow streaming
    assert not sentiment_pipeline.attempted_only(Result(10, None))  # the portable job service
    assert not sentiment_pipeline.attempted_only(Result(10, 12))  # Dataflow batch, the DirectRunner
