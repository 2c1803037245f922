"""WriteParquetTables: the five tables as Parquet files that keep every pane.

    {"scored_posts": PCollection[dict], ..., "dead_letters": PCollection[dict]}
        -> files <output>/<table>/<YYYY-MM-DD>/<HHMMSS>-p<pane>-<digest>.parquet

`fileio.WriteToFiles` writes one set of files per window and cannot take a second pane
of the same window, but an accumulating streaming job emits several panes per window
(early, on time, late). This writer groups each bundle's rows by (window, pane), writes
each group to a temporary name and renames it into place (`FileSystems.rename`: an atomic
rename locally, a copy on GCS; either way a reader never sees a half-written file).

Writes are idempotent. The name is a digest of the rows' identities (`ROW_IDENTITY`), never
of their clock stamps (processed_at, emitted_at, received_at), so a bundle that Beam
retries, whose rows carry new clock stamps, replaces its own file instead of adding a copy.
The folder is the day of the window (event time); rows in the global window are dated by
their own event-time column (`EVENT_TIME`), and dead letters, which have none, go to
`undated/`. A folder another writer creates at the same moment is fine. What a rerun into
the same directory adds (`pulse run --append`; `check_output` refuses it otherwise) the
SQL views de-duplicate by the same identities (connectors/query/views.sql). The Arrow schema comes from
models/contracts.py, so an empty table and a full one have the same columns.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import uuid

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms import window

from models.contracts import TABLES, UTC, Field

_ARROW_TYPES = {
    "STRING": pa.string(),
    "INT64": pa.int64(),
    "FLOAT64": pa.float64(),
    "BOOL": pa.bool_(),
    "TIMESTAMP": pa.timestamp("us", tz="UTC"),
    "BYTES": pa.binary(),
}


def arrow_schema(fields: tuple[Field, ...]) -> pa.Schema:
    def arrow_field(f: Field) -> pa.Field:
        t = _ARROW_TYPES[f.type]
        if f.mode == "REPEATED":
            return pa.field(f.name, pa.list_(t), nullable=True)
        return pa.field(f.name, t, nullable=f.mode != "REQUIRED")
    return pa.schema([arrow_field(f) for f in fields])


def to_table(rows: list[dict], fields: tuple[Field, ...]) -> pa.Table:
    """Rows (dicts shaped like the contract; extra keys ignored) -> an Arrow table of the contract schema."""
    schema = arrow_schema(fields)
    columns = {f.name: [row.get(f.name) for row in rows] for f in fields}
    return pa.Table.from_pydict(columns, schema=schema)


# What makes two rows the same row: a retried bundle or a rerun writes a row again with new
# clock stamps but the same identity. connectors/query/views.sql de-duplicates by the same columns.
ROW_IDENTITY = {
    "scored_posts": ("post_id", "keyword"),
    "review_queue": ("post_id", "keyword"),
    "sentiment_windows": ("window_start", "keyword", "lang", "pane_index"),
    "alerts": ("window_start", "keyword", "kind"),
    "dead_letters": ("stage", "reason", "payload", "attributes", "message_id"),
}

# The event-time column that dates a row's folder when its Beam window does not (the global
# window). Dead letters have none: received_at is the clock's.
EVENT_TIME = {
    "scored_posts": "created_at",
    "review_queue": "created_at",
    "sentiment_windows": "window_start",
    "alerts": "window_start",
}
UNDATED = "undated"


def file_name(table: str, window_start: dt.datetime | None, pane_index: int, digest: str,
              day: dt.date | None = None) -> str:
    """<table>/<window day>/<HHMMSS of window start>-p<pane>-<digest>.parquet; without a window
    start (global window): <table>/<day or 'undated'>/global-p<pane>-<digest>.parquet."""
    if window_start is not None:
        start = window_start.astimezone(UTC)
        return f"{table}/{start:%Y-%m-%d}/{start:%H%M%S}-p{pane_index:03d}-{digest}.parquet"
    folder = f"{day:%Y-%m-%d}" if day is not None else UNDATED
    return f"{table}/{folder}/global-p{pane_index:03d}-{digest}.parquet"


def _canonical(value) -> str:
    """One identity value -> text that is equal exactly when the values are (type-tagged)."""
    if value is None:
        return "n"
    if isinstance(value, dt.datetime):
        value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        return "t" + value.isoformat(timespec="microseconds")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "b" + bytes(value).hex()
    if isinstance(value, bool):
        return "B" + str(value)
    if isinstance(value, int):
        return "i" + str(value)
    if isinstance(value, float):
        return "f" + repr(value)
    return "s" + str(value)


def row_identity(table: str, row: dict) -> tuple[str, ...]:
    """The identity of one row of `table` (ROW_IDENTITY), as canonical text."""
    return tuple(_canonical(row.get(column)) for column in ROW_IDENTITY[table])


def digest_of(table: str, rows: list[dict]) -> str:
    """A digest of the identities of `rows` (any order): equal for a retried bundle whose rows
    differ only in their clock stamps."""
    identities = sorted(row_identity(table, row) for row in rows)
    return hashlib.sha1(json.dumps(identities).encode("utf-8")).hexdigest()[:16]


def _day_of(table: str, row: dict) -> dt.date | None:
    column = EVENT_TIME.get(table)
    value = row.get(column) if column else None
    if not isinstance(value, dt.datetime):
        return None
    return (value.astimezone(UTC) if value.tzinfo else value).date()


def ensure_directory(directory: str) -> None:
    """Create `directory` and its parents; another writer creating it at the same moment is
    not an error (object stores such as GCS have no directories: nothing to do)."""
    if FileSystems.exists(directory):
        return
    try:
        FileSystems.mkdirs(directory)
    except OSError:  # BeamIOError is one; locally, "already exists"
        if not FileSystems.exists(directory):
            raise


def write_atomically(path: str, table: pa.Table) -> None:
    """Write `table` to `path` through a hidden temporary file renamed into place, replacing a
    file of the same name (a retried bundle's) without a moment where neither exists."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    directory = path.rsplit("/", 1)[0]
    ensure_directory(directory)
    temp = f"{directory}/.tmp-{uuid.uuid4().hex}.parquet"
    try:
        with FileSystems.create(temp) as f:
            f.write(buffer.getvalue())
        try:
            # Replaces the target: os.rename locally, copy-then-delete on GCS.
            FileSystems.rename([temp], [path])
        except BeamIOError:
            if not FileSystems.exists(path):
                raise
            FileSystems.delete([path])  # a file system whose rename does not overwrite
            FileSystems.rename([temp], [path])
    except BaseException:
        if FileSystems.exists(temp):
            FileSystems.delete([temp])
        raise


def check_output(output_dir: str, append: bool) -> None:
    """Refuse a Parquet output directory that already holds files unless `append` (the
    job's --append): a second run's rows would sit beside the first's. ValueError, one
    sentence naming the directory and the flag."""
    if append:
        return
    if "://" not in output_dir:
        if not os.path.exists(output_dir):
            return
        if not os.path.isdir(output_dir):
            raise ValueError(f"--output {output_dir} is a file, not a directory")
        has_files = any(files for _, _, files in os.walk(output_dir))
    else:
        pattern = output_dir.rstrip("/") + "/**"
        has_files = bool(FileSystems.match([pattern], limits=[1])[0].metadata_list)
    if has_files:
        raise ValueError(f"output directory {output_dir} is not empty: pass --append to add this run's "
                         f"rows to it (the SQL views de-duplicate a rerun) or choose an empty directory")


class _WriteTableFiles(beam.DoFn):
    def __init__(self, output_dir: str, table: str):
        self.output_dir = output_dir.rstrip("/")
        self.table = table
        self.fields = TABLES[table]
        self.rows_written = Metrics.counter("sentiment_pulse", f"rows_written_{table}")
        self.files_written = Metrics.counter("sentiment_pulse", "files_written")

    def start_bundle(self):
        self._groups: dict = {}

    def process(self, row: dict, win=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
        start = day = None
        if isinstance(win, window.IntervalWindow):
            start = dt.datetime.fromtimestamp(float(win.start), tz=UTC)
        else:
            day = _day_of(self.table, row)
        self._groups.setdefault((start, day, pane.index), []).append(row)

    def finish_bundle(self):
        for (start, day, pane_index), rows in self._groups.items():
            name = file_name(self.table, start, pane_index, digest_of(self.table, rows), day)
            write_atomically(f"{self.output_dir}/{name}", to_table(rows, self.fields))
            self.rows_written.inc(len(rows))
            self.files_written.inc()
        self._groups = {}


class WriteParquetTables(beam.PTransform):
    """A dict of table name -> PCollection of rows -> Parquet files under `output_dir`."""

    def __init__(self, output_dir: str):
        super().__init__()
        self.output_dir = output_dir

    def expand(self, tables: dict):
        unknown = set(tables) - set(TABLES)
        if unknown:
            raise ValueError(f"unknown tables {sorted(unknown)}")
        for table, rows in tables.items():
            label = "".join(part.title() for part in table.split("_"))
            rows | f"Write{label}" >> beam.ParDo(_WriteTableFiles(self.output_dir, table))
        return beam.pvalue.PDone(next(iter(tables.values())).pipeline)
