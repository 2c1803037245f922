"""The sentiment-pulse streaming job: posts in, scored posts, sentiment windows, alerts out.

    pulse run --input data/sample_stream.jsonl --output out
    pulse run --input projects/P/subscriptions/S --output out --run_for 600
    pulse run --input projects/P/subscriptions/S --output P:DATASET --runner DataflowRunner ...

    ReadPosts -> ParsePosts -> CheckEventTime -> Deduplicate -> WindowPosts -> Clean -> Score
      -> scored_posts, Aggregate -> sentiment_windows, Alert -> alerts (+ topic),
         Review -> review_queue;  every failure -> dead_letters

`build_pipeline` takes the source and the sinks as PTransforms (tests plug in their
own); `run` only parses options, picks them and calls it.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import NamedTuple, Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, StandardOptions, TestOptions
from apache_beam.runners.runner import PipelineState
from apache_beam.transforms import window

from pipelines.direct_runner import PatchedBeamMismatch, install_direct_runner_fixes
from pipelines.runners import Runner, RunnerError, identify
from connectors.sources.pubsub import PublishAlerts, PubSubError, ReadPosts, check_pubsub, is_pubsub_path
from connectors.sources.replay import ReplayPosts
from pipelines.options import (OptionsError, SentimentOptions, alert_spec, check_flags, model_values, output_kind,
                               validate_options, window_spec)
from transforms.aggregate import WindowedSentiment, public_row
from transforms.alerts import DetectSurges
from transforms.dedup import Deduplicate
from transforms.inference import ReviewQueue, ScorePosts
from transforms.parse import NAMESPACE, ParsePosts
from transforms.preprocess import Clean
from transforms.windowing import StampEventTime

_LOG = logging.getLogger("pulse")


def _watch_only_streams(routes: list, options: SentimentOptions) -> list:
    """A registry is watched while the job reads Pub/Sub; a replayed file is scored by the version
    current at launch (a watch would keep a finished replay running)."""
    if is_pubsub_path(options.input) or not any(r.watch for r in routes):
        return routes
    _LOG.info("replaying a file: the registry's current model scores it; promotions are picked up "
              "by jobs reading Pub/Sub")
    return [r._replace(watch=None) for r in routes]


def build_pipeline(p: beam.Pipeline, source: beam.PTransform, sinks: beam.PTransform,
                   options: SentimentOptions, model_handler=None, spec=None, *, routes=None,
                   model_metadata: dict | None = None) -> dict:
    """Wire the job into `p`; returns the table PCollections (after handing them to `sinks`)."""
    wspec = window_spec(options)
    messages = p | "ReadPosts" >> source
    parsed = messages | "ParsePosts" >> ParsePosts()
    stamped = parsed["posts"] | "CheckEventTime" >> StampEventTime(wspec, options.max_future_skew)
    unique = stamped["posts"] | "Deduplicate" >> Deduplicate(wspec.post_window_s, wspec.allowed_lateness_s)
    windowed = unique | "WindowPosts" >> wspec.post_windows()
    cleaned = windowed | "Clean" >> Clean()
    from models.handlers import SpecLookup
    if callable(model_metadata):  # built with the source (a test's TestStream), after it is applied
        model_metadata = model_metadata()
    model_metadata = dict(model_metadata or {})
    for i, route in enumerate(routes or []):
        if route.watch and i not in model_metadata:
            from connectors.sources.model_watch import WatchRegistry
            model_metadata[i] = p | f"WatchModelRegistry{i}" >> WatchRegistry(route.watch,
                                                                             options.model_watch_interval)
    scored = cleaned["posts"] | "Score" >> ScorePosts(
        model_handler, spec, routes=routes, spec_for=SpecLookup(), model_metadata=model_metadata)
    windows = (scored["scored"]
               | "Aggregate" >> WindowedSentiment(wspec.aggregate_windows(), options.review_threshold))
    alerts = windows | "Alert" >> DetectSurges(alert_spec(options), wspec.allowed_lateness_s)
    review = scored["scored"] | "Review" >> ReviewQueue(options.review_threshold)
    dead = [
        pcoll | f"DeadLetters{stage}ToGlobalWindow" >> beam.WindowInto(window.GlobalWindows())
        for stage, pcoll in (("Parse", parsed["dead_letters"]), ("Window", stamped["dead_letters"]),
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
        from connectors.sinks.bigquery import WriteBigQueryTables
        project = options.view_as(GoogleCloudOptions).project
        return WriteBigQueryTables(options.output, method=options.bq_method or "STORAGE_WRITE_API",
                                   project=project)
    from connectors.sinks.parquet import WriteParquetTables
    return WriteParquetTables(options.output)


def make_source(options: SentimentOptions, runner: Runner) -> beam.PTransform:
    if is_pubsub_path(options.input):
        return ReadPosts(options.input, on_dataflow=runner.is_dataflow)
    return ReplayPosts(options.input, speedup=options.speedup, tick_s=options.replay_tick,
                       bounded=not runner.plays_test_stream, max_future_skew_s=options.max_future_skew)


def create_routes(values: Sequence[str], **kwargs):
    """The job's `--model` values -> [transforms.inference.Route], one per model, in order.

    `LANG=MODEL` routes posts in LANG to MODEL (its model.json must declare LANG, or any language);
    `*=MODEL` takes every language no other route takes; a plain `MODEL` takes the languages its
    model.json declares (all, when it declares none). `registry:DIR` is a model registry: its
    current version, watched for promotions. Raises ValueError (one sentence) for a mistake.
    """
    from models.handlers import create_model_handler, registry_root, resolve_model, split_model_flag
    from transforms import language
    from transforms.inference import Route

    values = list(values) or ["bundled"]
    routes, seen = [], {}
    for value in values:
        lang, model = split_model_flag(value)
        key = lang if lang == language.ANY_LANGUAGE else (language.primary(lang) if lang else None)
        if key is not None and key in seen:
            raise ValueError(f"--model {value}: language {lang} already goes to {seen[key]}")
        if key is None and sum(split_model_flag(v)[0] is None for v in values) > 1:
            raise ValueError(f"--model {value}: with several models, give at most one without a language "
                             "(write LANG=MODEL or '*=MODEL')")
        try:
            root = registry_root(model)
            source = resolve_model(model)
            handler, spec = create_model_handler(source.location if root else model, **kwargs)
        except ValueError as e:
            raise ValueError(f"--model {value}: {e}") from None
        if lang and lang != language.ANY_LANGUAGE and not language.supports(spec.languages, lang):
            raise ValueError(f"--model {value}: {model} was trained for {', '.join(spec.languages)}, not {lang}")
        seen[key] = model
        watch = None
        if root:
            from models import registry

            watch = registry.pointer_glob(root)
        routes.append(Route(key, handler, spec, watch, value))
    return routes


def load_models(options: SentimentOptions) -> list:
    """The job's models: one transforms.inference.Route per --model value (see create_routes)."""
    return create_routes(model_values(options), min_batch_size=options.min_batch_size,
                         max_batch_size=options.max_batch_size,
                         max_batch_duration_secs=options.max_batch_duration_secs,
                         large_model=options.large_model, model_copies=options.model_copies)


