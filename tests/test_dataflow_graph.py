"""The job as Dataflow would receive it, built and translated without submitting (no network):
`--dry_run true` makes DataflowRunner translate the pipeline into its Job and stop before
staging; the worker Environment (GPU service options, Streaming Engine, container image) is
then derived from that Job exactly as DataflowApplicationClient.create_job_description does.

Every model form (`bundled`, `registry:gs://...` on a Cloud Storage emulator, language routes)
and every BigQuery method that translates here (STREAMING_INSERTS, FILE_LOADS) is translated
once per module and checked for what it must carry. STORAGE_WRITE_API is left out: Beam expands
it through its Java expansion service, whose jar is not served to these machines.

    .venv/bin/pytest tests/test_dataflow_graph.py -q
"""
import pytest
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.dataflow.internal import apiclient

from pipelines import sentiment_pipeline

pytestmark = pytest.mark.integration

IMAGE = "europe-west4-docker.pkg.dev/my-proj/sentiment-pulse/worker:2.77.0"
GPU = "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"


def translate(runner: str, models=("bundled",), method="STREAMING_INSERTS"):
    """The flags `make dataflow` passes, with `--model` once per value of `models` and
    `--bq_method method` -> (the Dataflow Job, its worker Environment)."""
    result = sentiment_pipeline.run([
        "--runner", runner, "--dry_run", "true",
        "--project", "my-proj", "--region", "europe-west4", "--job_name", "pulse-graph-test",
        "--temp_location", "gs://my-bucket/tmp", "--staging_location", "gs://my-bucket/staging",
        "--input", "projects/my-proj/subscriptions/posts-sub", "--output", "my-proj:pulse",
        "--bq_method", method, *[arg for model in models for arg in ("--model", model)],
        "--max_batch_size", "64", "--max_batch_duration_secs", "1", "--model_copies", "1",
        "--streaming", "--enable_streaming_engine", "--experiments", "use_runner_v2",
        "--sdk_container_image", IMAGE, "--sdk_location", "container", "--machine_type", "n1-standard-8",
        "--dataflow_service_options", GPU])
    job = result.job
    environment = apiclient.Environment(
        packages=[], options=job.options, environment_version="8",
        proto_pipeline_staged_url="gs://my-bucket/staging/pipeline.pb", proto_pipeline=job.proto_pipeline).proto
    return job, environment


_TRANSLATED = {}  # (models, method) -> (job, environment): one translation per form for the module


def translated(models=("bundled",), method="STREAMING_INSERTS"):
    key = (tuple(models), method)
    if key not in _TRANSLATED:
        _TRANSLATED[key] = translate("DataflowRunner", models, method)
    return _TRANSLATED[key]


@pytest.fixture(scope="module")
def dataflow_job():
    return translated()


def transforms(job):
    return {t.unique_name: t for t in job.proto_pipeline.components.transforms.values()}


def test_job_is_streaming_with_gpu_workers_and_streaming_engine(dataflow_job):
    job, environment = dataflow_job
    assert job.proto.type == apiclient.dataflow.JobType.JOB_TYPE_STREAMING
    assert job.proto.name == "pulse-graph-test"
    assert list(environment.service_options) == [GPU]
    assert {"use_runner_v2", "enable_streaming_engine", "enable_windmill_service"} <= set(environment.experiments)
    [pool] = environment.worker_pools
    assert pool.machine_type == "n1-standard-8"
    assert [image.container_image for image in pool.sdk_harness_container_images] == [IMAGE]


def test_every_step_of_the_job_is_in_the_graph(dataflow_job):
    job, _ = dataflow_job
    top = {name for name in transforms(job) if "/" not in name}
    assert {"ReadPosts", "ParsePosts", "WindowPosts", "Deduplicate", "Clean", "Score", "Aggregate",
            "Alert", "Review", "WriteTables"} <= top
    writes = {name.split("/")[1] for name in transforms(job) if name.startswith("WriteTables/")}
    assert {"WriteScoredPosts", "WriteSentimentWindows", "WriteAlerts", "WriteReviewQueue",
            "WriteDeadLetters", "RefusedScoredPosts", "PrepareDeadLetters"} <= writes
    assert any(name.startswith("Score/RunInference") for name in transforms(job))


@pytest.mark.parametrize("spelling", ["DataflowRunner", "dataflow", "Dataflow",
                                      "apache_beam.runners.dataflow.dataflow_runner.DataflowRunner"])
def test_pubsub_read_is_dataflow_native_with_dedup_and_publish_time(spelling):
    """Every spelling Beam accepts is Dataflow: the read de-duplicates on post_key and stamps the
    publish time (no timestamp attribute, whose absence or a bad value would stop the reader)."""
    job, _ = translate(spelling)
    [read] = [t for t in transforms(job).values() if t.spec.urn == common_urns.composites.PUBSUB_READ.urn]
    payload = beam_runner_api_pb2.PubSubReadPayload.FromString(read.spec.payload)
    assert payload.subscription == "projects/my-proj/subscriptions/posts-sub"
    assert (payload.id_attribute, payload.timestamp_attribute) == ("post_key", "")
    assert payload.with_attributes


