"""SentimentOptions: every setting of the job, in one PipelineOptions subclass.

All Beam options (--runner, --project, --streaming, ...) pass through unchanged.
`validate_options` rejects invalid combinations with one sentence before the pipeline
is built.
"""
from __future__ import annotations

import difflib
import os
import re

from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from connectors.sources.pubsub import SUBSCRIPTION, TOPIC
from transforms.alerts import AlertSpec
from transforms.windowing import WindowSpec

BQ_METHODS = ("STORAGE_WRITE_API", "STREAMING_INSERTS", "FILE_LOADS")


class OptionsError(ValueError):
    """An invalid flag or combination, said in one sentence."""


class SentimentOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--input", help="a JSON-lines file of posts (replayed as a stream), or "
                            "projects/P/subscriptions/S or projects/P/topics/T")
        parser.add_argument("--output", default="out",
                            help="a directory (Parquet tables) or PROJECT:DATASET (BigQuery)")
        parser.add_argument("--model", action="append", default=None,
                            help="'bundled', a SavedModel directory with model.json (local or gs://), "
                            "registry:DIR (a model registry: its current version, swapped on promotion), a "
                            "Hugging Face checkpoint directory, or hf:NAME. Repeat it as LANG=MODEL to route "
                            "languages ('en=bundled', '*=DIR' for the rest); a post in a language no model "
                            "was trained for is stored unscored (skip_reason unsupported_language)")
        parser.add_argument("--model_watch_interval", type=float, default=30.0,
                            help="seconds between looks at a registry:DIR model's pointers (Pub/Sub input)")
        parser.add_argument("--speedup", type=float, default=0.0,
                            help="replay speed against the wall clock (60 = an hour a minute; 0 = as fast as possible)")
        parser.add_argument("--replay_tick", type=float, default=5.0,
                            help="replay: seconds of event time released between watermark advances")
        parser.add_argument("--run_for", type=float, default=None,
                            help="stop a streaming job cleanly after this many seconds")
        parser.add_argument("--window_size", type=int, default=60, help="window length in seconds")
        parser.add_argument("--window_period", type=int, default=None,
                            help="sliding windows: start a window every this many seconds")
        parser.add_argument("--allowed_lateness", type=int, default=600, help="seconds")
        parser.add_argument("--max_future_skew", type=float, default=300.0,
                            help="seconds a created_at may lie ahead of the clock; later is a dead letter")
        parser.add_argument("--append", action="store_true", default=False,
                            help="allow writing into a non-empty output directory (reruns never double figures)")
        parser.add_argument("--early_firing", type=int, default=10,
                            help="early panes every this many seconds of processing time (0 = none)")
        parser.add_argument("--review_threshold", type=float, default=0.5,
                            help="posts under this confidence go to review_queue and count as low_confidence")
        parser.add_argument("--alerts_topic", default=None, help="also publish alerts to projects/P/topics/T")
        parser.add_argument("--alert_zscore", type=float, default=3.0)
        parser.add_argument("--alert_baseline_windows", type=int, default=30)
        parser.add_argument("--alert_min_posts", type=int, default=10)
        parser.add_argument("--min_batch_size", type=int, default=None)
        parser.add_argument("--max_batch_size", type=int, default=None)
        parser.add_argument("--max_batch_duration_secs", type=float, default=None)
        parser.add_argument("--model_copies", type=int, default=None,
                            help="load this many copies of the model per worker machine, each in a process of "
                            "its own, shared by all SDK processes there (one per GPU; Beam's model_copies)")
        parser.add_argument("--large_model", action="store_true", default=False,
                            help="one copy of the model per worker machine, shared by all its SDK processes "
                            "(Beam's large_model; the same as --model_copies 1)")
        parser.add_argument("--bq_method", default=None, choices=BQ_METHODS,
                            help="BigQuery write method (default STORAGE_WRITE_API)")


def output_kind(output: str) -> str:
    """'bigquery' for PROJECT:DATASET (or PROJECT.DATASET), else 'parquet' (a directory or gs:// path)."""
    if "/" in output or output.startswith(".") or os.path.isdir(output):
        return "parquet"
    return "bigquery" if re.match(r"^[\w-]+[:.][\w]+$", output) else "parquet"


def window_spec(o: SentimentOptions) -> WindowSpec:
    return WindowSpec(size_s=o.window_size, period_s=o.window_period,
                      allowed_lateness_s=o.allowed_lateness, early_firing_s=o.early_firing or None)


