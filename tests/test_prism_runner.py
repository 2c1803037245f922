"""The job on a second real engine: Beam's Prism runner, with workers that have only the built package.

Prism (Beam's portable runner written in Go, built by `make prism` from the Beam Go module of
the same version) runs the job through the Job API like Flink's job server does, with the
SDK workers from the EXTERNAL worker pool of tests/test_worker_environment.py (a venv holding
only the wheel, in a mount namespace where the checkout is an empty tmpfs). Prism executes
TestStream itself, so the file replays as a stream there as on the DirectRunner: the
scenario of tests/test_runner_equivalence.py (400 posts over 20 minutes played shuffled, a
complaint surge, hostile lines, redelivered duplicates) with late data past the allowed
lateness, early, on-time and late panes, alerts and dedup, on both engines, with
`--model bundled` loaded from the workers' installed package. Tables equal column for
column; the panes of every window add up to the final window on both.

Flink is not here: Beam's Flink job server jar (beam-runners-flink-<flink>-job-server) is not
served by the Maven repository this project can reach, for any Beam or Flink version tried
(docs/DESIGN.md, "Runners and worker environments", lists them).

    make prism && .venv/bin/pytest tests/test_prism_runner.py -q
"""
import random
import signal

import pytest

from connectors.query import duckdb_sql
from pipelines import sentiment_pipeline
from tests.test_runner_equivalence import lines_in_order
from tests.test_worker_environment import worker_pool, worker_venv  # noqa: F401  (module fixtures)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prism_binary, worker_pool):  # noqa: F811
    endpoint, pool_log = worker_pool
    tmp = tmp_path_factory.mktemp("prism")
    shuffled = lines_in_order()
    random.Random(11).shuffle(shuffled)
    (tmp / "shuffled.jsonl").write_bytes(b"\n".join(shuffled) + b"\n")
    sigint = signal.getsignal(signal.SIGINT)  # Beam's job server installs its own and never restores it
    try:
        prism = sentiment_pipeline.run([
            "--runner", "PrismRunner", "--prism_location", prism_binary,
            "--environment_type", "EXTERNAL", "--environment_config", endpoint,
            "--input", str(tmp / "shuffled.jsonl"), "--output", str(tmp / "prism"), "--model", "bundled"])
    finally:
        signal.signal(signal.SIGINT, sigint)
    direct = sentiment_pipeline.run(["--input", str(tmp / "shuffled.jsonl"), "--output", str(tmp / "direct"),
                                     "--model", "bundled"])
    return prism, direct, str(tmp / "prism"), str(tmp / "direct"), pool_log


def rows(out, sql):
    return duckdb_sql.query(out, sql)[1]


def both(runs, sql):
    _, _, prism_out, direct_out, _ = runs
    return rows(prism_out, sql), rows(direct_out, sql)


def test_the_job_ran_on_prism_with_the_pools_workers(runs):
    from apache_beam.runners.runner import PipelineState

    prism, _, _, _, pool_log = runs
    assert prism.state == PipelineState.DONE
    assert "Starting worker with command" in pool_log.read_text()
    assert prism.pulse_sinks[0], prism.pulse_sinks[1]
    ok, line = sentiment_pipeline.accounting(sentiment_pipeline.counters(prism))
    assert ok, line


def test_scored_posts_equal_the_direct_runners_column_for_column(runs):
    posts = ("SELECT post_id, keyword, lang, created_at, text, label, round(score, 6), stars, round(confidence, 6), "
             "model_version, token_count, oov_count, beyond_lateness, skip_reason "
             "FROM scored_posts_unique ORDER BY ALL")
    on_prism, on_direct = both(runs, posts)
    assert len(on_direct) == 461 and on_prism == on_direct
    review = "SELECT post_id, keyword FROM review_queue ORDER BY ALL"
    assert both(runs, review)[0] == both(runs, review)[1]


def test_late_data_is_judged_the_same_on_both_engines(runs):
    """The shuffle makes posts late, some past the allowed lateness: the same ones on both."""
    prism, direct, _, _, _ = runs
    on_prism, on_direct = sentiment_pipeline.counters(prism), sentiment_pipeline.counters(direct)
    assert on_prism["late_beyond_lateness"] == on_direct["late_beyond_lateness"] > 0
    beyond = "SELECT post_id, keyword FROM scored_posts_unique WHERE beyond_lateness ORDER BY ALL"
    assert both(runs, beyond)[0] == both(runs, beyond)[1] != []


def test_duplicates_and_dead_letters_are_the_same(runs):
    prism, direct, _, _, _ = runs
    assert sentiment_pipeline.counters(prism)["duplicates"] == sentiment_pipeline.counters(direct)["duplicates"] == 3
    dead = "SELECT stage, reason, message_id FROM dead_letters ORDER BY ALL"
    on_prism, on_direct = both(runs, dead)
    assert on_prism == on_direct and len(on_direct) == 5


def test_final_windows_and_alerts_are_the_same(runs):
    final = """SELECT window_start, keyword, lang, posts, positive, neutral, negative, round(mean_score, 9)
               FROM sentiment_windows_final ORDER BY ALL"""
    on_prism, on_direct = both(runs, final)
    assert on_prism == on_direct and len(on_direct) > 40
    alerts = "SELECT window_start, keyword, kind FROM alerts_unique ORDER BY ALL"
    on_prism, on_direct = both(runs, alerts)
    assert on_prism == on_direct and ("acme", "volume_spike") in {(k, kind) for _, k, kind in on_direct}


# The last pane of each window by pane index (panes accumulate), beside the final window.
LAST_PANE_VS_FINAL = """
WITH last_pane AS (
  SELECT * FROM sentiment_windows
  QUALIFY ROW_NUMBER() OVER (PARTITION BY window_start, window_end, keyword, lang ORDER BY pane_index DESC) = 1)
SELECT f.window_start, f.keyword, f.lang, f.posts, l.posts, f.negative, l.negative
FROM sentiment_windows_final AS f LEFT JOIN last_pane AS l
  ON l.window_start = f.window_start AND l.window_end = f.window_end AND l.keyword = f.keyword AND l.lang = f.lang
WHERE f.posts_beyond_lateness = 0 AND (l.posts IS DISTINCT FROM f.posts OR l.negative IS DISTINCT FROM f.negative)
ORDER BY ALL"""


def test_streaming_panes_add_up_to_the_final_windows_on_both_engines(runs):
    """Early, on-time and late panes on both; the last pane of a window that no post reached past
    the allowed lateness equals the window computed from scored_posts."""
    timings = "SELECT DISTINCT pane_timing FROM sentiment_windows ORDER BY 1"
    assert both(runs, timings)[0] == both(runs, timings)[1] == [("EARLY",), ("LATE",), ("ON_TIME",)]
    on_prism, on_direct = both(runs, LAST_PANE_VS_FINAL)
    assert on_prism == [] and on_direct == []
