"""The job's Beam counters as a small table, for the Health page's balance.

`read = scored + duplicates + dead letters` needs `read` and `duplicates`, which are Beam
counters and in no table the job writes. The launcher, which holds the running job's
`PipelineResult`, writes a snapshot of `pipelines.sentiment_pipeline.counters()` while it waits
(every few seconds) and once more when the job ends:

    started = dt.datetime.now(dt.timezone.utc)
    run_id = new_run_id(started)
    write_snapshot("out", run_id, started, counters, "RUNNING", "data/sample.jsonl")

Table `job_metrics` (models/contracts.JOB_METRICS): one row per snapshot, read through the view
`job_balance` (connectors/query/views.sql), which keeps each run's latest snapshot and says whether it
balances. Counter names: `read`, `scored`, `duplicates`, `dead_letter_<stage>` (summed into
dead_letters), `rows_written_scored_posts` / `rows_written_dead_letters` (the Parquet writer's
stored rows; absent for BigQuery, so NULL).

Parquet: `<output>/job_metrics/<run_id>.parquet`, ONE file per run, replaced by each snapshot
through a hidden temporary file renamed over it (connectors/sinks/parquet.write_atomically:
os.rename locally), so a reader sees the previous snapshot or the next, never half a file.
BigQuery: streaming inserts cannot replace a row, so each snapshot is a new row
(`write_snapshot_bigquery`, insertId run_id + updated_at) and `job_balance` keeps the latest;
`ensure_tables` creates the table with the others, so the view exists on both. The launcher of a
Dataflow job that it does not wait for writes none: the Health page then shows no balance.
"""
from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any, Mapping

from models.contracts import JOB_METRICS, UTC

TABLE = "job_metrics"
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def new_run_id(started_at: dt.datetime | None = None) -> str:
    """A run id that sorts by start time and is unique: '20261124T140000Z-1a2b3c4d'."""
    started = _timestamp(started_at if started_at is not None else dt.datetime.now(UTC), "started_at")
    return f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def snapshot_row(run_id: str, started_at: Any, counters: Mapping[str, int], state: str,
                 input: str | None, updated_at: Any = None) -> dict:  # noqa: A002  (the contract's name)
    """One job_metrics row from the job's counters (`sentiment_pipeline.counters()`).

    `started_at` / `updated_at`: aware datetimes (naive ones are read as UTC) or epoch seconds;
    `updated_at` defaults to now. ValueError (one sentence) for a bad run id, state or count.
    """
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"run id {run_id!r} must be 1-128 letters, digits, '.', '_' or '-' (it names a file)")
    if not isinstance(state, str) or not state.strip():
        raise ValueError("a snapshot needs the job's state, e.g. RUNNING or DONE")

    def count(name: str) -> int:
        value = counters.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"counter {name!r} must be a whole number >= 0, not {value!r}")
        return value

    dead = sum(count(name) for name in counters if name.startswith("dead_letter_"))
    return {
        "run_id": run_id,
        "started_at": _timestamp(started_at, "started_at"),
        "updated_at": _timestamp(updated_at if updated_at is not None else dt.datetime.now(UTC), "updated_at"),
        "state": state.strip(),
        "read": count("read"),
        "scored": count("scored"),
        "duplicates": count("duplicates"),
        "dead_letters": dead,
        "stored_scored": count("rows_written_scored_posts") if "rows_written_scored_posts" in counters else None,
        "stored_dead_letters": (count("rows_written_dead_letters") if "rows_written_dead_letters" in counters
                                else None),
        "input": input,
    }


def snapshot_path(output_dir: str, run_id: str) -> str:
    return f"{output_dir.rstrip('/')}/{TABLE}/{run_id}.parquet"


def write_snapshot(output_dir: str, run_id: str, started_at: Any, counters: Mapping[str, int], state: str,
                   input: str | None, *, updated_at: Any = None) -> str:  # noqa: A002
    """Write (or replace) the run's snapshot file under a Parquet output -> its path.

    Atomic: a reader sees the previous snapshot or this one. Local paths and any Beam
    FileSystems URI (gs://) work; the directory is created if needed.
    """
    from connectors.sinks.parquet import to_table, write_atomically

    row = snapshot_row(run_id, started_at, counters, state, input, updated_at)
    path = snapshot_path(output_dir, run_id)
    write_atomically(path, to_table([row], JOB_METRICS))
    return path


def write_snapshot_bigquery(dataset: str, run_id: str, started_at: Any, counters: Mapping[str, int], state: str,
                            input: str | None, *, updated_at: Any = None, client=None,  # noqa: A002
                            project: str | None = None, endpoint: str | None = None) -> dict:
    """Append the snapshot to `PROJECT:DATASET`'s job_metrics table (job_balance keeps the
    latest per run) -> the row. RuntimeError, one line, when BigQuery refuses it."""
    from connectors.sinks.bigquery import bigquery_client, split_dataset, to_bq_row

    row = snapshot_row(run_id, started_at, counters, state, input, updated_at)
    ds_project, ds_name = split_dataset(dataset, project)
    client = client if client is not None else bigquery_client(ds_project, endpoint)
    table_id = f"{ds_project or client.project}.{ds_name}.{TABLE}"
    insert_id = f"{run_id}/{row['updated_at'].isoformat()}"
    try:
        errors = client.insert_rows_json(table_id, [to_bq_row(TABLE, row, "STREAMING_INSERTS")], row_ids=[insert_id])
    except Exception as e:  # noqa: BLE001  (the client's error, in one line)
        message = str(getattr(e, "message", None) or e).strip().splitlines()
        raise RuntimeError(f"cannot write the job's counters to {table_id}: "
                           f"{message[0] if message else type(e).__name__}") from None
    if errors:
        raise RuntimeError(f"BigQuery refused the job's counters for {table_id}: {str(errors)[:300]}")
    return row


def _timestamp(value: Any, name: str) -> dt.datetime:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(value, tz=UTC)
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    raise ValueError(f"{name} must be a datetime or epoch seconds, not {value!r}")


__all__ = ["TABLE", "new_run_id", "snapshot_row", "snapshot_path", "write_snapshot", "write_snapshot_bigquery"]