def view_settings(o: SentimentOptions):
    """The job's settings the SQL views are computed with (connectors/query/sqlfiles.ViewSettings):
    create the views of the job's output with these (`ensure_tables(..., settings=...)` on
    BigQuery, `pulse sql --window_size ...` on DuckDB). --allowed_lateness is not among them:
    the views read each post's `beyond_lateness`, which the job decides."""
    from connectors.query.sqlfiles import ViewSettings
    return ViewSettings(o.window_size, o.window_period, o.review_threshold)


def alert_spec(o: SentimentOptions) -> AlertSpec:
    return AlertSpec(baseline_windows=o.alert_baseline_windows,
                     min_baseline_windows=min(5, o.alert_baseline_windows),
                     min_posts=o.alert_min_posts, zscore=o.alert_zscore)


def validate_options(o: SentimentOptions) -> None:
    if not o.input:
        raise OptionsError("--input is required: a JSON-lines file or projects/P/subscriptions/S")
    pubsub = TOPIC.match(o.input) or SUBSCRIPTION.match(o.input)
    if not pubsub:
        if o.input.startswith("projects/"):
            raise OptionsError(f"--input {o.input} is neither projects/P/topics/T nor projects/P/subscriptions/S")
        if "://" not in o.input and not os.path.isfile(o.input):
            raise OptionsError(f"--input file {o.input} does not exist")
        if o.run_for is not None:
            raise OptionsError("--run_for applies to Pub/Sub input; a file input ends by itself")
    if o.run_for is not None and o.run_for <= 0:
        raise OptionsError("--run_for must be a positive number of seconds")
    if o.speedup < 0:
        raise OptionsError("--speedup cannot be negative")
    if o.replay_tick <= 0:
        raise OptionsError("--replay_tick must be positive")
    if not 0.0 <= o.review_threshold <= 1.0:
        raise OptionsError("--review_threshold must lie in [0, 1]")
    if o.alerts_topic and not TOPIC.match(o.alerts_topic):
        raise OptionsError(f"--alerts_topic {o.alerts_topic} is not projects/P/topics/T")
    if o.bq_method and output_kind(o.output) != "bigquery":
        raise OptionsError("--bq_method applies only to a BigQuery --output PROJECT:DATASET")
    if output_kind(o.output) == "parquet":
        from connectors.sinks.parquet import check_output
        try:
            check_output(o.output, o.append)
        except ValueError as e:
            raise OptionsError(str(e)) from None
    for name in ("min_batch_size", "max_batch_size"):
        value = getattr(o, name)
        if value is not None and value < 1:
            raise OptionsError(f"--{name} must be at least 1")
    if o.model_watch_interval <= 0:
        raise OptionsError("--model_watch_interval must be positive")
    if o.model_copies is not None and o.model_copies < 1:
        raise OptionsError("--model_copies must be at least 1")
    if o.min_batch_size and o.max_batch_size and o.min_batch_size > o.max_batch_size:
        raise OptionsError("--min_batch_size cannot exceed --max_batch_size")
    try:
        window_spec(o)
        alert_spec(o)
    except ValueError as e:
        raise OptionsError(str(e)) from None


def _all_options_parser(prog: str | None = None) -> _BeamArgumentParser:
    # The same parser PipelineOptions.get_all_options builds: every registered subclass's flags.
    parser = _BeamArgumentParser(allow_abbrev=False, prog=prog)
    subset = {}
    for cls in PipelineOptions.__subclasses__():
        subset.setdefault(str(cls), cls)
    for cls in subset.values():
        cls._add_argparse_args(parser)  # pylint: disable=protected-access
    return parser


def check_flags(argv: list[str]) -> None:
    """Beam discards flags it does not know with a log line; a typo here is an error instead."""
    parser = _all_options_parser()
    try:
        _, unknown = parser.parse_known_args(argv)
    except SystemExit:
        raise OptionsError("invalid flag value (see pulse run --help)") from None
    flags = [a for a in unknown if a.startswith("-")]
    if flags:
        name = flags[0].split("=", 1)[0]
        known = [opt for action in parser._actions for opt in action.option_strings]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise OptionsError(f"unknown flag {name}{hint}")


def print_help() -> None:
    import argparse
    parser = argparse.ArgumentParser(prog="pulse run", description="Run the sentiment-pulse streaming job. "
                                     "Beam's own options (--runner, --project, ...) are accepted too.")
    SentimentOptions._add_argparse_args(parser)  # pylint: disable=protected-access
    parser.print_help()


def model_values(o: "SentimentOptions") -> list[str]:
    """The job's --model values, in order ('bundled' when none was given)."""
    return list(o.model or ["bundled"])
