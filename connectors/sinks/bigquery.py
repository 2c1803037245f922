"""BigQuery output: the job's five contract tables written with Beam's `WriteToBigQuery`.

`WriteBigQueryTables(dataset, method)` is applied, like connectors/sinks/parquet's
`WriteParquetTables`, to a dict `{table name: PCollection of contract rows}`. Each table
gets its explicit schema from models/contracts.py, DAY partitioning on its event-time
column (`PARTITION_COLUMN`) and clustering by `keyword` where the table has one.

Rows that cannot be written are data, not log lines: a row that breaks its contract
(checked in Python before sending) and a row BigQuery refuses (STREAMING_INSERTS and
STORAGE_WRITE_API report them) both become a `dead_letters` row with stage "write"
and the reason (BigQuery's own message for refusals), counted by the Beam counters
`bigquery_invalid_rows` / `bigquery_refused_rows`. FILE_LOADS reports no per-row
failures (a load job fails as a whole), so with it only the Python check applies.

What it wrote, for the job's balance (pipelines/sentiment_pipeline.py `accounting`), as the
Parquet sink counts it, in the job's namespace: `rows_written_<table>`, the rows of <table>
BigQuery accepted, and `rows_refused_<table>`, the rows of <table> that went to dead_letters
instead (contract break or BigQuery's refusal). Beam's WriteResult reports refusals only
(`failed_rows_with_errors`; Python's STREAMING_INSERTS has no output of rows inserted), so a
row is counted written when it is handed to WriteToBigQuery and taken back off when BigQuery
refuses it: at the end of a job that finished, the count is exactly the rows the table holds;
while it runs, it may lead the table by the rows of an insert under way.

Methods: STORAGE_WRITE_API (the default, and Dataflow's; a cross-language transform:
Beam starts a Java expansion service, which needs Java and the Beam GCP expansion
service jar), STREAMING_INSERTS (pure Python), FILE_LOADS (pure Python, stages files
under --temp_location, which must be gs://). Storage Write creates tables without
partitioning, so create them first with `ensure_tables` (below, or `make bq-tables`).

The sink writes `JOB_TABLES` only. `ensure_tables` creates every table of `TABLES`: the
job's five, `labels` (the review desk writes it with streaming inserts, connectors/sinks/labels.py)
and `job_metrics` (the launcher's counter snapshots, connectors/sinks/job_metrics.py), so that the
views of connectors/query/views.sql, which read all of them, exist on BigQuery as on DuckDB.

An emulator: pass `endpoint="http://127.0.0.1:9050"` (or set BIGQUERY_EMULATOR_HOST),
and every client used here (Beam's apitools client for tables, google-cloud-bigquery for
inserts and queries) talks to it with anonymous credentials.

    .venv/bin/python -m connectors.sinks.bigquery create --dataset my-proj:pulse   # tables + views
    .venv/bin/python -m connectors.sinks.bigquery create --dataset my-proj:pulse --window_size 300  # the job's settings
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import sys
from typing import Any, Iterable, Mapping

import apache_beam as beam
from apache_beam.io.gcp.bigquery import BigQueryDisposition, WriteToBigQuery
from apache_beam.io.gcp.bigquery_tools import RetryStrategy
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.timestamp import Timestamp

from connectors.query import sqlfiles
from models.contracts import JOB_TABLES, PARTITION_COLUMN, TABLES

METHODS = ("STORAGE_WRITE_API", "STREAMING_INSERTS", "FILE_LOADS")
CLUSTER_COLUMN = "keyword"
WRITE_STAGE = "write"
DEFAULT_TRIGGERING_FREQUENCY = {"STORAGE_WRITE_API": 5, "FILE_LOADS": 60}
EMULATOR_ENV = "BIGQUERY_EMULATOR_HOST"
NAMESPACE = "sentiment_pulse"  # the job's counters (transforms/parse.py NAMESPACE), read by its balance
_PY_TYPES = {"STRING": str, "INT64": int, "FLOAT64": (int, float), "BOOL": bool, "BYTES": bytes}
_LOG = logging.getLogger(__name__)


class RowError(ValueError):
    """A row that breaks its table's contract; the message is the dead-letter reason."""


