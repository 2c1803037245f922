"""The job's counters as a table (connectors/sinks/job_metrics.py) and the view job_balance
(connectors/query/views.sql): one snapshot file per run, replaced atomically while a reader reads it, and a
balance that says balanced or not.

    .venv/bin/pytest tests/test_job_metrics.py -q
"""
import datetime as dt
import os
import threading
import uuid

import pyarrow.parquet as pq
import pytest

from connectors.query import duckdb_sql
from connectors.sinks import job_metrics

pytestmark = pytest.mark.integration
UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 24, 14, 0, tzinfo=UTC)

# What sentiment_pipeline.counters() gives for a Parquet run: 10 read = 6 + 1 + (2 + 1).
COUNTERS = {"read": 10, "scored": 6, "duplicates": 1, "dead_letter_parse": 2, "dead_letter_window": 1,
            "rows_written_scored_posts": 6, "rows_written_dead_letters": 3, "files_written": 4}


def balance(out):
    columns, rows = duckdb_sql.query(out, "SELECT * FROM job_balance ORDER BY run_id")
    return [dict(zip(columns, r)) for r in rows]


def test_snapshot_row_sums_the_dead_letter_stages():
    row = job_metrics.snapshot_row("run-1", T0, COUNTERS, "DONE", "in.jsonl", updated_at=T0.timestamp() + 5)
    assert row == {"run_id": "run-1", "started_at": T0, "updated_at": T0 + dt.timedelta(seconds=5), "state": "DONE",
                   "read": 10, "scored": 6, "duplicates": 1, "dead_letters": 3, "stored_scored": 6,
                   "stored_dead_letters": 3, "input": "in.jsonl"}
    bigquery_run = job_metrics.snapshot_row("r", T0, {"read": 1, "scored": 1}, "RUNNING", None)
    assert (bigquery_run["stored_scored"], bigquery_run["stored_dead_letters"], bigquery_run["dead_letters"]) == (
        None, None, 0)
    assert job_metrics.snapshot_row("r", dt.datetime(2026, 1, 1), {}, "DONE", None)["started_at"].tzinfo == UTC


@pytest.mark.parametrize("args, message", [
    (("../x", T0, {}, "DONE"), "run id"),
    (("r", T0, {}, " "), "state"),
    (("r", T0, {"read": -1}, "DONE"), "counter 'read'"),
    (("r", T0, {"scored": 1.5}, "DONE"), "counter 'scored'"),
    (("r", "yesterday", {}, "DONE"), "started_at"),
])
def test_bad_snapshots_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        job_metrics.snapshot_row(*args, input=None)


def test_job_balance_keeps_the_latest_snapshot_per_run(tmp_path):
    out = str(tmp_path)
    run = job_metrics.new_run_id(T0)
    assert run.startswith("20261124T140000Z-")
    # Mid-run: 2 messages read and in flight.
    path = job_metrics.write_snapshot(out, run, T0, dict(COUNTERS, read=12), "RUNNING", "in.jsonl",
                                      updated_at=T0 + dt.timedelta(seconds=5))
    assert path == os.path.join(out, "job_metrics", f"{run}.parquet")
    [row] = balance(out)
    assert (row["state"], row["balanced"], row["unaccounted"], row["stored_balanced"]) == ("RUNNING", False, 2, True)
    job_metrics.write_snapshot(out, run, T0, COUNTERS, "DONE", "in.jsonl", updated_at=T0 + dt.timedelta(seconds=9))
    assert os.listdir(os.path.join(out, "job_metrics")) == [f"{run}.parquet"]  # replaced, no temporary left
    [row] = balance(out)
    assert (row["state"], row["read"], row["scored"], row["duplicates"], row["dead_letters"]) == ("DONE", 10, 6, 1, 3)
    assert (row["balanced"], row["unaccounted"], row["stored_balanced"]) == (True, 0, True)
    assert row["updated_at"] == T0 + dt.timedelta(seconds=9) and row["input"] == "in.jsonl"

    # A second run: balanced at the steps, one scored post not stored; a third without sink counts.
    job_metrics.write_snapshot(out, "run-b", T0, dict(COUNTERS, rows_written_scored_posts=5), "DONE", "in.jsonl")
    job_metrics.write_snapshot(out, "run-c", T0, {"read": 3, "scored": 1, "duplicates": 1}, "DONE", "sub")
    by_run = {r["run_id"]: r for r in balance(out)}
    assert (by_run["run-b"]["balanced"], by_run["run-b"]["stored_balanced"]) == (True, False)
    assert (by_run["run-c"]["balanced"], by_run["run-c"]["unaccounted"], by_run["run-c"]["stored_balanced"]) == (
        False, 1, None)


