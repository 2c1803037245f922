"""Hot swap: the running job picks up a promoted model without a restart, and routes by language.

- Unit: route_index, the --model flag's LANG=MODEL form, create_routes' one-line errors, the
  handler's pointer resolution, IsolateFailures loading each location once and keeping the old
  model when a promoted one cannot load.
- A whole job on TestStream: the model metadata side input says "the launch model", then a
  promotion, between two batches of posts; at the sink, the first batch carries the old version,
  the second the new one, every post exactly once.
- A job on the Pub/Sub emulator with `--model registry:DIR`: Beam's WatchFilePattern sees a
  promotion made while it runs; posts after the swap carry the new version, nothing lost or
  scored twice, the drain still finishes (the watch stops with it).
- Languages in a job: a Hindi post under an English-only model is stored unscored
  (unsupported_language); with `--model '*=DIR'` it is scored by that model, with its version.
"""
import datetime as dt
import json
import math
import os
import time

import apache_beam as beam
import duckdb
import pytest
from apache_beam.ml.inference.base import ModelMetadata
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms import trigger, window

from connectors.sinks.parquet import WriteParquetTables
from connectors.feeds.publisher import Publisher, post_message, rfc3339
from models import registry
from models.contracts import RawMessage
from models.handlers import split_model_flag
from models.savedmodel import ContractSavedModelHandler
from pipelines import sentiment_pipeline
from pipelines.direct_runner import install_direct_runner_fixes
from pipelines.sentiment_pipeline import create_routes
from pipelines.options import OptionsError, SentimentOptions
from tests.fixtures.pubsub import BackgroundJob
from transforms.inference import IsolateFailures, route_index

TEXTS = ("I love this phone", "I hate the new update, worst ever", "the app opens at nine",
         "I enjoy the service", "I regret buying this store's case")


# ---- units ---------------------------------------------------------------------------------------


def test_route_index_prefers_the_language_route_then_declared_languages_then_star():
    routes = [(None, ("en",)), ("hi", ("hi",)), ("*", None)]
    assert route_index("en", routes) == 0
    assert route_index("en-GB", routes) == 0
    assert route_index("hi", routes) == 1
    assert route_index("ja", routes) == 2
    assert route_index("und", routes) == 0  # nothing says it is in another language
    assert route_index("ja", routes[:2]) is None  # unsupported_language
    assert route_index("hi", [(None, ("en",))]) is None
    assert route_index("hi", [(None, None)]) == 0  # a model that declares no languages takes all
    assert route_index("fr", [("en", ("en",)), ("*", ("en",))]) == 1


def test_model_flag_language_prefix():
    assert split_model_flag("en=bundled") == ("en", "bundled")
    assert split_model_flag("pt_BR=/m") == ("pt-br", "/m")
    assert split_model_flag("*=gs://b/m") == ("*", "gs://b/m")
    assert split_model_flag("gs://bucket/a=b") == (None, "gs://bucket/a=b")
    assert split_model_flag("registry:/r") == (None, "registry:/r")


def test_routes_refuse_a_model_for_a_language_it_was_not_trained_for(tiny_bundled_model):
    with pytest.raises(ValueError, match=r"^--model hi=.*was trained for en, not hi$"):
        create_routes([f"hi={tiny_bundled_model}"])
    with pytest.raises(ValueError, match="language en already goes to"):
        create_routes([f"en={tiny_bundled_model}", f"en={tiny_bundled_model}"])
    with pytest.raises(ValueError, match="at most one without a language"):
        create_routes([tiny_bundled_model, tiny_bundled_model])
    with pytest.raises(ValueError, match="has no current model"):
        create_routes(["registry:/nonexistent/registry"])