def load_model(options: SentimentOptions):
    """(handler, spec) of the first --model value."""
    route = load_models(options)[0]
    return route.handler, route.spec


def check_input_for_runner(sentiment: SentimentOptions, runner: Runner) -> None:
    """A Pub/Sub --input on a runner that cannot read it: one sentence at submit.

    Beam's Python ReadFromPubSub is a source that only Dataflow executes (and the DirectRunner,
    through connectors/pubsub_direct); Flink, Prism and the other portable runners would accept
    the graph and fail on the workers, or never read. The cross-language read
    (apache_beam.io.external.gcp.pubsub) needs Beam's Java GCP expansion service jar, which the
    machines this project builds on cannot fetch (docs/DESIGN.md, "Runners and worker
    environments"), so it is not offered.
    """
    if is_pubsub_path(sentiment.input) and not (runner.is_direct or runner.is_dataflow):
        raise OptionsError(f"--input {sentiment.input}: {runner.name} cannot read Pub/Sub (Beam's Python Pub/Sub "
                           "read runs on Dataflow and the DirectRunner only); run there, or replay a file "
                           "into it with --input FILE")


def check_paths_for_workers(sentiment: SentimentOptions, runner: Runner) -> None:
    """Paths of this machine handed to workers that run elsewhere: one sentence at submit, not a
    failure on every worker later. (A portable runner's PROCESS / EXTERNAL workers may share this
    machine's files, a mount say: a warning there.)"""
    if runner.workers == "here":
        return
    from models import locations
    from models.handlers import only_on_this_machine, resolve_model

    from models.handlers import registry_root, split_model_flag

    local = []
    for value in model_values(sentiment):
        model = split_model_flag(value)[1]
        try:
            source, root = resolve_model(model), registry_root(model)
        except ValueError:
            source = root = None  # load_models says what is wrong with it
        if source is not None and (only_on_this_machine(source) or (root and locations.is_local_path(root))):
            local.append(("--model", value, "a gs:// copy of the model directory, or 'bundled'"))
    if not is_pubsub_path(sentiment.input) and locations.is_local_path(sentiment.input):
        local.append(("--input", sentiment.input, "a gs:// file, or a Pub/Sub subscription"))
    if output_kind(sentiment.output) == "parquet" and locations.is_local_path(sentiment.output):
        local.append(("--output", sentiment.output, "a gs:// directory, or PROJECT:DATASET"))
    for flag, value, instead in local:
        where = f"the {runner.name} workers run on other machines and cannot read it"
        if runner.workers == "elsewhere":
            raise OptionsError(f"{flag} {value} is a path on this machine only; {where}: use {instead}")
        _LOG.warning("%s %s is a path on this machine: the %s workers must see it at the same path "
                     "(a shared mount), else use %s", flag, value, runner.name, instead)