def test_no_snapshot_no_rows(tmp_path):
    assert balance(str(tmp_path)) == []


def test_a_reader_never_sees_half_a_snapshot(tmp_path):
    """The launcher replaces the file while the dashboard reads it, many times over: every read
    finds exactly one whole snapshot (balanced: each one is), none is skipped as unreadable, and
    the counts never go back."""
    out = str(tmp_path)
    run = "run-1"
    job_metrics.write_snapshot(out, run, T0, {"read": 0}, "RUNNING", None)
    done = threading.Event()
    a_read_ended = threading.Event()  # the reader sets it after each read
    errors = []

    def launcher():
        try:
            for i in range(1, 301):
                if i % 30 == 0:  # let at least one read end between these writes: reads interleave with them
                    a_read_ended.clear()
                    if not a_read_ended.wait(timeout=120):
                        raise TimeoutError("the reader made no progress in 120 s")
                counters = {"read": 3 * i, "scored": i, "duplicates": i, "dead_letter_parse": i,
                            # a big, varying column: files of different sizes
                            "rows_written_scored_posts": i, "rows_written_dead_letters": i}
                job_metrics.write_snapshot(out, run, T0, counters, "RUNNING", "x" * (i * 37 % 5000))
        except Exception as e:  # noqa: BLE001
            errors.append(e)
        finally:
            done.set()

    writer = threading.Thread(target=launcher)
    writer.start()
    path = job_metrics.snapshot_path(out, run)
    seen, reads = [], 0
    finished = False
    while not finished or reads < 5:
        finished = done.is_set()  # read once more after the last write: it must see the last snapshot
        columns, rows, skipped = duckdb_sql.query_with_warnings(out, "SELECT read, balanced FROM job_balance")
        assert skipped == [] and len(rows) == 1, (rows, skipped)
        assert rows[0][1] is True
        seen.append(rows[0][0])
        assert pq.read_metadata(path).num_rows == 1
        reads += 1
        a_read_ended.set()
    writer.join()
    assert not errors, errors
    # 10 reads ended while the launcher was writing (it waited for them), one more after it finished
    assert seen == sorted(seen) and seen[-1] == 900 and reads >= 11
    assert [f for f in os.listdir(os.path.join(out, "job_metrics")) if f.startswith(".tmp")] == []


def test_the_snapshot_on_bigquery(bq_emulator):
    from connectors.sinks import bigquery as cb
    from tests.fixtures.bigquery import PROJECT

    dataset = f"{PROJECT}:metrics_{uuid.uuid4().hex[:8]}"
    cb.ensure_tables(dataset, endpoint=bq_emulator)
    for i, state in enumerate(("RUNNING", "DONE")):
        job_metrics.write_snapshot_bigquery(dataset, "run-1", T0, dict(COUNTERS, read=12 - 2 * i), state, "sub",
                                            updated_at=T0 + dt.timedelta(seconds=i), endpoint=bq_emulator)
    client = cb.bigquery_client(PROJECT, bq_emulator)
    rows = [dict(r.items()) for r in client.query(
        f"SELECT run_id, state, read, balanced, stored_balanced FROM `{PROJECT}`.`{dataset.split(':')[1]}`.job_balance"
    ).result()]
    assert rows == [{"run_id": "run-1", "state": "DONE", "read": 10, "balanced": True, "stored_balanced": True}]
    with pytest.raises(RuntimeError, match="cannot write the job's counters"):
        job_metrics.write_snapshot_bigquery(f"{PROJECT}:nope_{uuid.uuid4().hex[:8]}", "run-1", T0, COUNTERS, "DONE",
                                            None, endpoint=bq_emulator)