def test_pulse_run_says_a_bad_model_flag_in_one_line(tiny_bundled_model, tmp_path, capsys):
    sample = tmp_path / "in.jsonl"
    sample.write_text('{"id": "1", "text": "hi"}\n')
    code = sentiment_pipeline.main(["--input", str(sample), "--output", str(tmp_path / "out"),
                                    "--model", f"hi={tiny_bundled_model}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "was trained for en, not hi" in err[0]


@pytest.fixture(scope="module")
def second_model(tmp_path_factory, toy_corpus_dir):
    """A second tiny model (other weights, version tiny-v2), trained by the real code."""
    from models import train

    out = tmp_path_factory.mktemp("tiny_v2") / "model"
    train.run(toy_corpus_dir, str(out), epochs=2, ablation=False, progress=False, version="tiny-v2")
    return str(out)


@pytest.fixture
def two_version_registry(tmp_path, tiny_bundled_model, second_model):
    """A registry whose current model is tiny-test, holding tiny-v2 (not promoted yet)."""
    root = str(tmp_path / "registry")
    first = registry.init(root, tiny_bundled_model)
    registry.add_version(root, second_model)
    return root, first


def test_handler_follows_pointers_and_keeps_its_model_on_a_bad_one(two_version_registry, tmp_path):
    root, first = two_version_registry
    handler = ContractSavedModelHandler(first.location)
    handler.update_model_path("")  # WatchFilePattern: nothing newer than the job
    assert handler.location == first.location
    second = registry.promote(root, "tiny-v2", {"why": "test"})
    handler.update_model_path(second.path)
    assert handler.location == registry.version_location(root, "tiny-v2")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    handler.update_model_path(str(bad))
    assert handler.location == registry.version_location(root, "tiny-v2")


class _Counting:
    """A handler stand-in that counts loads per location (IsolateFailures' cache is under test)."""

    def __init__(self, location, broken=()):
        self.location, self.broken, self.loads = location, set(broken), []

    def load_model(self):
        if self.location in self.broken:
            raise OSError(f"no SavedModel at {self.location}")
        self.loads.append(self.location)
        return f"model@{self.location}"

    def update_model_path(self, model_path=None):
        if model_path:
            self.location = model_path


def test_isolate_failures_loads_each_location_once_and_survives_a_broken_promotion():
    inner = _Counting("v1", broken={"v3"})
    wrapped = IsolateFailures(inner)
    assert wrapped.load_model() == "model@v1" and wrapped.load_model() == "model@v1"
    wrapped.update_model_path("v2")
    assert wrapped.load_model() == "model@v2" and wrapped.load_model() == "model@v2"
    assert inner.loads == ["v1", "v2"]
    wrapped.update_model_path("v3")  # cannot load: v2 keeps scoring
    assert wrapped.load_model() == "model@v2" and inner.location == "v2"
    assert inner.loads == ["v1", "v2"]


# ---- a job on TestStream -------------------------------------------------------------------------


def _post(i: int, created: float, text: str | None = None, lang: str = "en") -> dict:
    return {"id": f"p{i}", "text": text or TEXTS[i % len(TEXTS)], "keyword": "acme", "lang": lang,
            "author_id": str(i), "created_at": rfc3339(dt.datetime.fromtimestamp(created, tz=dt.timezone.utc))}


def _raw(post: dict, arrival: float) -> beam.window.TimestampedValue:
    data = json.dumps(post).encode()
    return beam.window.TimestampedValue(RawMessage(data, {}, arrival, -math.inf, f"m-{post['id']}"), arrival)


class _SwapStream(beam.PTransform):
    """Posts and model metadata from one TestStream: the first batch, a promotion, the second batch."""

    def __init__(self, first, second, pointer_path, t0):
        super().__init__()
        self.first, self.second, self.pointer_path, self.t0 = first, second, pointer_path, t0
        self.models = None

    def expand(self, pbegin):
        t0 = self.t0
        stream = (TestStream(output_tags={"posts", "models"})
                  .add_elements([ModelMetadata(model_id="", model_name="")], tag="models")
                  .advance_processing_time(1)
                  .add_elements([_raw(p, t0 + 1) for p in self.first], tag="posts")
                  .advance_watermark_to(t0 + 60, tag="posts")
                  .advance_processing_time(5)
                  .add_elements([ModelMetadata(model_id=self.pointer_path, model_name="tiny-v2")], tag="models")
                  .advance_processing_time(5)
                  .add_elements([_raw(p, t0 + 61) for p in self.second], tag="posts")
                  .advance_watermark_to_infinity(tag="posts")
                  .advance_watermark_to_infinity(tag="models"))
        streams = pbegin | "Stream" >> stream
        self.models = streams["models"] | "ModelsAsTriggeredSideInput" >> beam.WindowInto(
            window.GlobalWindows(), trigger=trigger.Repeatedly(trigger.AfterProcessingTime(1)),
            accumulation_mode=trigger.AccumulationMode.DISCARDING)
        return streams["posts"]


def _sql(out: str, query: str):
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    for table in ("scored_posts", "sentiment_windows", "dead_letters"):
        if os.path.isdir(os.path.join(out, table)):
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM "
                        f"read_parquet('{out}/{table}/**/*.parquet', union_by_name=true)")
    return con.execute(query).fetchall()


def test_a_promotion_mid_stream_swaps_the_model_on_teststream(two_version_registry, tmp_path):
    root, first = two_version_registry
    routes = create_routes([f"registry:{root}"])
    assert routes[0].spec.version == "tiny-test" and routes[0].watch == registry.pointer_glob(root)
    second = registry.promote(root, "tiny-v2", {"why": "test"})
    t0 = (time.time() // 60 - 30) * 60  # half an hour ago, on a minute boundary
    first_batch = [_post(i, t0 + 1 + i) for i in range(12)]
    second_batch = [_post(100 + i, t0 + 61 + i) for i in range(12)]
    source = _SwapStream(first_batch, second_batch, second.path, t0)
    out = str(tmp_path / "out")
    options = PipelineOptions(["--window_size", "60", "--early_firing", "0"])
    options.view_as(beam.options.pipeline_options.StandardOptions).streaming = True
    install_direct_runner_fixes()
    p = beam.Pipeline(runner="BundleBasedDirectRunner", options=options)
    sentiment_pipeline.build_pipeline(p, source, WriteParquetTables(out), options.view_as(SentimentOptions),
                                      routes=routes, model_metadata=lambda: {0: source.models})
    p.run().wait_until_finish()

    rows = _sql(out, "SELECT post_id, model_version, label FROM scored_posts ORDER BY post_id")
    assert sorted(r[0] for r in rows) == sorted(p["id"] for p in first_batch + second_batch)  # each once
    versions = {r[0]: r[1] for r in rows}
    assert {versions[p["id"]] for p in first_batch} == {"tiny-test"}
    assert {versions[p["id"]] for p in second_batch} == {"tiny-v2"}
    assert all(r[2] in ("negative", "neutral", "positive") for r in rows)
    windows = dict(_sql(out, "SELECT epoch(window_start) - " + str(int(t0)) + ", model_version "
                             "FROM sentiment_windows WHERE keyword = '*' AND lang = '*' "
                             "QUALIFY ROW_NUMBER() OVER (PARTITION BY window_start ORDER BY pane_index DESC) = 1"))
    assert windows == {0: "tiny-test", 60: "tiny-v2"}


# ---- a job on the Pub/Sub emulator ---------------------------------------------------------------


def _count(out: str, where: str = "TRUE") -> int:
    if not os.path.isdir(os.path.join(out, "scored_posts")):
        return 0
    try:
        return _sql(out, f"SELECT COUNT(DISTINCT post_id) FROM scored_posts WHERE {where}")[0][0]
    except duckdb.Error:
        return 0


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def swap_job_argv(subscription: str, out: str, registry_dir: str, run_for_s: int) -> list[str]:
    """A Pub/Sub job scoring with a registry's current model, looking at its pointers every second."""
    return ["--input", subscription, "--output", out, "--model", f"registry:{registry_dir}",
            "--model_watch_interval", "1", "--window_size", "10", "--early_firing", "1", "--run_for", str(run_for_s)]


def probe_until_scored_by(job, publisher, out: str, version: str, first_id: int) -> list[dict]:
    """Publish a post a second until one is stored scored by `version` (the swap is seen); -> the probes."""
    probes, n = [], first_id
    while _count(out, f"model_version = '{version}'") == 0:
        assert len(probes) < 120 and not job.failed, "the promotion was never picked up"
        probe = _post(n, time.time())
        n += 1
        probes.append(probe)
        publisher.publish([post_message(probe)])
        time.sleep(1)
    return probes


@pytest.mark.integration
def test_a_promotion_is_picked_up_by_a_running_pubsub_job(pubsub_env, two_version_registry, tmp_path):
    root, first = two_version_registry
    emulator = pubsub_env
    topic = emulator.topic("swap")
    subscription = emulator.subscription(topic)
    out = str(tmp_path / "out")
    now = time.time()
    publisher = Publisher(topic)
    before = [_post(i, now - 5 + i * 0.1) for i in range(10)]
    publisher.publish([post_message(p) for p in before])
    job = BackgroundJob(swap_job_argv(subscription, out, root, 300)).start()
    try:
        _wait_for(lambda: _count(out) >= len(before) or job.failed, 180, "the first posts")
        assert not job.failed, job.error
        registry.promote(root, "tiny-v2", {"why": "test: promoted while the job runs"})
        probes = probe_until_scored_by(job, publisher, out, "tiny-v2", 1000)
        after = [_post(2000 + i, time.time()) for i in range(10)]
        publisher.publish([post_message(p) for p in after])
        publisher.close()
        expected = len(before) + len(probes) + len(after)
        _wait_for(lambda: _count(out) >= expected, 120, "the posts after the swap")
    finally:
        job.stop()
    assert not job.thread.is_alive(), "the drain did not finish (the model watch must stop with it)"
    assert not job.failed, job.error
    assert job.result.pulse_end.drained
    rows = _sql(out, "SELECT post_id, model_version FROM scored_posts")
    ids = [r[0] for r in rows]
    assert sorted(ids) == sorted(p["id"] for p in before + probes + after)  # none lost, none twice
    versions = dict(rows)
    assert {versions[p["id"]] for p in before} == {"tiny-test"}
    assert {versions[p["id"]] for p in after} == {"tiny-v2"}
    assert {versions[p["id"]] for p in probes} <= {"tiny-test", "tiny-v2"}


# ---- languages in a job --------------------------------------------------------------------------


def _replay(tmp_path, posts, models):
    path = tmp_path / "posts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in posts))
    out = str(tmp_path / "out")
    argv = ["--input", str(path), "--output", out]
    for model in models:
        argv += ["--model", model]
    sentiment_pipeline.run(argv)
    return out


def test_a_post_no_model_was_trained_for_is_stored_unscored(tmp_path, tiny_bundled_model):
    now = time.time() - 600
    posts = [_post(1, now, "I love this phone"), _post(2, now + 1, "बहुत अच्छा", lang="hi"),
             _post(3, now + 2, "I hate the new update", lang="en-GB")]
    out = _replay(tmp_path, posts, [tiny_bundled_model])
    rows = {r[0]: r[1:] for r in _sql(out, "SELECT post_id, label, confidence, model_version, skip_reason "
                                           "FROM scored_posts")}
    assert rows["p2"] == (None, None, None, "unsupported_language")
    assert rows["p1"][0] in ("negative", "neutral", "positive") and rows["p1"][2] == "tiny-test"
    assert rows["p3"][3] is None and rows["p3"][2] == "tiny-test"
    review = _sql(out, "SELECT count(*) FROM read_parquet('" + out + "/review_queue/**/*.parquet', "
                       "union_by_name=true) WHERE post_id = 'p2'") if os.path.isdir(f"{out}/review_queue") else [(0,)]
    assert review == [(0,)]


def test_a_star_route_scores_the_other_languages_with_its_own_version(tmp_path, tiny_bundled_model, second_model):
    now = time.time() - 600
    posts = [_post(1, now, "I love this phone"), _post(2, now + 1, "बहुत अच्छा", lang="hi")]
    out = _replay(tmp_path, posts, [f"en={tiny_bundled_model}", f"*={second_model}"])
    rows = dict(_sql(out, "SELECT post_id, model_version FROM scored_posts"))
    assert rows == {"p1": "tiny-test", "p2": "tiny-v2"}


def test_options_keep_a_single_model_flag_working(tmp_path):
    options = PipelineOptions(["--model", "bundled"]).view_as(SentimentOptions)
    assert options.model == ["bundled"]
    with pytest.raises(OptionsError, match="model_watch_interval"):
        from pipelines.options import validate_options
        validate_options(PipelineOptions(["--input", "projects/p/subscriptions/s", "--output", str(tmp_path / "o"),
                                          "--model_watch_interval", "0"])
                         .view_as(SentimentOptions))