# ---- pure functions ---------------------------------------------------------------------


def bq_schema(table: str) -> dict:
    """The table's BigQuery schema as WriteToBigQuery takes it: {"fields": [...]}."""
    return {"fields": [
        {"name": f.name, "type": f.type, "mode": f.mode, **({"description": f.description} if f.description else {})}
        for f in TABLES[table]]}


def table_parameters(table: str) -> dict:
    """additional_bq_parameters: DAY partitions on the event-time column, keyword clustering."""
    params = {"timePartitioning": {"type": "DAY", "field": PARTITION_COLUMN[table]}}
    if any(f.name == CLUSTER_COLUMN for f in TABLES[table]):
        params["clustering"] = {"fields": [CLUSTER_COLUMN]}
    return params


def to_bq_row(table: str, row: Mapping[str, Any], method: str) -> dict:
    """A contract row (Python values) -> the row WriteToBigQuery sends with `method`.

    STREAMING_INSERTS / FILE_LOADS send JSON: TIMESTAMP as RFC 3339 UTC text, BYTES as
    base64. STORAGE_WRITE_API converts dicts to Beam Rows: TIMESTAMP as a Beam
    `Timestamp`, BYTES as bytes. Raises RowError (the dead-letter reason) for a missing
    REQUIRED field, an unknown field or a value of the wrong type.
    """
    if method not in METHODS:
        raise ValueError(f"unknown BigQuery method {method!r}; expected one of {', '.join(METHODS)}")
    fields = TABLES[table]
    unknown = sorted(set(row) - {f.name for f in fields})
    if unknown:
        raise RowError(f"unknown field {unknown[0]!r} for table {table}")
    out = {}
    for f in fields:
        value = row.get(f.name)
        if f.mode == "REPEATED":
            value = [] if value is None else value
            if not isinstance(value, (list, tuple)):
                raise RowError(f"{f.name}: expected a list of {f.type}, got {type(value).__name__}")
            out[f.name] = [_convert(f.name, f.type, v, method) for v in value]
        elif value is None:
            if f.mode == "REQUIRED":
                raise RowError(f"{f.name}: required field is missing")
            out[f.name] = None
        else:
            out[f.name] = _convert(f.name, f.type, value, method)
    return out


def _convert(name: str, bq_type: str, value: Any, method: str) -> Any:
    if bq_type == "TIMESTAMP":
        if not isinstance(value, dt.datetime) or value.tzinfo is None:
            raise RowError(f"{name}: expected a timezone-aware datetime, got {value!r}")
        utc = value.astimezone(dt.timezone.utc)
        if method == "STORAGE_WRITE_API":
            return Timestamp.from_utc_datetime(utc)
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    expected = _PY_TYPES[bq_type]
    if not isinstance(value, expected) or (bq_type in ("INT64", "FLOAT64") and isinstance(value, bool)):
        raise RowError(f"{name}: expected {bq_type}, got {type(value).__name__}")
    if bq_type == "BYTES" and method != "STORAGE_WRITE_API":
        return base64.b64encode(value).decode("ascii")
    if bq_type == "FLOAT64":
        return float(value)
    return value


