"""WriteParquetTables: the five tables as Parquet files that keep every pane.

    {"scored_posts": PCollection[dict], ..., "dead_letters": PCollection[dict]}
        -> files <output>/<table>/<YYYY-MM-DD>/<HHMMSS>-<pane>-<digest>.parquet

`fileio.WriteToFiles` writes one set of files per window and cannot take a second pane
of the same window, but an accumulating streaming job emits several panes per window
(early, on time, late). This writer groups each bundle's rows by (window, pane), writes
each group to a temporary name and renames it into place (`FileSystems.rename`, so a
reader never sees a half-written file, locally or on GCS). The name ends in a digest of
the rows, so a bundle that Beam retries rewrites the same file instead of adding a copy.
The folder is the window's day (event time; the global window's rows use the day they
were written), and the Arrow schema comes from models/contracts.py, so an empty table
and a full one have the same columns.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import pickle
import uuid

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
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


def file_name(table: str, window_start: dt.datetime | None, pane_index: int, digest: str) -> str:
    day = (window_start or dt.datetime.now(tz=UTC)).astimezone(UTC)
    clock = day.strftime("%H%M%S") if window_start is not None else "global"
    return f"{table}/{day:%Y-%m-%d}/{clock}-p{pane_index:03d}-{digest}.parquet"


def digest_of(rows: list[dict]) -> str:
    blobs = sorted(pickle.dumps(sorted(row.items(), key=lambda kv: kv[0]), protocol=4) for row in rows)
    h = hashlib.sha1()
    for blob in blobs:
        h.update(hashlib.sha1(blob).digest())
    return h.hexdigest()[:16]


def write_atomically(path: str, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    directory = path.rsplit("/", 1)[0]
    FileSystems.mkdirs(directory) if not FileSystems.exists(directory) else None
    temp = f"{directory}/.tmp-{uuid.uuid4().hex}.parquet"
    with FileSystems.create(temp) as f:
        f.write(buffer.getvalue())
    if FileSystems.exists(path):  # a retried bundle: same rows, same name
        FileSystems.delete([path])
    FileSystems.rename([temp], [path])


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
        start = None
        if isinstance(win, window.IntervalWindow):
            start = dt.datetime.fromtimestamp(float(win.start), tz=UTC)
        self._groups.setdefault((start, pane.index), []).append(row)

    def finish_bundle(self):
        for (start, pane_index), rows in self._groups.items():
            name = file_name(self.table, start, pane_index, digest_of(rows))
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
