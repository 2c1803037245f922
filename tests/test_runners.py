"""The runner is known by the class Beam builds for --runner, whatever the spelling, and paths of
this machine are refused at submit when the workers run elsewhere.

    .venv/bin/pytest tests/test_runners.py -q
"""
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import sentiment_pipeline
from pipelines.options import OptionsError
from pipelines.runners import identify

SPELLINGS = [
    (None, "direct", "here"), ("DirectRunner", "direct", "here"), ("direct", "direct", "here"),
    ("Direct", "direct", "here"), ("BundleBasedDirectRunner", "direct", "here"),
    ("SwitchingDirectRunner", "direct", "here"), ("TestDirectRunner", "direct", "here"),
    ("DataflowRunner", "dataflow", "elsewhere"), ("dataflow", "dataflow", "elsewhere"),
    ("Dataflow", "dataflow", "elsewhere"), ("TestDataflowRunner", "dataflow", "elsewhere"),
    ("apache_beam.runners.dataflow.dataflow_runner.DataflowRunner", "dataflow", "elsewhere"),
    ("PortableRunner", "portable", "elsewhere"), ("portable", "portable", "elsewhere"),
    ("FlinkRunner", "portable", "here"), ("flink", "portable", "here"), ("SparkRunner", "portable", "elsewhere"),
    ("FnApiRunner", "fnapi", "here"),
]


@pytest.mark.parametrize("spelling, family, workers", SPELLINGS)
def test_every_spelling_of_a_runner_is_the_same_runner(spelling, family, workers):
    argv = [] if spelling is None else ["--runner", spelling]
    runner = identify(PipelineOptions(argv))
    assert (runner.family, runner.workers) == (family, workers)


@pytest.mark.parametrize("flags, workers", [
    (["--environment_type", "LOOPBACK"], "here"), (["--environment_type", "DOCKER"], "elsewhere"),
    (["--environment_type", "EXTERNAL", "--environment_config", "localhost:50000"], "shared?"),
    (["--environment_type", "PROCESS"], "shared?"),
    (["--flink_master", "flink-jobmanager:8081"], "elsewhere"),
])
def test_where_a_portable_runners_workers_run(flags, workers):
    assert identify(PipelineOptions(["--runner", "FlinkRunner", *flags])).workers == workers


@pytest.mark.parametrize("spelling, plays", [
    (None, True), ("BundleBasedDirectRunner", True), ("PrismRunner", True), ("prism", True),
    ("FlinkRunner", False), ("PortableRunner", False), ("DataflowRunner", False), ("FnApiRunner", False)])
def test_a_file_replays_as_a_stream_only_where_the_runner_plays_test_stream(spelling, plays):
    argv = [] if spelling is None else ["--runner", spelling]
    assert identify(PipelineOptions(argv)).plays_test_stream is plays


def test_an_unknown_runner_is_one_sentence(tmp_path):
    (tmp_path / "in.jsonl").write_text("{}\n")
    with pytest.raises(OptionsError, match="--runner NoSuchRunner"):
        sentiment_pipeline.run(["--runner", "NoSuchRunner", "--input", str(tmp_path / "in.jsonl"),
                                "--output", str(tmp_path / "out")])


@pytest.mark.parametrize("flags, name", [
    (["--runner", "FlinkRunner", "--flink_master", "[local]"], "FlinkRunner"),
    (["--runner", "PrismRunner"], "PrismRunner"),
    (["--runner", "PortableRunner", "--job_endpoint", "localhost:1", "--environment_type", "LOOPBACK"],
     "PortableRunner")])
def test_a_pubsub_input_is_refused_at_submit_where_pythons_pubsub_read_cannot_run(flags, name, tmp_path, capsys,
                                                                                  monkeypatch):
    """Refused before the broker is asked (no emulator at this address) or a job server started."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "localhost:1")
    argv = [*flags, "--input", "projects/p/subscriptions/posts", "--output", str(tmp_path / "out")]
    assert sentiment_pipeline.main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"pulse run: error: --input projects/p/subscriptions/posts: {name} cannot read Pub/Sub (Beam's Python "
        "Pub/Sub read runs on Dataflow and the DirectRunner only); run there, or replay a file into it with "
        "--input FILE"]
    assert not (tmp_path / "out").exists()


DATAFLOW = ["--dry_run", "true", "--project", "my-proj", "--region", "europe-west4",
            "--temp_location", "gs://my-bucket/tmp", "--input", "projects/my-proj/subscriptions/posts-sub",
            "--output", "my-proj:pulse", "--bq_method", "STREAMING_INSERTS"]


@pytest.mark.parametrize("runner", ["DataflowRunner", "dataflow"])
def test_a_model_on_this_machine_only_is_refused_for_dataflow_at_submit(runner, tiny_bundled_model, capsys):
    argv = ["run", "--runner", runner, *DATAFLOW, "--model", tiny_bundled_model]
    assert sentiment_pipeline.main(argv[1:]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"pulse run: error: --model {tiny_bundled_model} is a path on this machine only; the "
                   "DataflowRunner workers run on other machines and cannot read it: use a gs:// copy of the "
                   "model directory, or 'bundled'"]


def test_local_input_and_output_are_refused_for_docker_workers(tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text("{}\n")
    argv = ["--runner", "PortableRunner", "--job_endpoint", "localhost:1", "--environment_type", "DOCKER",
            "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out")]
    assert sentiment_pipeline.main(argv) == 2
    assert f"--input {tmp_path / 'in.jsonl'} is a path on this machine only" in capsys.readouterr().err


def test_external_workers_may_share_the_files_a_warning_not_an_error(tmp_path, caplog):
    (tmp_path / "in.jsonl").write_text("{}\n")
    options = sentiment_pipeline.SentimentOptions(["--input", str(tmp_path / "in.jsonl"), "--output",
                                                   str(tmp_path / "out"), "--model", "bundled"])
    runner = identify(PipelineOptions(["--runner", "PortableRunner", "--environment_type", "EXTERNAL"]))
    with caplog.at_level("WARNING", logger="pulse"):
        sentiment_pipeline.check_paths_for_workers(options, runner)
    assert [r.getMessage().split(" is a path")[0] for r in caplog.records] == [
        f"--input {tmp_path / 'in.jsonl'}", f"--output {tmp_path / 'out'}"]