def dead_letter(table: str, row: Any, reason: str, now: dt.datetime | None = None) -> dict:
    """A row that could not be written -> a dead_letters row (stage "write").

    The payload is the row as JSON (lossless for the contract's types: bytes as base64,
    timestamps as RFC 3339), the attributes name the table.
    """
    payload = json.dumps(row, default=_json_default, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return {
        "stage": WRITE_STAGE,
        "reason": f"bigquery {table}: {reason}"[:1024],
        "payload": payload,
        "attributes": json.dumps({"table": table}),
        "received_at": now or dt.datetime.now(dt.timezone.utc),
    }


def refusal_reason(errors: Any) -> str:
    """BigQuery's errors for one refused row -> one line.

    STREAMING_INSERTS gives `[{"reason": ..., "message": ..., "location": ...}, ...]`;
    STORAGE_WRITE_API gives a message string.
    """
    if isinstance(errors, str):
        return errors.strip().splitlines()[0] if errors.strip() else "refused"
    parts = []
    for error in errors or []:
        if isinstance(error, Mapping):
            text = ": ".join(str(error[k]) for k in ("reason", "location", "message") if error.get(k))
            parts.append(text or json.dumps(error, default=str))
        else:
            parts.append(str(error))
    return "; ".join(parts) or "refused"


def split_dataset(dataset: str, project: str | None = None) -> tuple[str | None, str]:
    """'my-proj:pulse' | 'my-proj.pulse' | 'pulse' -> (project, dataset); `project` wins."""
    head, sep, tail = dataset.replace(".", ":", 1).partition(":")
    if sep:
        return project or head, tail
    return project, dataset


def table_spec(dataset: str, table: str, project: str | None = None) -> str:
    """('my-proj:pulse' | 'pulse', 'alerts', project) -> 'my-proj:pulse.alerts'."""
    proj, ds = split_dataset(dataset, project)
    return f"{proj}:{ds}.{table}" if proj else f"{ds}.{table}"


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, Timestamp):
        return value.to_rfc3339()
    return str(value)


def _camel(table: str) -> str:
    return "".join(part.title() for part in table.split("_"))


# ---- clients ----------------------------------------------------------------------------


def emulator_endpoint(endpoint: str | None = None) -> str | None:
    """The emulator's base URL from `endpoint` or BIGQUERY_EMULATOR_HOST; None for Google's."""
    endpoint = endpoint or os.environ.get(EMULATOR_ENV)
    if not endpoint:
        return None
    return endpoint if "://" in endpoint else f"http://{endpoint}"


def bigquery_client(project: str | None = None, endpoint: str | None = None):
    """google-cloud-bigquery Client; anonymous credentials when talking to an emulator."""
    from google.cloud import bigquery

    endpoint = emulator_endpoint(endpoint)
    if endpoint is None:
        return bigquery.Client(project=project)
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials

    return bigquery.Client(project=project or "emulator", credentials=AnonymousCredentials(),
                           client_options=ClientOptions(api_endpoint=endpoint))


class EmulatorClient:
    """The client Beam's BigQueryWrapper takes as `test_client`, pointed at an emulator.

    The wrapper calls apitools methods (`tables.Get`, `tables.Insert`, ...) and
    google-cloud-bigquery methods (`insert_rows_json`) on the one object it is given,
    so this object routes each attribute to the client that has it. It pickles as its
    endpoint and project: Beam ships it to workers inside the DoFn.
    """

    def __init__(self, endpoint: str, project: str):
        self.endpoint = emulator_endpoint(endpoint)
        self.project = project
        self._clients = None

    def __getstate__(self):
        return {"endpoint": self.endpoint, "project": self.project, "_clients": None}

    def _open(self):
        if self._clients is None:
            from apache_beam.internal.http_client import get_new_http
            from apache_beam.io.gcp.internal.clients import bigquery as apitools_bigquery

            apitools = apitools_bigquery.BigqueryV2(
                url=self.endpoint.rstrip("/") + "/bigquery/v2/", http=get_new_http(),
                get_credentials=False, credentials=None, response_encoding="utf8")
            self._clients = (apitools, bigquery_client(self.project, self.endpoint))
        return self._clients

    def __getattr__(self, name):
        if name.startswith("__") or name in ("endpoint", "project", "_clients"):
            raise AttributeError(name)
        apitools, cloud = self._open()
        return getattr(apitools, name) if hasattr(apitools, name) else getattr(cloud, name)


