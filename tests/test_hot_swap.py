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

from connectors.sources.model_watch import LatestPointer
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
    # '*=DIR' takes the languages DIR declares, not every language
    assert route_index("fr", [("en", ("en",)), ("*", ("en",))]) is None
    assert route_index("zh", [("*", ("de",))]) is None and route_index("de", [("*", ("de",))]) == 0
    assert route_index("fr", [("en", ("en",)), ("*", None)]) == 1
    assert route_index("fr", [("en", ("en",)), ("*", ("*",))]) == 1


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

    def __init__(self, first, second, pointer_path, t0, launch_path):
        super().__init__()
        self.first, self.second, self.pointer_path, self.t0 = first, second, pointer_path, t0
        self.launch_path = launch_path
        self.models = None

    def expand(self, pbegin):
        t0 = self.t0
        stream = (TestStream(output_tags={"posts", "models"})
                  .add_elements([ModelMetadata(model_id=self.launch_path, model_name="")], tag="models")
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
        self.models = streams["models"] | "LatestPointer" >> LatestPointer()  # as the job's watch does
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
    source = _SwapStream(first_batch, second_batch, second.path, t0, first.path)
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
    anywhere = _variant(second_model, tmp_path / "any", "tiny-v2", languages=["*"])
    out = _replay(tmp_path, posts, [f"en={tiny_bundled_model}", f"*={anywhere}"])
    rows = dict(_sql(out, "SELECT post_id, model_version FROM scored_posts"))
    assert rows == {"p1": "tiny-test", "p2": "tiny-v2"}


def test_a_star_route_and_a_plain_model_label_only_the_languages_they_declare(tmp_path, second_model):
    """A German-only model under '*' (or alone) must not label English, Chinese or Russian posts."""
    now = time.time() - 600
    posts = [_post(1, now, "I love this phone"), _post(2, now + 1, "这个手机很好", lang="zh"),
             _post(3, now + 2, "Отличный телефон", lang="ru"), _post(4, now + 3, "Das ist großartig", lang="de")]
    german = _variant(second_model, tmp_path / "de", "tiny-de", languages=["de"])
    for flag in (f"*={german}", german):
        run_dir = tmp_path / ("star" if flag.startswith("*") else "plain")
        run_dir.mkdir()
        out = _replay(run_dir, posts, [flag])
        rows = {r[0]: r[1:] for r in _sql(out, "SELECT post_id, label, model_version, skip_reason FROM scored_posts")}
        assert {k: v for k, v in rows.items() if k != "p4"} == {
            k: (None, None, "unsupported_language") for k in ("p1", "p2", "p3")}, flag
        assert rows["p4"][1:] == ("tiny-de", None) and rows["p4"][0] in ("negative", "neutral", "positive"), flag


def test_options_keep_a_single_model_flag_working(tmp_path):
    options = PipelineOptions(["--model", "bundled"]).view_as(SentimentOptions)
    assert options.model == ["bundled"]
    with pytest.raises(OptionsError, match="model_watch_interval"):
        from pipelines.options import validate_options
        validate_options(PipelineOptions(["--input", "projects/p/subscriptions/s", "--output", str(tmp_path / "o"),
                                          "--model_watch_interval", "0"])
                         .view_as(SentimentOptions))


# ---- swaps that fail, through Beam's own RunInference DoFn ---------------------------------------


def _variant(source: str, dest, version: str, **changes) -> str:
    """A copy of a model directory with its model.json's version (and any other field) changed."""
    import shutil

    shutil.copytree(source, dest)
    spec_path = os.path.join(dest, "model.json")
    spec = json.load(open(spec_path))
    spec.update(version=version, **changes)
    json.dump(spec, open(spec_path, "w"))
    return str(dest)


class _StagedStream(beam.PTransform):
    """One TestStream: per stage, model metadata (a pane: several paths at once), then a batch of posts
    in its own minute. The metadata goes through the job's LatestPointer, as the registry watch's does."""

    def __init__(self, stages, t0):
        super().__init__()
        self.stages, self.t0 = stages, t0
        self.models = None

    def expand(self, pbegin):
        stream = TestStream(output_tags={"posts", "models"})
        for k, (paths, posts) in enumerate(self.stages):
            stream = (stream.add_elements([ModelMetadata(model_id=p, model_name="") for p in paths], tag="models")
                      .advance_processing_time(5).advance_processing_time(5)
                      .add_elements([_raw(p, self.t0 + 60 * k + 1) for p in posts], tag="posts")
                      .advance_watermark_to(self.t0 + 60 * (k + 1), tag="posts")
                      .advance_processing_time(5))
        stream = stream.advance_watermark_to_infinity(tag="posts").advance_watermark_to_infinity(tag="models")
        streams = pbegin | "Stream" >> stream
        self.models = streams["models"] | "LatestPointer" >> LatestPointer()
        return streams["posts"]


@pytest.mark.parametrize("model_copies", [None, 1], ids=["in-process", "model_copies"])
def test_failed_swaps_keep_the_last_good_model_and_rows_name_the_model_that_scored(
        two_version_registry, tmp_path, tiny_bundled_model, second_model, model_copies):
    """Through Beam's RunInference (model_metadata_pcoll): a version whose SavedModel does not load,
    a version whose model.json cannot be read, files that are not pointers, two promotions in one
    pane (the newest by NAME wins, though its file is older), a promotion to a German-only model
    (English posts: unsupported_language), a roll back."""
    root, first = two_version_registry
    routes = create_routes([f"registry:{root}"], model_copies=model_copies)
    cut = _variant(tiny_bundled_model, tmp_path / "cut", "6.cut")
    open(os.path.join(cut, "saved_model.pb"), "wb").write(b"\x08\x01")  # a SavedModel cut short
    registry.add_version(root, cut)
    registry.add_version(root, _variant(second_model, tmp_path / "nospec", "7.nospec"))
    registry.add_version(root, _variant(second_model, tmp_path / "de", "tiny-de", languages=["de"]))
    cut_pointer = registry.promote(root, "6.cut", {"why": "test"}, check=False).path
    nospec_pointer = registry.promote(root, "7.nospec", {"why": "test"}, check=False).path
    open(os.path.join(registry.version_location(root, "7.nospec"), "model.json"), "w").write('{"versi')
    v2_pointer = registry.promote(root, "tiny-v2", {"why": "test"}).path
    de_pointer = registry.promote(root, "tiny-de", {"why": "test: two promotions in one interval"}).path
    os.utime(de_pointer, (time.time() - 3600, time.time() - 3600))  # the newer name, the older file
    back_pointer = registry.promote(root, "tiny-v2", {"why": "roll back"}).path
    notes = os.path.join(root, "pointers", "notes.json")
    open(notes, "w").write(json.dumps({"version": "tiny-test", "location": first.location}))
    truncated = os.path.join(root, "pointers", "29990101T000000000000Z-tiny-test.json")
    open(truncated, "w").write('{"version": "tiny-te')

    t0 = (time.time() // 60 - 30) * 60
    batches = [[_post(100 * k + i, t0 + 60 * k + 1 + i) for i in range(6)] for k in range(5)]
    german = [_post(350 + i, t0 + 60 * 3 + 10 + i, "Das ist wirklich großartig", lang="de") for i in range(3)]
    stages = [([first.path], batches[0]), ([cut_pointer], batches[1]), ([nospec_pointer, notes, truncated], batches[2]),
              ([de_pointer, v2_pointer], batches[3] + german), ([back_pointer], batches[4])]
    source = _StagedStream(stages, t0)
    out = str(tmp_path / "out")
    options = PipelineOptions(["--window_size", "60", "--early_firing", "0"])
    options.view_as(beam.options.pipeline_options.StandardOptions).streaming = True
    sentiment_pipeline.install_direct_runner_fixes()
    p = beam.Pipeline(runner="BundleBasedDirectRunner", options=options)
    sentiment_pipeline.build_pipeline(p, source, WriteParquetTables(out), options.view_as(SentimentOptions),
                                      routes=routes, model_metadata=lambda: {0: source.models})
    p.run().wait_until_finish()

    rows = {r[0]: r[1:] for r in _sql(out, "SELECT post_id, model_version, label, skip_reason FROM scored_posts")}
    every = [q for batch in batches for q in batch] + german
    assert sorted(rows) == sorted(q["id"] for q in every)  # each once, none a dead letter
    if os.path.isdir(f"{out}/dead_letters"):
        assert _sql(out, "SELECT count(*) FROM dead_letters") == [(0,)]
    by_stage = [{rows[q["id"]][0] for q in batch} for batch in batches]
    assert by_stage[0] == {"tiny-test"}
    assert by_stage[1] == {"tiny-test"}  # 6.cut does not load: the last good model scores, and says so
    assert by_stage[2] == {"tiny-test"}  # 7.nospec refused; notes.json and the truncated pointer ignored
    assert {rows[q["id"]] for q in batches[3]} == {(None, None, "unsupported_language")}  # tiny-de: German only
    assert {rows[q["id"]][0] for q in german} == {"tiny-de"}
    assert by_stage[4] == {"tiny-v2"}  # rolled back to tiny-v2


# ---- the watch: newest valid pointer by name, one element a pane; other side inputs stock ----------


@pytest.fixture
def damaged_pointers(tmp_path, tiny_bundled_model):
    """A registry with three promotions whose files' times run backwards, and beside them files that
    are not usable pointers: a readable pointer body named notes.json, a truncated pointer that sorts
    after every stamp. -> (registry, [the three pointer paths, oldest name first], [the others])"""
    root = str(tmp_path / "registry")
    registry.init(root, tiny_bundled_model)
    paths = [registry.current(root).path] + [
        registry.promote(root, "tiny-test", {"why": f"promotion {i}"}).path for i in range(2)]
    for age, path in enumerate(paths):  # the newest name has the oldest file
        os.utime(path, (time.time() - 3600 * (age + 1),) * 2)
    notes = os.path.join(root, "pointers", "notes.json")
    open(notes, "w").write(json.dumps({"version": "tiny-test", "location": registry.current(root).location}))
    truncated = os.path.join(root, "pointers", "29990101T000000000000Z-tiny-test.json")
    open(truncated, "w").write('{"version": "tiny-te')
    return root, paths, [notes, truncated]


def test_the_watch_picks_the_newest_pointer_by_name_and_skips_what_is_not_one(damaged_pointers):
    from connectors.sources import model_watch

    root, paths, others = damaged_pointers
    assert model_watch.newest(registry.pointer_glob(root)) == paths[-1]
    assert [model_watch.is_valid_pointer(p) for p in paths + others] == [True, True, True, False, False]
    assert model_watch.newer_pointer(paths[0], paths[2]) == paths[2] == model_watch.newer_pointer(paths[2], paths[0])


def test_latest_pointer_reduces_a_pane_of_several_files_to_the_newest_valid_pointer(damaged_pointers):
    from apache_beam.testing.util import assert_that, equal_to

    root, paths, others = damaged_pointers
    # One pane, as Beam's file watch on Dataflow or Flink emits it after several promotions.
    pane = [paths[2], paths[0], others[0], paths[1], others[1], ""]
    stream = (TestStream().add_elements([ModelMetadata(model_id=m, model_name="") for m in pane])
              .advance_processing_time(5).advance_processing_time(5).advance_watermark_to_infinity())
    options = PipelineOptions()
    options.view_as(beam.options.pipeline_options.StandardOptions).streaming = True
    with beam.Pipeline(runner="BundleBasedDirectRunner", options=options) as p:
        out = (p | stream | LatestPointer()
               | beam.WindowInto(window.GlobalWindows()) | beam.Map(lambda m: m.model_id))
        # every pane fired is the one newest pointer (a singleton side input's pane)
        assert_that(out, lambda actual: equal_to([paths[2]])(sorted(set(actual))) if actual else equal_to([1])([]),
                    label="OneElementTheNewestByName")


def test_other_triggered_global_side_inputs_behave_as_stock_beam():
    """The DirectRunner patch serves the model watch alone: any other side input in the global
    window with a trigger of its own reads every element, as Beam does."""
    from apache_beam.testing.util import assert_that, equal_to

    sentiment_pipeline.install_direct_runner_fixes()
    options = PipelineOptions()
    options.view_as(beam.options.pipeline_options.StandardOptions).streaming = True
    stream = (TestStream().add_elements(["a"]).advance_processing_time(2).add_elements(["b"])
              .advance_processing_time(2).add_elements(["c"]).advance_processing_time(2)
              .advance_watermark_to_infinity())
    with beam.Pipeline(runner="BundleBasedDirectRunner", options=options) as p:
        side = (p | "Side" >> stream | "Triggered" >> beam.WindowInto(
            window.GlobalWindows(), trigger=trigger.Repeatedly(trigger.AfterProcessingTime(1)),
            accumulation_mode=trigger.AccumulationMode.DISCARDING))
        out = (p | "Main" >> beam.Create([0])
               | "ReadSide" >> beam.Map(lambda _, s: sorted(s), s=beam.pvalue.AsList(side)))
        assert_that(out, equal_to([["a", "b", "c"]]), label="EveryElement")
