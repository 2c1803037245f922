"""The job as Dataflow would receive it, built and translated without submitting (no network):
`--dry_run true` makes DataflowRunner translate the pipeline into its Job and stop before
staging; the worker Environment (GPU service options, Streaming Engine, container image) is
then derived from that Job exactly as DataflowApplicationClient.create_job_description does.

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


def translate(runner: str):
    """The flags `make dataflow` passes, with STREAMING_INSERTS: the Storage Write API is a
    Java cross-language transform whose expansion service jar cannot be fetched here. The
    model is `bundled`, resolved by name on the workers (a local directory is refused)."""
    result = sentiment_pipeline.run([
        "--runner", runner, "--dry_run", "true",
        "--project", "my-proj", "--region", "europe-west4", "--job_name", "pulse-graph-test",
        "--temp_location", "gs://my-bucket/tmp", "--staging_location", "gs://my-bucket/staging",
        "--input", "projects/my-proj/subscriptions/posts-sub", "--output", "my-proj:pulse",
        "--bq_method", "STREAMING_INSERTS", "--model", "bundled",
        "--max_batch_size", "64", "--max_batch_duration_secs", "1", "--model_copies", "1",
        "--streaming", "--enable_streaming_engine", "--experiments", "use_runner_v2",
        "--sdk_container_image", IMAGE, "--sdk_location", "container", "--machine_type", "n1-standard-8",
        "--dataflow_service_options", GPU])
    job = result.job
    environment = apiclient.Environment(
        packages=[], options=job.options, environment_version="8",
        proto_pipeline_staged_url="gs://my-bucket/staging/pipeline.pb", proto_pipeline=job.proto_pipeline).proto
    return job, environment


@pytest.fixture(scope="module")
def dataflow_job():
    return translate("DataflowRunner")


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