def ensure_tables(dataset: str, project: str | None = None, endpoint: str | None = None,
                  location: str | None = None, views: bool = True,
                  settings: sqlfiles.ViewSettings | None = None) -> list[str]:
    """Create the dataset, every table of TABLES (schema, partitioning, clustering) and the
    views of connectors/query/views.sql where missing -> the table ids. Run before the job, not inside it.

    `settings`: the window size, period and review threshold of the job that writes the
    dataset (pipelines/options.py `view_settings`), which `sentiment_windows_final` and the
    incident views are computed with; the job's defaults when None. The views are replaced
    each time, so running it again with another job's settings re-points them."""
    from google.cloud import bigquery

    project, ds_name = split_dataset(dataset, project)
    client = bigquery_client(project, endpoint)
    ds_id = f"{client.project}.{ds_name}"
    ds = bigquery.Dataset(ds_id)
    if location:
        ds.location = location
    client.create_dataset(ds, exists_ok=True)
    created = []
    for table, fields in TABLES.items():
        t = bigquery.Table(f"{ds_id}.{table}", schema=[
            bigquery.SchemaField(f.name, f.type, mode=f.mode, description=f.description or None) for f in fields])
        t.time_partitioning = bigquery.TimePartitioning(type_=bigquery.TimePartitioningType.DAY,
                                                        field=PARTITION_COLUMN[table])
        if any(f.name == CLUSTER_COLUMN for f in fields):
            t.clustering_fields = [CLUSTER_COLUMN]
        widen_schema(client, client.create_table(t, exists_ok=True), fields)
        created.append(f"{ds_id}.{table}")
    if views:
        for statement in sqlfiles.view_statements("bigquery", ds_id, settings):
            client.query(statement).result()
    return created


def widen_schema(client, table, fields) -> bool:
    """Bring a table made by an older release up to the contract, in place: add the NULLABLE
    columns it lacks (e.g. scored_posts.skip_reason, sentiment_windows.unsupported) and relax
    the REQUIRED columns the contract now makes NULLABLE (scored_posts.label ...). BigQuery allows
    both without rewriting the table. True when the schema changed."""
    from google.cloud import bigquery

    contract = {f.name: f for f in fields}
    schema, changed = [], False
    for column in table.schema:
        want = contract.get(column.name)
        if want is not None and column.mode == "REQUIRED" and want.mode == "NULLABLE":
            column = bigquery.SchemaField.from_api_repr({**column.to_api_repr(), "mode": "NULLABLE"})
            changed = True
        schema.append(column)
    have = {column.name for column in table.schema}
    for f in fields:
        if f.name in have or f.mode == "REQUIRED":  # a REQUIRED column cannot be added to rows already there
            continue
        schema.append(bigquery.SchemaField(f.name, f.type, mode=f.mode, description=f.description or None))
        changed = True
    if changed:
        table.schema = schema
        client.update_table(table, ["schema"])
    return changed


# ---- the sink ---------------------------------------------------------------------------


def written_counter(table: str):
    """`rows_written_<table>`: rows of `table` BigQuery accepted (the Parquet sink's name)."""
    return Metrics.counter(NAMESPACE, f"rows_written_{table}")


def refused_counter(table: str):
    """`rows_refused_<table>`: rows of `table` that went to dead_letters instead of `table`."""
    return Metrics.counter(NAMESPACE, f"rows_refused_{table}")


class PrepareRowsFn(beam.DoFn):
    """Contract row -> wire row (main output, counted written) | dead_letters row (tag "invalid").

    An invalid dead_letters row has no table left to go to: it is neither written nor
    refused into dead_letters (LogRefusedDeadLetterFn logs it), so the balance shows it missing."""

    INVALID = "invalid"

    def __init__(self, table: str, method: str):
        self.table = table
        self.method = method
        self.invalid = Metrics.counter("bigquery", "bigquery_invalid_rows")
        self.written = written_counter(table)
        self.refused = refused_counter(table)

    def process(self, row):
        try:
            wire = to_bq_row(self.table, row, self.method)
        except RowError as e:
            self.invalid.inc()
            if self.table != "dead_letters":
                self.refused.inc()
            yield beam.pvalue.TaggedOutput(self.INVALID, dead_letter(self.table, row, str(e)))
            return
        self.written.inc()  # taken back off if BigQuery refuses it (RefusedToDeadLetterFn)
        yield wire


def _failed_row_and_errors(failed) -> tuple[Any, Any]:
    """One element of WriteResult.failed_rows_with_errors -> (row, errors)."""
    if isinstance(failed, Mapping):  # STORAGE_WRITE_API: {"failed_row", "error_message"}
        return failed.get("failed_row"), failed.get("error_message")
    _, row, errors = failed  # STREAMING_INSERTS: (destination, row, errors)
    return row, errors


