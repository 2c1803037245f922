"""WriteParquetTables keeps every pane (early, on time, late) as its own file, atomically."""
import datetime as dt
import glob
import os

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms import trigger, window
from apache_beam.transforms.window import TimestampedValue

from connectors.sinks.parquet import arrow_schema, digest_of, to_table, write_atomically
from connectors.sinks.parquet import WriteParquetTables
from models.contracts import DEAD_LETTERS, SENTIMENT_WINDOWS, TABLES

UTC = dt.timezone.utc
T0 = 1_800_000_000


def window_row(pane):
    return {"window_start": dt.datetime.fromtimestamp(T0, tz=UTC), "window_end": dt.datetime.fromtimestamp(T0 + 60, tz=UTC),
            "keyword": "acme", "lang": "*", "posts": pane + 1, "positive": 0, "neutral": 0, "negative": pane + 1,
            "mean_score": -1.0, "mean_confidence": 1.0, "low_confidence": 0, "oov_rate": None,
            "pane_index": pane, "pane_timing": "X", "model_version": "v", "emitted_at": dt.datetime.now(tz=UTC)}


def test_every_pane_of_a_window_is_written(tmp_path):
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    stream = (TestStream()
              .add_elements([TimestampedValue(1, T0 + 1)])
              .advance_processing_time(11)
              .advance_watermark_to(T0 + 30)
              .add_elements([TimestampedValue(1, T0 + 2)])
              .advance_watermark_to(T0 + 90)
              .add_elements([TimestampedValue(1, T0 + 3)])  # late
              .advance_watermark_to_infinity())
    with TestPipeline(runner="BundleBasedDirectRunner", options=options) as p:
        counts = (p | stream
                  | beam.WindowInto(window.FixedWindows(60),
                                    trigger=trigger.AfterWatermark(early=trigger.AfterProcessingTime(10),
                                                                   late=trigger.AfterCount(1)),
                                    accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                                    allowed_lateness=600)
                  | beam.CombineGlobally(sum).without_defaults())

        class ToRow(beam.DoFn):
            def process(self, total, pane=beam.DoFn.PaneInfoParam):
                row = window_row(pane.index)
                row["posts"] = total
                yield row
        rows = counts | beam.ParDo(ToRow())
        {"sentiment_windows": rows} | WriteParquetTables(str(tmp_path))
    files = sorted(glob.glob(str(tmp_path / "sentiment_windows" / "*" / "*.parquet")))
    assert len(files) == 3, files
    assert [os.path.basename(f).split("-")[1] for f in files] == ["p000", "p001", "p002"]
    tables = [pq.read_table(f) for f in files]
    assert [t.column("posts").to_pylist() for t in tables] == [[1], [2], [3]]
    assert all(t.schema.equals(arrow_schema(SENTIMENT_WINDOWS)) for t in tables)
    assert not glob.glob(str(tmp_path / "**" / ".tmp-*"), recursive=True)


def test_same_rows_same_file_name_and_overwrite(tmp_path):
    rows = [{"stage": "parse", "reason": "r", "payload": b"\xff", "attributes": "{}",
             "received_at": dt.datetime(2026, 1, 1, tzinfo=UTC)}]
    assert digest_of("dead_letters", rows) == digest_of("dead_letters", [dict(reversed(list(rows[0].items())))])
    path = str(tmp_path / "dead_letters" / "x.parquet")
    write_atomically(path, to_table(rows, DEAD_LETTERS))
    write_atomically(path, to_table(rows, DEAD_LETTERS))
    assert pq.read_table(path).column("payload").to_pylist() == [b"\xff"]
    assert os.listdir(tmp_path / "dead_letters") == ["x.parquet"]


def test_every_contract_table_has_an_arrow_schema():
    for fields in TABLES.values():
        assert len(arrow_schema(fields)) == len(fields)