def counters(result) -> dict[str, int]:
    """The job's Beam Metrics counters (committed values), by name."""
    return counter_values(result.metrics())


def counter_values(metrics) -> dict[str, int]:
    """The job's counters in a MetricResults (a finished job's, or a running one's), by name."""
    out = {}
    for c in metrics.query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + (value or 0)
    return out


def attempted_only(result) -> bool:
    """True when the runner reports attempted counts only (Dataflow streaming): a bundle that was
    retried is counted once per attempt there, so those counts cannot be a balance."""
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    except Exception:  # noqa: BLE001  (a dry run, or a runner without metrics: nothing to judge)
        return False
    return any(c.committed is None and c.attempted is not None for c in found)


def accounting(c: dict[str, int], attempted: bool = False) -> tuple[bool, str]:
    """Does every message read end scored, as a duplicate, or as a dead letter, and is it stored?

    The steps count what they emit; the sinks count the rows they wrote (`rows_written_<table>`:
    the Parquet writer once a file is in place, the BigQuery sink the rows BigQuery accepted).
    A message lost between a step and a table makes the two disagree, so it cannot read as
    balanced. A row the sink could not put in its table and stored as a dead letter instead
    (`rows_refused_<table>`: BigQuery refused it, or it broke its contract) is still stored:
    a refused scored post counts among the dead letters, and so does a refused window, alert
    or review row, which is no message. Without sink counts the line says that it checks the
    steps only.

    `attempted`: the counts are attempted ones (see `attempted_only`); a runner's retry
    inflates one step's count and not the others', so no balance is claimed either way, and
    the line says so (`sink_accounting` checks from what was written instead).
    """
    dead = sum(v for k, v in c.items() if k.startswith("dead_letter_"))
    read, scored, dups = c.get("read", 0), c.get("scored", 0), c.get("duplicates", 0)
    line = f"read {read} = scored {scored} + duplicates {dups} + dead letters {dead}"
    if attempted:
        return True, (f"attempted counts (a retried bundle counts once per attempt, so they are no balance): "
                      f"read {read}, scored {scored}, duplicates {dups}, dead letters {dead}")
    ok = read == scored + dups + dead
    if "rows_written_scored_posts" in c or "rows_written_dead_letters" in c:
        stored_scored = c.get("rows_written_scored_posts", 0)
        stored_dead = c.get("rows_written_dead_letters", 0)
        refused_scored = c.get("rows_refused_scored_posts", 0)
        refused = sum(v for k, v in c.items() if k.startswith("rows_refused_") and k != "rows_refused_dead_letters")
        line += f"; stored {stored_scored} scored posts + {stored_dead} dead letters"
        if refused:
            line += (f" ({refused} rows the sink refused, stored as dead letters: "
                     f"{refused_scored} of them scored posts)")
        want_scored, want_dead = scored - refused_scored, dead + refused
        missing = []
        if stored_scored != want_scored:
            missing.append(f"{want_scored - stored_scored} scored posts not stored" if stored_scored < want_scored
                           else f"{stored_scored - want_scored} scored rows stored more than once")
        if stored_dead != want_dead:
            missing.append(f"{want_dead - stored_dead} dead letters not stored" if stored_dead < want_dead
                           else f"{stored_dead - want_dead} dead letters stored more than once")
        if not ok:
            missing.insert(0, f"{read - scored - dups - dead} messages read but in no step's output")
        ok = ok and not missing
        line += f" ({'balanced' if ok else 'UNBALANCED: ' + '; '.join(missing)})"
    else:
        line += (f" ({'balanced' if ok else 'UNBALANCED: messages in flight or lost'};"
                 " counted at the steps: this sink reports no row counts)")
    return ok, line