class RefusedToDeadLetterFn(beam.DoFn):
    """A row BigQuery refused, with its errors -> a dead_letters row with BigQuery's reason."""

    def __init__(self, table: str):
        self.table = table
        self.refused = Metrics.counter("bigquery", "bigquery_refused_rows")
        self.written = written_counter(table)
        self.refused_rows = refused_counter(table)

    def process(self, failed):
        self.refused.inc()
        self.written.dec()
        self.refused_rows.inc()
        row, errors = _failed_row_and_errors(failed)
        yield dead_letter(self.table, row, refusal_reason(errors))


class LogRefusedDeadLetterFn(beam.DoFn):
    """A dead letter BigQuery refused has no table left to go to: count it and log it whole.

    `sent`: it was counted written (BigQuery refused it after PrepareRowsFn let it through),
    so the count is taken back off; an invalid one never was."""

    def __init__(self, sent: bool = True):
        self.sent = sent
        self.lost = Metrics.counter("bigquery", "bigquery_refused_dead_letters")
        self.written = written_counter("dead_letters")

    def process(self, failed):
        self.lost.inc()
        if self.sent:
            self.written.dec()
        _LOG.error("BigQuery refused a dead letter: %s", json.dumps(failed, default=_json_default)[:4000])


class WriteBigQueryTables(beam.PTransform):
    """{table: PCollection[contract row dict]} (tables of JOB_TABLES) -> the tables in BigQuery.

    Returns the dead_letters table's WriteResult.
    `endpoint` points Beam's clients at an emulator (default: BIGQUERY_EMULATOR_HOST).
    `triggering_frequency` (seconds) is needed for FILE_LOADS in a streaming job.
    """

    def __init__(self, dataset: str, method: str = "STORAGE_WRITE_API", project: str | None = None,
                 endpoint: str | None = None, create_disposition: str = BigQueryDisposition.CREATE_IF_NEEDED,
                 triggering_frequency: int | None = None, expansion_service: str | None = None,
                 custom_gcs_temp_location: str | None = None):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"--bq_method must be one of {', '.join(METHODS)}, not {method!r}")
        self.dataset = dataset
        self.method = method
        self.project = project
        self.endpoint = emulator_endpoint(endpoint)
        self.create_disposition = create_disposition
        # An unbounded input needs a commit interval for these two methods (Beam refuses
        # to expand them without one); 5 s keeps Storage Write latency low, load jobs are
        # rate-limited per table per day so they go once a minute.
        self.triggering_frequency = triggering_frequency or DEFAULT_TRIGGERING_FREQUENCY.get(method)
        self.expansion_service = expansion_service
        self.custom_gcs_temp_location = custom_gcs_temp_location
        self._unbounded = False

    def _write(self, table: str) -> WriteToBigQuery:
        test_client = None
        if self.endpoint:
            project, _ = split_dataset(self.dataset, self.project)
            test_client = EmulatorClient(self.endpoint, project or "emulator")
        kwargs = {}
        if self.method == "STREAMING_INSERTS":
            # Transient errors are retried; rows BigQuery refuses for good come back as failed rows.
            kwargs["insert_retry_strategy"] = RetryStrategy.RETRY_ON_TRANSIENT_ERROR
        if self.expansion_service:
            kwargs["expansion_service"] = self.expansion_service
        if self.custom_gcs_temp_location:
            kwargs["custom_gcs_temp_location"] = self.custom_gcs_temp_location
        return WriteToBigQuery(
            table=table_spec(self.dataset, table, self.project),
            schema=bq_schema(table),
            additional_bq_parameters=table_parameters(table),
            create_disposition=self.create_disposition,
            write_disposition=BigQueryDisposition.WRITE_APPEND,
            method=self.method,
            triggering_frequency=self.triggering_frequency if self._unbounded else None,
            test_client=test_client,
            **kwargs)

    def _refused(self, result, table: str, pipeline_label: str):
        if self.method == "FILE_LOADS":
            return None
        return (result.failed_rows_with_errors
                | f"Refused{pipeline_label}" >> beam.ParDo(RefusedToDeadLetterFn(table)))

    def expand(self, tables: Mapping[str, beam.PCollection]):
        self._unbounded = any(not pc.is_bounded for pc in tables.values())
        unknown = sorted(set(tables) - set(JOB_TABLES))
        if unknown:
            raise ValueError(f"the job writes no table {unknown[0]!r}; tables: {', '.join(JOB_TABLES)}")
        write_failures = []  # then the incoming dead letters: all go to dead_letters
        for table in (t for t in JOB_TABLES if t in tables and t != "dead_letters"):
            label = _camel(table)
            prepared = tables[table] | f"Prepare{label}" >> beam.ParDo(
                PrepareRowsFn(table, self.method)).with_outputs(PrepareRowsFn.INVALID, main="rows")
            # Into the global window before the write: on the DirectRunner, a row behind the
            # watermark (a late pane, a late post) that enters WriteToBigQuery in its event-time
            # window never reaches BigQuery (Beam's ReshufflePerKey inside it drops it, without an
            # error); the rows carry their windows in their columns, so nothing is lost.
            rows = prepared.rows | f"{label}RowsToGlobalWindow" >> beam.WindowInto(GlobalWindows())
            result = rows | f"Write{label}" >> self._write(table)
            write_failures.append(prepared[PrepareRowsFn.INVALID]
                                  | f"Invalid{label}ToGlobalWindow" >> beam.WindowInto(GlobalWindows()))
            refused = self._refused(result, table, label)
            if refused is not None:
                # Flatten needs one WindowFn; dead letters live in the global window.
                write_failures.append(refused | f"Refused{label}ToGlobalWindow" >> beam.WindowInto(GlobalWindows()))
        if "dead_letters" in tables:
            write_failures.append(tables["dead_letters"]
                                  | "DeadLettersToGlobalWindow" >> beam.WindowInto(GlobalWindows()))
        if not write_failures:
            raise ValueError("WriteBigQueryTables needs at least one table")
        all_dead = tuple(write_failures) | "FlattenDeadLetters" >> beam.Flatten()
        prepared = all_dead | "PrepareDeadLetters" >> beam.ParDo(
            PrepareRowsFn("dead_letters", self.method)).with_outputs(PrepareRowsFn.INVALID, main="rows")
        # A dead letter that breaks its own contract is a bug upstream: keep it visible.
        prepared[PrepareRowsFn.INVALID] | "LogInvalidDeadLetters" >> beam.ParDo(LogRefusedDeadLetterFn(sent=False))
        result = prepared.rows | "WriteDeadLetters" >> self._write("dead_letters")
        refused = self._refused(result, "dead_letters", "DeadLetters")
        if refused is not None:
            refused | "LogRefusedDeadLetters" >> beam.ParDo(LogRefusedDeadLetterFn())
        return result