def test_workers_run_the_gpu_image(dataflow_job):
    job, _ = dataflow_job
    envs = job.proto_pipeline.components.environments.values()
    assert {e.urn for e in envs} == {common_urns.environments.DOCKER.urn}
    assert {beam_runner_api_pb2.DockerPayload.FromString(e.payload).container_image for e in envs} == {IMAGE}


def test_the_model_is_shared_one_copy_per_gpu_and_named_not_pathed(dataflow_job):
    """--model_copies reaches RunInference's handler, and the pickled handler carries `bundled`."""
    from apache_beam.internal import pickler

    from models.handlers import BUNDLED_DIR

    job, _ = dataflow_job
    payloads = [t.spec.payload for name, t in transforms(job).items()
                if name.startswith("Score/RunInference") and t.spec.urn == common_urns.primitives.PAR_DO.urn]
    assert payloads
    found = []
    for payload in payloads:
        dofn_data = beam_runner_api_pb2.ParDoPayload.FromString(payload).do_fn.payload
        assert BUNDLED_DIR.encode() not in dofn_data
        fn = pickler.loads(dofn_data)[0] if dofn_data else None
        handler = getattr(fn, "_model_handler", None)
        if handler is not None:
            found.append((handler.share_model_across_processes(), handler.model_copies()))
    assert found == [(True, 1)]


REGISTRY_ROUTES = ("en=bundled", "*=registry:gs://my-bucket/models")
TABLE_LABELS = ("ScoredPosts", "SentimentWindows", "Alerts", "ReviewQueue", "DeadLetters")


def unpickled_bytes(t) -> bytes:
    """A ParDo's pickled DoFn as Beam's pickler wrote it, decompressed (base64 of zlib or bz2)."""
    import base64
    import bz2
    import zlib

    data = base64.b64decode(beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).do_fn.payload)
    for decompress in (zlib.decompress, bz2.decompress):
        try:
            return decompress(data)
        except (zlib.error, OSError, ValueError):
            continue
    return data


def run_inference_steps(job) -> dict:
    """{RunInference composite name: its BeamML_RunInference ParDo}."""
    steps = {}
    for name, t in transforms(job).items():
        head, _, leaf = name.rpartition("/")
        if leaf == "BeamML_RunInference" and head.startswith("Score/"):
            steps[head] = t
    return steps


def side_inputs(t) -> list[str]:
    return list(beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).side_inputs)


@pytest.mark.parametrize("models, watched", [
    (("bundled",), set()),
    (("registry:gs://my-bucket/models",), {0}),
    (REGISTRY_ROUTES, {1}),
], ids=["bundled", "registry", "language-routes"])
def test_every_model_form_translates_with_one_run_inference_per_route(models, watched, gcs_registry):
    """One RunInference per route; a registry route is watched (WatchModelRegistry<i>, reading the
    registry's pointers on gs://) and its RunInference takes the watch as its model side input; the
    others take none. The registry's handler carries the version's gs:// location."""
    job, _ = translated(models)
    steps = run_inference_steps(job)
    routed = len(models) > 1
    assert sorted(steps) == ([f"Score/Route{i}RunInference" for i in range(len(models))] if routed
                             else ["Score/RunInference"])
    side = {i for i, name in enumerate(sorted(steps)) if side_inputs(steps[name])}
    assert side == watched
    top = {name for name in transforms(job) if "/" not in name}
    assert {name for name in top if name.startswith("WatchModelRegistry")} == {f"WatchModelRegistry{i}" for i in watched}
    for i in watched:
        match = [unpickled_bytes(t) for name, t in transforms(job).items()
                 if name.startswith(f"WatchModelRegistry{i}/MatchPointers") and t.spec.urn == common_urns.primitives.PAR_DO.urn]
        assert any(b"gs://my-bucket/models/pointers/*.json" in data for data in match)
        assert b"gs://my-bucket/models/versions/" in unpickled_bytes(steps[sorted(steps)[i]])


@pytest.mark.parametrize("method", ["STREAMING_INSERTS", "FILE_LOADS"])
def test_every_bigquery_method_translates_with_a_write_per_table(method, gcs_registry):
    """A write per table, by the method asked for; the rows enter it in the global window.
    STREAMING_INSERTS: BigQuery's refusals come back as dead letters (Refused<Table>).
    FILE_LOADS in a streaming job: load jobs triggered every 60 s (the sink's default triggering
    frequency), no per-row refusals."""
    job, _ = translated(method=method)
    names = set(transforms(job))
    inner = {"STREAMING_INSERTS": "_StreamToBigQuery/StreamInsertRows", "FILE_LOADS": "BigQueryBatchFileLoads"}[method]
    for label in TABLE_LABELS:
        assert f"WriteTables/Write{label}/{inner}" in names
        if label != "DeadLetters":
            assert f"WriteTables/{label}RowsToGlobalWindow" in names
            assert (f"WriteTables/Refused{label}" in names) == (method == "STREAMING_INSERTS")
    if method == "FILE_LOADS":
        components = job.proto_pipeline.components
        for label in TABLE_LABELS:
            [trigger_step] = [t for n, t in transforms(job).items()
                              if n == f"WriteTables/Write{label}/BigQueryBatchFileLoads/ApplyUserTrigger"]
            [out] = trigger_step.outputs.values()
            strategy = components.windowing_strategies[components.pcollections[out].windowing_strategy_id]
            assert "delay_millis: 60000" in str(strategy.trigger), label