def sink_accounting(output: str, input_path: str, duplicates_counted: int | None = None,
                    counted_exactly: bool = True) -> tuple[bool, str]:
    """The balance from what the sinks hold, true on every runner: read = stored + duplicates.

    read: the input file's lines (each line is one message), counted here. Stored: the
    distinct rows of scored_posts and dead_letters (by the writer's row identities, so a
    retried bundle that wrote a file again counts once). What is neither is a duplicate.
    Balanced when that equals the duplicates the job counted; with attempted counts
    (`counted_exactly=False`, a retry can count a duplicate twice) it may not exceed them.
    For a Parquet output that held nothing before this run.
    """
    from connectors.query import duckdb_sql
    from connectors.sinks.parquet import ROW_IDENTITY
    from connectors.sources.replay import iter_file_lines

    read = sum(1 for _ in iter_file_lines(input_path))
    stored = {}
    for table in ("scored_posts", "dead_letters"):
        identity = ", ".join(ROW_IDENTITY[table])
        [(count,)] = duckdb_sql.query(output, f"SELECT count(*) FROM (SELECT DISTINCT {identity} FROM {table})")[1]
        stored[table] = count
    rest = read - stored["scored_posts"] - stored["dead_letters"]
    line = (f"at the sinks: read {read} lines = {stored['scored_posts']} scored posts + "
            f"{stored['dead_letters']} dead letters stored + {rest} duplicates")
    if rest < 0:
        return False, line + f" (UNBALANCED: {-rest} more rows stored than messages read)"
    if duplicates_counted is None:
        return True, line + " (the job counted no duplicates to compare with)"
    if rest == duplicates_counted or (not counted_exactly and rest <= duplicates_counted):
        return True, line + f" (balanced: the job counted {duplicates_counted} duplicates)"
    return False, line + (f" (UNBALANCED: the job counted {duplicates_counted} duplicates, so "
                          f"{rest - duplicates_counted} messages are in no table)" if rest > duplicates_counted
                          else f" (UNBALANCED: the job counted {duplicates_counted} duplicates)")


