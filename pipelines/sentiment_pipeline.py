"""The sentiment-pulse streaming job: posts in, scored posts, sentiment windows, alerts out.

    pulse run --input data/sample_stream.jsonl --output out
    pulse run --input projects/P/subscriptions/S --output out --run_for 600
    pulse run --input projects/P/subscriptions/S --output P:DATASET --runner DataflowRunner ...

    ReadPosts -> ParsePosts -> WindowPosts -> Deduplicate -> Clean -> Score
      -> scored_posts, Aggregate -> sentiment_windows, Alert -> alerts (+ topic),
         Review -> review_queue;  every failure -> dead_letters

`build_pipeline` takes the source and the sinks as PTransforms (tests plug in their
own); `run` only parses options, picks them and calls it.
"""
from __future__ import annotations

import logging
import sys
import time

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineState
from apache_beam.transforms import window

from pipelines import direct_runner_metrics
from connectors.pubsub import PublishAlerts, ReadPosts, is_pubsub_path
from connectors.replay import ReplayPosts
from pipelines.options import (OptionsError, SentimentOptions, alert_spec, check_flags, output_kind,
                               validate_options, window_spec)
from transforms.aggregate import WindowedSentiment, public_row
from transforms.alerts import DetectSurges
from transforms.dedup import Deduplicate
from transforms.inference import ReviewQueue, ScorePosts
from transforms.parse import NAMESPACE, ParsePosts
from transforms.preprocess import Clean
from transforms.windowing import WindowPosts

_LOG = logging.getLogger("pulse")
DIRECT_RUNNERS = {None, "DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner"}


def build_pipeline(p: beam.Pipeline, source: beam.PTransform, sinks: beam.PTransform,
                   options: SentimentOptions, model_handler, spec) -> dict:
    """Wire the job into `p`; returns the table PCollections (after handing them to `sinks`)."""
    wspec = window_spec(options)
    messages = p | "ReadPosts" >> source
    parsed = messages | "ParsePosts" >> ParsePosts()
    windowed = parsed["posts"] | "WindowPosts" >> WindowPosts(wspec)
    unique = windowed["posts"] | "Deduplicate" >> Deduplicate()
    cleaned = unique | "Clean" >> Clean()
    scored = cleaned["posts"] | "Score" >> ScorePosts(model_handler, spec)
    windows = (scored["scored"]
               | "Aggregate" >> WindowedSentiment(wspec.aggregate_windows(), options.review_threshold))
    alerts = windows | "Alert" >> DetectSurges(alert_spec(options), wspec.allowed_lateness_s)
    review = scored["scored"] | "Review" >> ReviewQueue(options.review_threshold)
    dead = [
        pcoll | f"DeadLetters{stage}ToGlobalWindow" >> beam.WindowInto(window.GlobalWindows())
        for stage, pcoll in (("Parse", parsed["dead_letters"]), ("Window", windowed["dead_letters"]),
                             ("Clean", cleaned["dead_letters"]), ("Score", scored["dead_letters"]))
    ]
    tables = {
        "scored_posts": scored["scored"],
        "sentiment_windows": windows | "PublicWindowFields" >> beam.Map(public_row),
        "alerts": alerts,
        "review_queue": review,
        "dead_letters": dead | "DeadLetters" >> beam.Flatten(),
    }
    tables | "WriteTables" >> sinks
    if options.alerts_topic:
        alerts | "PublishAlerts" >> PublishAlerts(options.alerts_topic)
    return tables


def make_sinks(options: SentimentOptions) -> beam.PTransform:
    if output_kind(options.output) == "bigquery":
        from connectors.bigquery import WriteBigQueryTables
        project = options.view_as(GoogleCloudOptions).project
        return WriteBigQueryTables(options.output, method=options.bq_method or "STORAGE_WRITE_API",
                                   project=project)
    from connectors.parquet import WriteParquetTables
    return WriteParquetTables(options.output)


def make_source(options: SentimentOptions, runner: str | None) -> beam.PTransform:
    if is_pubsub_path(options.input):
        return ReadPosts(options.input, on_dataflow=runner == "DataflowRunner")
    return ReplayPosts(options.input, speedup=options.speedup, tick_s=options.replay_tick,
                       bounded=runner not in DIRECT_RUNNERS)