def main(argv: Iterable[str] | None = None) -> int:
    """`create --dataset P:D [--endpoint URL] [--location L] [--window_size S] [--window_period S]
    [--review_threshold X]`: tables and views before the job, the views for the job's settings."""
    import argparse

    defaults = sqlfiles.ViewSettings()
    parser = argparse.ArgumentParser(prog="python -m connectors.sinks.bigquery", description=main.__doc__)
    parser.add_argument("command", choices=["create"])
    parser.add_argument("--dataset", required=True, help="PROJECT:DATASET")
    parser.add_argument("--endpoint", help=f"emulator URL (default: ${EMULATOR_ENV})")
    parser.add_argument("--location", help="dataset location, e.g. EU")
    parser.add_argument("--window_size", type=int, default=defaults.window_size,
                        help="the job's --window_size (default: %(default)s)")
    parser.add_argument("--window_period", type=int, default=defaults.window_period,
                        help="the job's --window_period (sliding windows), if it has one")
    parser.add_argument("--review_threshold", type=float, default=defaults.review_threshold,
                        help="the job's --review_threshold (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        settings = sqlfiles.ViewSettings(args.window_size, args.window_period, args.review_threshold)
        for table_id in ensure_tables(args.dataset, endpoint=args.endpoint, location=args.location,
                                      settings=settings):
            print(table_id)
    except Exception as e:  # a CLI: the cloud client's error, in one line
        print(f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