DRAIN_TIMEOUT_S = 300.0  # a drain that takes longer is cancelled (and reported unbalanced)


class StopRequest:
    """Asks a running job to stop. `pulse run` sets it from SIGINT / SIGTERM; tests may set it directly.

    `request(reason)`: drain. On Pub/Sub the job stops pulling, finishes what it read, fires the
    last pane of every open window, writes, and acknowledges what it wrote; unread messages stay
    in the subscription. `abort(reason, exit_code)` (a second signal): cancel at once, no drain.
    """

    def __init__(self):
        self.reason: str | None = None
        self.aborted: str | None = None
        self.exit_code: int | None = None

    def request(self, reason: str, exit_code: int | None = None) -> None:
        if self.reason is None:
            self.reason, self.exit_code = reason, exit_code

    def abort(self, reason: str, exit_code: int | None = None) -> None:
        self.aborted = reason
        self.exit_code = exit_code if exit_code is not None else self.exit_code

    @property
    def requested(self) -> bool:
        return self.reason is not None


class JobEnd(NamedTuple):
    """How a DirectRunner job ended, attached to its result as `result.pulse_end`."""

    stopped_by: str | None  # what asked it to stop (--run_for, SIGINT, SIGTERM), None if it ended by itself
    drained: bool  # it ended DONE: every window fired its last pane and everything read went through
    aborted_by: str | None  # a stop that did not drain (second signal, drain timeout, a replay stopped early)
    exit_code: int | None  # the exit status the stop asks for (128 + signal), if any
    read: object | None  # connectors.sources.pubsub_direct.ReadReport for a Pub/Sub input


def _written_check(metrics) -> tuple[bool, str]:
    """The Pub/Sub reader's gate: has every message read so far been written (per `accounting`)?"""
    return accounting(counter_values(metrics))


def _check_brokers(sentiment: SentimentOptions, options: PipelineOptions) -> None:
    """A missing subscription or topic is one sentence at start (not tracebacks and a job that reads nothing)."""
    dry_run = options.view_as(TestOptions).dry_run
    if dry_run and str(dry_run).lower() not in ("false", "0", "no"):
        return  # translation only: nothing will read or publish
    for path in (sentiment.input if is_pubsub_path(sentiment.input) else None, sentiment.alerts_topic):
        if path:
            check_pubsub(path)


class CounterSnapshots:
    """The running job's counters written beside its Parquet tables every `every_s` seconds and at
    the end (connectors/sinks/job_metrics.py: table job_metrics, view job_balance), for the dashboard's
    balance. A snapshot that cannot be written is logged once; it never stops the job."""

    def __init__(self, output: str, source: str, every_s: float = 5.0):
        import datetime as dt

        from connectors.sinks import job_metrics

        self.output, self.source, self.every_s = output, source, every_s
        self.started_at = dt.datetime.now(dt.timezone.utc)
        self.run_id = job_metrics.new_run_id(self.started_at)
        self._next = 0.0
        self._failed = False

    def write(self, result, state: str = "RUNNING", force: bool = False) -> None:
        from connectors.sinks import job_metrics

        if not force and time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.every_s
        try:
            job_metrics.write_snapshot(self.output, self.run_id, self.started_at, counter_values(result.metrics()),
                                       state, self.source)
        except Exception as e:  # noqa: BLE001  (a dashboard figure; the job goes on)
            if not self._failed:
                _LOG.warning("cannot write the job's counters to %s/job_metrics: %s", self.output, e)
            self._failed = True
        self.check_accuracy(force)

    # The accuracy watch over the same output (connectors/monitoring/accuracy_watch.AccuracyWatch, e.g.
    # accuracy_watch.watch_for_job(output, spec)): model_degraded alerts every 60 s and at the end.
    accuracy = None

    def check_accuracy(self, force: bool = False) -> None:
        if self.accuracy is not None:
            self.accuracy.check(force=force)  # logs a failure once, never raises