def load_model(options: SentimentOptions):
    from models.handlers import create_model_handler
    return create_model_handler(options.model, min_batch_size=options.min_batch_size,
                                max_batch_size=options.max_batch_size,
                                max_batch_duration_secs=options.max_batch_duration_secs)


def counters(result) -> dict[str, int]:
    """The job's Beam Metrics counters (committed values), by name."""
    out = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + (value or 0)
    return out


def accounting(c: dict[str, int]) -> tuple[bool, str]:
    """Does every message read end scored, as a duplicate, or as a dead letter?"""
    dead = sum(v for k, v in c.items() if k.startswith("dead_letter_")) + c.get("dropped_late", 0)
    read, scored, dups = c.get("read", 0), c.get("scored", 0), c.get("duplicates", 0)
    ok = read == scored + dups + dead
    line = (f"read {read} = scored {scored} + duplicates {dups} + dead letters {dead}"
            f" ({'balanced' if ok else 'UNBALANCED: messages in flight or lost'})")
    return ok, line


def run(argv: list[str] | None = None, model=None) -> beam.runners.runner.PipelineResult:
    """Parse options, build and run the job; blocks until a file is played or --run_for is up.

    `model` = (handler, spec) overrides --model (tests pass a small one).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    check_flags(argv)
    options = PipelineOptions(argv)
    sentiment = options.view_as(SentimentOptions)
    validate_options(sentiment)
    standard = options.view_as(StandardOptions)
    standard.streaming = True
    runner = standard.runner
    if runner in DIRECT_RUNNERS:
        # The DirectRunner would first try Prism, which needs a download and cannot run
        # TestStream; go straight to the Python runner that supports streaming.
        standard.runner = "BundleBasedDirectRunner"
        direct_runner_metrics.install()
    if model is None:
        try:
            model = load_model(sentiment)
        except (ValueError, FileNotFoundError) as e:
            raise OptionsError(f"--model {sentiment.model}: {e}") from None
    handler, spec = model
    _LOG.info("model %s (%s), input %s, output %s", spec.name, spec.version, sentiment.input, sentiment.output)
    source = make_source(sentiment, runner)
    if isinstance(source, ReplayPosts) and source.bounded and sentiment.early_firing:
        # A bounded replay has batch semantics: no processing-time panes (the portable job
        # service fails on processing-time triggers in batch).
        _LOG.info("replaying %s as a bounded collection on %s: no early panes", sentiment.input, runner)
        sentiment.early_firing = 0
    p = beam.Pipeline(options=options)
    build_pipeline(p, source, make_sinks(sentiment), sentiment, handler, spec)
    result = p.run()
    if runner not in DIRECT_RUNNERS and is_pubsub_path(sentiment.input):
        # A streaming job on Dataflow or Flink runs until cancelled: submitting is the whole command.
        if sentiment.run_for is not None:
            result.wait_until_finish(duration=int(sentiment.run_for * 1000))
            result.cancel()
        return result
    if sentiment.run_for is None:
        result.wait_until_finish()
    else:
        deadline = time.monotonic() + sentiment.run_for
        while time.monotonic() < deadline and not PipelineState.is_terminal(result.state):
            time.sleep(0.5)
        if not PipelineState.is_terminal(result.state):
            _LOG.info("--run_for %.0f s is up: stopping the job", sentiment.run_for)
            result.cancel()
    return result


def main(argv: list[str] | None = None) -> int:
    """`pulse run`: one-line errors for user mistakes, a counter summary at the end."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    for noisy in ("apache_beam", "tensorflow", "absl", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = time.monotonic()
    try:
        result = run(argv)
    except (OptionsError, FileNotFoundError) as e:
        print(f"pulse run: error: {e}", file=sys.stderr)
        return 2
    c = counters(result)
    ok, line = accounting(c)
    print(f"pulse run: {result.state} in {time.monotonic() - started:.0f} s; {line}", file=sys.stderr)
    print("pulse run: windows emitted {windows_emitted}, alerts {alerts}, dropped late {dropped_late}".format(
        **{k: c.get(k, 0) for k in ("windows_emitted", "alerts", "dropped_late")}), file=sys.stderr)
    return 0 if result.state in (PipelineState.DONE, PipelineState.CANCELLED) else 1


if __name__ == "__main__":
    sys.exit(main())