def _await(result, reader, sentiment: SentimentOptions, stop: StopRequest | None,
           snapshots: CounterSnapshots | None = None) -> JobEnd:
    """Wait for a DirectRunner job; on --run_for or a stop request, drain it (Pub/Sub) or cancel it (a file)."""
    failure: list[BaseException] = []

    def wait():
        try:
            result.wait_until_finish()
        except BaseException as e:  # noqa: BLE001  (handed to the main thread)
            failure.append(e)

    waiter = threading.Thread(target=wait, name="pulse-wait", daemon=True)
    waiter.start()
    deadline = None if sentiment.run_for is None else time.monotonic() + sentiment.run_for
    stopped_by = aborted_by = None
    exit_code = None
    draining_since = None
    try:
        while waiter.is_alive():
            waiter.join(0.5)
            if not waiter.is_alive():
                break
            if reader is not None:
                reader.maintain()
            if snapshots is not None:
                snapshots.write(result)
            if stop is not None and stop.aborted:
                aborted_by, exit_code = stop.aborted, stop.exit_code
                _LOG.warning("%s again: cancelling without draining; what was not acknowledged stays in "
                             "the subscription", stop.aborted)
                break
            if draining_since is None:
                if stop is not None and stop.requested:
                    stopped_by, exit_code = stop.reason, stop.exit_code
                elif deadline is not None and time.monotonic() >= deadline:
                    stopped_by = f"--run_for {sentiment.run_for:g} s"
                if stopped_by is None:
                    continue
                draining_since = time.monotonic()
                if reader is None:
                    aborted_by = stopped_by
                    _LOG.warning("%s: a replayed file cannot be drained; cancelling", stopped_by)
                    break
                _LOG.info("%s: stopping: no more pulls; finishing what was read, firing the last pane of "
                          "every open window, writing%s", stopped_by,
                          " (send it again to abort)" if stop is not None and stop.requested else "")
                reader.request_stop(stopped_by)
                from connectors.sources import model_watch
                model_watch.stop_watches()  # the model registry's watch ends too
            elif time.monotonic() - draining_since > DRAIN_TIMEOUT_S:
                aborted_by = f"drain timeout ({DRAIN_TIMEOUT_S:.0f} s)"
                _LOG.error("the drain did not finish in %.0f s: cancelling", DRAIN_TIMEOUT_S)
                break
        if waiter.is_alive():
            result.cancel()
        if failure:
            raise failure[0]
    except BaseException:
        if reader is not None:
            reader.finish(written=False)
        if snapshots is not None:
            snapshots.write(result, "FAILED", force=True)
        raise
    drained = result.state == PipelineState.DONE
    if snapshots is not None:
        snapshots.write(result, str(result.state), force=True)
    report = None
    if reader is not None:
        ok, _ = accounting(counters(result))
        report = reader.finish(written=drained and ok)
    return JobEnd(stopped_by, drained, aborted_by, exit_code, report)


def run(argv: list[str] | None = None, model=None, stop: StopRequest | None = None
        ) -> beam.runners.runner.PipelineResult:
    """Parse options, build and run the job; blocks until a file is played or the job is stopped.

    `model` = (handler, spec) overrides --model (tests pass a small one). On the DirectRunner,
    --run_for or `stop` (set by `pulse run` on SIGINT / SIGTERM) drains a Pub/Sub job: no more
    pulls, what was read is finished and written, every open window fires its last pane, and
    only then are the messages acknowledged; `result.pulse_end` (JobEnd) says how it ended.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    check_flags(argv)
    options = PipelineOptions(argv)
    sentiment = options.view_as(SentimentOptions)
    validate_options(sentiment)
    standard = options.view_as(StandardOptions)
    standard.streaming = True
    try:
        runner = identify(options)
    except RunnerError as e:
        raise OptionsError(str(e)) from None
    check_input_for_runner(sentiment, runner)
    _check_brokers(sentiment, options)
    if runner.is_direct:
        # The DirectRunner would first try Prism, which needs a download and cannot run
        # TestStream; go straight to the Python runner that supports streaming.
        standard.runner = "BundleBasedDirectRunner"
        install_direct_runner_fixes()
    check_paths_for_workers(sentiment, runner)
    if model is None:
        try:
            routes = load_models(sentiment)
        except (ValueError, FileNotFoundError) as e:
            message = str(e)
            raise OptionsError(message if message.startswith("--model") else f"--model: {message}") from None
    elif isinstance(model, list):
        routes = model
    else:
        from transforms.inference import Route
        routes = [Route("*", model[0], model[1], any_language=True)]
    source = make_source(sentiment, runner)
    routes = _watch_only_streams(routes, sentiment)
    for route in routes:
        _LOG.info("model %s%s (%s)%s", f"{route.language}=" if route.language else "", route.spec.name,
                  route.spec.version, f", watching {route.watch}" if route.watch else "")
    _LOG.info("input %s, output %s", sentiment.input, sentiment.output)
    if runner.is_direct:
        from connectors.sources import model_watch
        model_watch.reset_watches()
    if isinstance(source, ReplayPosts) and source.bounded and sentiment.early_firing:
        # A bounded replay has batch semantics: no processing-time panes (the portable job
        # service fails on processing-time triggers in batch).
        _LOG.info("replaying %s as a bounded collection on %s: no early panes", sentiment.input, runner.name)
        sentiment.early_firing = 0
    p = beam.Pipeline(options=options)
    build_pipeline(p, source, make_sinks(sentiment), sentiment, routes=routes)
    reader = source.reader() if isinstance(source, ReadPosts) else None
    if reader is not None:
        reader.settled = _written_check  # acknowledge only what the job has written
        reader.learn_ack_deadline()
    result = p.run()
    if not runner.is_direct and is_pubsub_path(sentiment.input):
        # A streaming job on Dataflow runs until stopped: submitting is the whole command, unless
        # --run_for says when to drain it.
        if sentiment.run_for is not None:
            result.wait_until_finish(duration=int(sentiment.run_for * 1000))
            drain_dataflow_job(options, result.job_id())
        return result
    if not runner.is_direct:
        result.wait_until_finish()
        if (result.state == PipelineState.DONE and output_kind(sentiment.output) == "parquet"
                and not sentiment.append):
            attempted = attempted_only(result)
            result.pulse_sinks = sink_accounting(sentiment.output, sentiment.input,
                                                 counters(result).get("duplicates"), counted_exactly=not attempted)
        return result
    snapshots = CounterSnapshots(sentiment.output, sentiment.input) if output_kind(sentiment.output) == "parquet" else None
    if snapshots is not None:
        # The accuracy watch (model_degraded alerts) runs beside the counters, every minute and at the end.
        from connectors.monitoring import accuracy_watch
        from models.handlers import registry_root, split_model_flag
        first = routes[0]
        roots = [registry_root(split_model_flag(v)[1]) for v in model_values(sentiment)]
        snapshots.accuracy = accuracy_watch.watch_for_job(sentiment.output, first.spec,
                                                          next((r for r in roots if r), None))
    result.pulse_end = _await(result, reader, sentiment, stop, snapshots)
    return result


def drain_dataflow_job(options: PipelineOptions, job_id: str) -> None:
    """Ask Dataflow to drain the job (JOB_STATE_DRAINING): it stops pulling, finishes what it read,
    fires every open window as if the watermark had reached the end, writes, then ends; the
    messages it did not read stay in the subscription. (Cancelling would drop what is in flight.)
    Through Beam's Dataflow client, so `--dataflow_endpoint` and the credentials apply."""
    from apache_beam.runners.dataflow.internal import apiclient

    client = apiclient.DataflowApplicationClient(options)
    _LOG.info("--run_for elapsed: draining Dataflow job %s", job_id)
    if not client.modify_job_state(job_id, "JOB_STATE_DRAINING"):
        raise RuntimeError(f"Dataflow refused to drain job {job_id}")


def _install_stop_signals(stop: StopRequest):
    """SIGINT / SIGTERM drain the job; the same signal again aborts it. Returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_signal(signum, _frame):
        name = signal.Signals(signum).name
        if stop.requested:
            stop.abort(name, 128 + signum)
            os.write(2, f"pulse run: {name} again: aborting without draining\n".encode())
        else:
            stop.request(name, 128 + signum)
            os.write(2, f"pulse run: {name}: stopping cleanly (send {name} again to abort)\n".encode())

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def undo():
        for s, handler in previous.items():
            signal.signal(s, handler)

    return undo


def exit_status(result, ok: bool) -> int:
    """0 only for a job that ended DONE and balanced, with every message it wrote acknowledged."""
    end = getattr(result, "pulse_end", None)
    if end is None:  # submitted to Dataflow / Flink, or translated only: unchanged
        sinks_ok = getattr(result, "pulse_sinks", (True, ""))[0]
        return 0 if result.state in (PipelineState.DONE, PipelineState.CANCELLED) and sinks_ok else 1
    if end.aborted_by is not None:
        return end.exit_code or 1
    if not (end.drained and ok):
        return 1
    if end.read is not None and (end.read.returned or end.read.unreachable_at_end):
        return 1  # written but not acknowledged, or a dead broker: neither reads as success
    return 0


def main(argv: list[str] | None = None) -> int:
    """`pulse run`: one-line errors for user mistakes, a counter summary at the end."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    for noisy in ("apache_beam", "tensorflow", "absl", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = time.monotonic()
    stop = StopRequest()
    undo = _install_stop_signals(stop)
    try:
        result = run(argv, stop=stop)
    except (OptionsError, FileNotFoundError, PubSubError, PatchedBeamMismatch) as e:
        print(f"pulse run: error: {e}", file=sys.stderr)
        return 2
    finally:
        undo()
    c = counters(result)
    ok, line = accounting(c, attempted=attempted_only(result))
    end = getattr(result, "pulse_end", None)
    how = ""
    if end is not None and end.aborted_by:
        how = f" (stopped by {end.aborted_by}, not drained)"
    elif end is not None and end.stopped_by:
        how = f" (stopped by {end.stopped_by}, drained)"
    print(f"pulse run: {result.state}{how} in {time.monotonic() - started:.0f} s; {line}", file=sys.stderr)
    if end is not None and end.read is not None:
        print(f"pulse run: {end.read.line()}", file=sys.stderr)
    if getattr(result, "pulse_sinks", None) is not None:
        print(f"pulse run: {result.pulse_sinks[1]}", file=sys.stderr)
    print("pulse run: windows emitted {windows_emitted}, alerts {alerts}, scored past the allowed lateness "
          "{late_beyond_lateness} (in sentiment_windows_final only)".format(
              **{k: c.get(k, 0) for k in ("windows_emitted", "alerts", "late_beyond_lateness")}), file=sys.stderr)
    status = exit_status(result, ok)
    if status and end is not None:
        if end.aborted_by is not None:
            back = f"; the {end.read.returned} unacknowledged messages went back to the subscription" if end.read else ""
            print(f"pulse run: stopped by {end.aborted_by} without draining{back}", file=sys.stderr)
        elif end.read is not None and end.read.returned and (end.drained and ok):
            print(f"pulse run: error: {end.read.returned} written messages could not be acknowledged "
                  "(broker unreachable); Pub/Sub will deliver them again", file=sys.stderr)
        elif end.read is not None and end.read.unreachable_at_end and (end.drained and ok):
            print(f"pulse run: error: Pub/Sub {end.read.subscription} was unreachable when the job stopped",
                  file=sys.stderr)
        elif not ok or not end.drained:
            left = f"; the {end.read.returned} unacknowledged messages stay in the subscription" if end.read else ""
            print(f"pulse run: error: the job did not account for every message it read{left}", file=sys.stderr)
    return status

if __name__ == "__main__":
    sys.exit(main())
