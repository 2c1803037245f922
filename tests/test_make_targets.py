"""The deploy targets (deploy/deploy.mk) as the shell receives them.

Each target is rendered with `make -n` (print, do not run: nothing here needs gcloud, Docker,
Flink or a cloud) and read as the shell reads it: make runs every recipe line in a shell of
its own, the shell removes backslash-newline and ends a command at an unquoted `;`, `&`, `|`,
`<`, `>`. The command each target exists for must be ONE simple command, and its argv must be
what the job, Beam and gcloud accept: `pulse run` flags pass `check_flags` and parse with
Beam's PipelineOptions into the expected values; flex-run's `--parameters` split as gcloud
splits a dict flag, and each one is declared in metadata.json (or is a Beam option Dataflow
takes undeclared). A negative control shows the checks catch the old, unquoted flex-run line.

    .venv/bin/pytest tests/test_make_targets.py -q
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from apache_beam.options.pipeline_options import (DebugOptions, GoogleCloudOptions, PipelineOptions,
                                                  PortableOptions, SetupOptions, StandardOptions,
                                                  WorkerOptions)

from pipelines.options import OptionsError, SentimentOptions, check_flags

ROOT = Path(__file__).resolve().parents[1]
BEAM_VERSION = re.search(r"^apache-beam\[gcp\]==(\S+)$", (ROOT / "requirements.in").read_text(), re.M).group(1)
TF_VERSION = re.search(r"^tensorflow==(\S+)$", (ROOT / "requirements.in").read_text(), re.M).group(1)

GCP = {"PROJECT": "my-proj", "REGION": "europe-west4", "BUCKET": "my-bucket",
       "SUBSCRIPTION": "posts-sub", "DATASET": "pulse", "JOB_NAME": "pulse-make-test"}
IMAGE = f"europe-west4-docker.pkg.dev/my-proj/sentiment-pulse/worker:{BEAM_VERSION}"
LOCAL_IMAGE = f"sentiment-pulse-worker:{BEAM_VERSION}"
TEMPLATE = "gs://my-bucket/templates/sentiment-pulse.json"
GPU_OPTION = "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"
# Beam/Dataflow pipeline options a flex template run may pass in --parameters without a
# metadata.json entry (Google's own GPU flex-template sample passes sdk_container_image so).
UNDECLARED_OK = {"sdk_container_image"}
PUNCTUATION = set("();<>|&")

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")


# --- rendering and reading as the shell does ------------------------------------------------

def render(target: str, **variables: str) -> str:
    """`make -n` output for target: the recipe lines make would hand to the shell.

    A clean environment (no MAKEFLAGS from an outer make, no GPU=... from the caller) and
    `-o .venv/.stamp` (an out-of-date or missing virtualenv is not rebuilt, not even on paper)."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "LC_ALL": "C"}
    cmd = ["make", "-n", "-s", "--no-print-directory", "-o", ".venv/.stamp", target]
    cmd += [f"{name}={value}" for name, value in variables.items()]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"make -n {target} failed:\n{proc.stderr}"
    return proc.stdout


def shell_lines(text: str) -> list[str]:
    """One string per command line the shell receives: backslash-newline removed, as the shell
    does (make -n prints continued recipe lines with it kept), one line per recipe line."""
    return [line for line in text.replace("\\\n", "").splitlines() if line.strip()]


def tokens(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def is_operator(token: str) -> bool:
    return set(token) <= PUNCTUATION


def simple_commands(line: str) -> list[list[str]]:
    """The simple commands of one shell line, split at its unquoted operators."""
    out, current = [], []
    for tok in tokens(line):
        if is_operator(tok):
            out.append(current)
            current = []
        else:
            current.append(tok)
    out.append(current)
    return [c for c in out if c]


def main_command(text: str, prefix: list[str]) -> tuple[list[str], list[str]]:
    """(argv, operators) of the one line whose first command starts with prefix."""
    found = [line for line in shell_lines(text) if tokens(line)[:len(prefix)] == prefix]
    assert len(found) == 1, f"expected one {' '.join(prefix)} line in:\n{text}"
    line = found[0]
    return simple_commands(line)[0], [t for t in tokens(line) if is_operator(t)]


def every_line_parses(text: str) -> None:
    for line in shell_lines(text):
        tokens(line)  # unbalanced quotes raise ValueError


def flag_values(argv: list[str]) -> dict[str, list[str]]:
    """gcloud/docker-style `--flag value` / `--flag=value` pairs (a flag followed by another flag
    or nothing is a boolean, value '')."""
    out: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            if "=" in arg:
                name, value = arg.split("=", 1)
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                name, value = arg, argv[i + 1]
                i += 1
            else:
                name, value = arg, ""
            out.setdefault(name, []).append(value)
        i += 1
    return out


def gcloud_list(value: str) -> list[str]:
    """gcloud's ArgList: split on commas, or on X with the `^X^` prefix (`gcloud topic escaping`)."""
    delim = ","
    if value.startswith("^") and "^" in value[1:]:
        delim, value = value[1:].split("^", 1)
    if not value:
        return []
    if not value.endswith(delim):
        value += delim
    return value.split(delim)[:-1]


def gcloud_dict(values: list[str]) -> dict[str, str]:
    """gcloud's ArgDict with UpdateAction: each value split like a list, items split at the first
    '=', repeated flags merged, a key given twice an error."""
    out: dict[str, str] = {}
    for value in values:
        for item in gcloud_list(value):
            key, sep, val = item.partition("=")
            assert sep, f"gcloud would reject {item!r}: not KEY=VALUE"
            assert key not in out, f"gcloud would reject {key} given twice"
            out[key] = val
    return out


def metadata() -> dict[str, dict]:
    return {p["name"]: p for p in json.loads((ROOT / "metadata.json").read_text())["parameters"]}


def flex_run_problems(text: str) -> list[str]:
    """What is wrong with a rendered flex-run: [] when the GPU job and its batching arrive intact."""
    argv, operators = main_command(text, ["gcloud", "dataflow", "flex-template", "run"])
    problems = []
    if operators:
        problems.append(f"the shell splits the command at {operators}")
    flags = flag_values(argv)
    try:
        params = gcloud_dict(flags.get("--parameters", []))
    except AssertionError as e:
        return problems + [str(e)]
    experiments = [e for v in flags.get("--additional-experiments", []) for e in gcloud_list(v)]
    services = [params["dataflow_service_options"]] if "dataflow_service_options" in params else []
    if GPU_OPTION not in experiments + services:
        problems.append(f"no intact {GPU_OPTION} (experiments {experiments}, service options {services})")
    for name in ("max_batch_size", "max_batch_duration_secs", "model_copies", "sdk_container_image"):
        if name not in params:
            problems.append(f"{name} not passed")
    declared = metadata()
    for name, value in params.items():
        if name in UNDECLARED_OK:
            continue
        if name not in declared:
            problems.append(f"{name} is not declared in metadata.json")
        elif not all(re.search(rx, value) for rx in declared[name].get("regexes", [])):
            problems.append(f"{name}={value} fails its metadata.json regexes")
    return problems


def pulse_argv(text: str) -> list[str]:
    argv, operators = main_command(text, [".venv/bin/pulse", "run"])
    assert operators == [], f"the shell would split `pulse run` at {operators}"
    return argv[2:]


def parsed(argv: list[str]) -> PipelineOptions:
    check_flags(argv)  # every flag known to Beam or the job
    return PipelineOptions(argv)


# --- Dataflow ---------------------------------------------------------------------------------

def test_dataflow_gpu_job_is_one_command_with_the_accelerator_batching_and_one_model_per_gpu():
    text = render("dataflow", **GCP)
    every_line_parses(text)
    options = parsed(pulse_argv(text))
    gcp = options.view_as(GoogleCloudOptions)
    assert gcp.dataflow_service_options == [GPU_OPTION]
    assert (gcp.project, gcp.region, gcp.job_name) == ("my-proj", "europe-west4", "pulse-make-test")
    assert (gcp.temp_location, gcp.staging_location) == ("gs://my-bucket/tmp", "gs://my-bucket/staging")
    assert gcp.enable_streaming_engine
    worker = options.view_as(WorkerOptions)
    assert worker.sdk_container_image == IMAGE
    assert (worker.machine_type, worker.max_num_workers) == ("n1-standard-8", 4)
    assert options.view_as(StandardOptions).streaming
    assert "use_runner_v2" in options.view_as(DebugOptions).experiments
    job = options.view_as(SentimentOptions)
    assert (job.input, job.output) == ("projects/my-proj/subscriptions/posts-sub", "my-proj:pulse")
    assert (job.max_batch_size, job.max_batch_duration_secs, job.min_batch_size) == (64, 1.0, None)
    assert job.model_copies == 1 and job.model == ["bundled"]


def test_dataflow_gpu_count_sets_the_accelerator_and_the_model_copies():
    text = render("dataflow", **GCP, GPU="nvidia-l4", GPU_COUNT="2", MACHINE_TYPE="g2-standard-24",
                  MIN_BATCH_SIZE="8", MAX_BATCH_DURATION="0.5")
    options = parsed(pulse_argv(text))
    assert options.view_as(GoogleCloudOptions).dataflow_service_options == [
        "worker_accelerator=type:nvidia-l4;count:2;install-nvidia-driver"]
    job = options.view_as(SentimentOptions)
    assert (job.model_copies, job.min_batch_size, job.max_batch_duration_secs) == (2, 8, 0.5)


def test_dataflow_cpu_workers_stage_the_package_and_load_models_per_process():
    text = render("dataflow", **GCP, GPU="none")
    options = parsed(pulse_argv(text))
    assert options.view_as(GoogleCloudOptions).dataflow_service_options is None
    assert options.view_as(WorkerOptions).sdk_container_image is None
    assert options.view_as(SetupOptions).setup_file == "./setup.py"
    job = options.view_as(SentimentOptions)
    assert job.model_copies is None
    assert (job.max_batch_size, job.max_batch_duration_secs) == (64, 1.0)
    explicit = parsed(pulse_argv(render("dataflow", **GCP, GPU="none", MODEL_COPIES="1")))
    assert explicit.view_as(SentimentOptions).model_copies == 1


def test_dataflow_checks_its_variables_before_anything_else():
    text = render("dataflow", **{**GCP, "BUCKET": ""})
    every_line_parses(text)
    first = simple_commands(shell_lines(text)[0])
    assert first[0][:2] == ["echo", "error: set BUCKET (make dataflow PROJECT=my-proj BUCKET=my-bucket "
                                     "SUBSCRIPTION=posts-sub)"] and first[1] == ["exit", "2"]


# --- flex template ----------------------------------------------------------------------------

def test_flex_template_builds_from_the_worker_image_with_metadata():
    text = render("flex-template", **GCP)
    every_line_parses(text)
    argv, operators = main_command(text, ["gcloud", "dataflow", "flex-template", "build"])
    assert operators == []
    assert argv[4] == TEMPLATE
    flags = flag_values(argv)
    assert flags["--image"] == [IMAGE] and flags["--sdk-language"] == ["PYTHON"]
    assert flags["--metadata-file"] == ["metadata.json"]


def test_flex_run_passes_the_gpu_batching_and_model_copies_intact():
    text = render("flex-run", **GCP)
    every_line_parses(text)
    assert flex_run_problems(text) == []
    argv, _ = main_command(text, ["gcloud", "dataflow", "flex-template", "run"])
    assert argv[4] == "pulse-make-test"
    flags = flag_values(argv)
    assert flags["--template-file-gcs-location"] == [TEMPLATE]
    assert (flags["--project"], flags["--region"]) == (["my-proj"], ["europe-west4"])
    assert "--enable-streaming-engine" in flags
    assert flags["--worker-machine-type"] == ["n1-standard-8"] and flags["--max-workers"] == ["4"]
    assert flags["--staging-location"] == ["gs://my-bucket/staging"]
    # The GPU is a service option: gcloud's flag for those is --additional-experiments (a list
    # split on commas; the option's semicolons only matter to the shell, and it is quoted).
    experiments = [e for v in flags["--additional-experiments"] for e in gcloud_list(v)]
    assert experiments == ["use_runner_v2", GPU_OPTION]
    params = gcloud_dict(flags["--parameters"])
    assert params == {"input": "projects/my-proj/subscriptions/posts-sub", "output": "my-proj:pulse",
                      "bq_method": "STORAGE_WRITE_API", "model": "bundled", "max_batch_size": "64",
                      "max_batch_duration_secs": "1", "model_copies": "1", "sdk_container_image": IMAGE}
    # The Python launcher hands the parameters to the job as --name=value flags.
    options = parsed([f"--{k}={v}" for k, v in params.items()])
    job = options.view_as(SentimentOptions)
    assert (job.max_batch_size, job.max_batch_duration_secs, job.model_copies) == (64, 1.0, 1)
    assert options.view_as(WorkerOptions).sdk_container_image == IMAGE


def test_flex_run_on_cpu_workers_and_with_a_min_batch_size():
    text = render("flex-run", **GCP, GPU="none", MIN_BATCH_SIZE="8")
    argv, operators = main_command(text, ["gcloud", "dataflow", "flex-template", "run"])
    assert operators == []
    flags = flag_values(argv)
    assert [e for v in flags["--additional-experiments"] for e in gcloud_list(v)] == ["use_runner_v2"]
    params = gcloud_dict(flags["--parameters"])
    assert params["min_batch_size"] == "8" and "model_copies" not in params
    assert params["max_batch_duration_secs"] == "1"


def test_the_old_unquoted_flex_run_is_caught():
    """Negative control: the flex-run recipe before the fix, rendered, read the same way."""
    old = ("gcloud dataflow flex-template run pulse-make-test --project my-proj --region europe-west4 \\\n"
           f"  --template-file-gcs-location {TEMPLATE} --enable-streaming-engine \\\n"
           "  --worker-machine-type n1-standard-8 --max-workers 4 \\\n"
           "  --additional-experiments use_runner_v2 \\\n"
           "  --parameters input=projects/my-proj/subscriptions/posts-sub,output=my-proj:pulse,"
           "bq_method=STORAGE_WRITE_API,max_batch_size=64 \\\n"
           f"  --parameters sdk_container_image={IMAGE} \\\n"
           "  --parameters dataflow_service_options=worker_accelerator=type:nvidia-tesla-t4;count:1;"
           "install-nvidia-driver\n")
    problems = flex_run_problems(old)
    assert problems[0] == "the shell splits the command at [';', ';']"
    assert any(p.startswith(f"no intact {GPU_OPTION}") for p in problems)
    assert "max_batch_duration_secs not passed" in problems and "model_copies not passed" in problems
    assert "dataflow_service_options is not declared in metadata.json" in problems
    # What gcloud would have received: the service option cut at the first semicolon.
    argv, _ = main_command(old, ["gcloud", "dataflow", "flex-template", "run"])
    assert gcloud_dict(flag_values(argv)["--parameters"])["dataflow_service_options"] == \
        "worker_accelerator=type:nvidia-tesla-t4"
    # The same mistake on `make dataflow`: Beam would get the option without its count and driver.
    unquoted = f".venv/bin/pulse run --runner DataflowRunner --dataflow_service_options {GPU_OPTION}\n"
    with pytest.raises(AssertionError, match="would split"):
        pulse_argv(unquoted)


def test_metadata_parameters_are_flags_of_the_job_with_valid_regexes():
    candidates = ["1", "0.5", "STORAGE_WRITE_API", "projects/p/subscriptions/s", "projects/p/topics/t",
                  "my-proj:pulse", "bundled"]
    for name, param in metadata().items():
        assert param.get("label") and param.get("helpText"), f"{name}: gcloud requires label and helpText"
        regexes = param.get("regexes", [])
        value = next((c for c in candidates if all(re.search(rx, c) for rx in regexes)), None)
        assert value is not None, f"{name}: no sample value matches {regexes}"
        try:
            check_flags([f"--{name}", value])
        except OptionsError as e:
            pytest.fail(f"metadata.json parameter {name} is not a flag the job takes: {e}")
    assert {"model_copies", "max_batch_duration_secs", "min_batch_size"} <= set(metadata())
    assert not UNDECLARED_OK & set(metadata())


# --- the same, read by an installed Google Cloud SDK (offline: nothing is sent) ----------------

def _gcloud_sdk() -> Path | None:
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return None
    root = Path(gcloud).resolve().parent.parent
    return root if (root / "lib" / "googlecloudsdk" / "calliope" / "arg_parsers.py").exists() else None


def _gcloud_env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
            "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true", "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
            "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "true", "LC_ALL": "C"}


GCLOUD_PARSE = """
import argparse, json, sys
from googlecloudsdk.calliope import arg_parsers
p = argparse.ArgumentParser()
p.add_argument("--additional-experiments", type=arg_parsers.ArgList(), action=arg_parsers.UpdateAction)
p.add_argument("--parameters", type=arg_parsers.ArgDict(), action=arg_parsers.UpdateAction)
args, _ = p.parse_known_args(json.loads(sys.stdin.read()))
print(json.dumps({"experiments": args.additional_experiments, "parameters": dict(args.parameters)}))
"""


@pytest.mark.integration
def test_flex_run_flags_as_the_installed_gcloud_splits_them(tmp_path):
    """gcloud's own ArgList/ArgDict (the types of flex-template run's flags) on the rendered argv."""
    sdk = _gcloud_sdk()
    if sdk is None:
        pytest.skip("no Google Cloud SDK installed")
    python = sdk / "platform" / "bundledpythonunix" / "bin" / "python3"
    argv, _ = main_command(render("flex-run", **GCP), ["gcloud", "dataflow", "flex-template", "run"])
    proc = subprocess.run([str(python) if python.exists() else "python3", "-c", GCLOUD_PARSE],
                          input=json.dumps(argv[5:]), capture_output=True, text=True, timeout=120,
                          env={**_gcloud_env(tmp_path), "PYTHONPATH": f"{sdk}/lib:{sdk}/lib/third_party"})
    assert proc.returncode == 0, proc.stderr
    parsed_by_gcloud = json.loads(proc.stdout)
    flags = flag_values(argv)
    assert parsed_by_gcloud["experiments"] == [e for v in flags["--additional-experiments"] for e in gcloud_list(v)]
    assert parsed_by_gcloud["parameters"] == gcloud_dict(flags["--parameters"])
    assert GPU_OPTION in parsed_by_gcloud["experiments"]


@pytest.mark.integration
def test_metadata_json_as_the_installed_gcloud_builds_the_template_spec(tmp_path):
    """`gcloud dataflow flex-template build --print-only` validates metadata.json and prints the
    spec without writing it anywhere."""
    if _gcloud_sdk() is None:
        pytest.skip("no Google Cloud SDK installed")
    argv, _ = main_command(render("flex-template", **GCP), ["gcloud", "dataflow", "flex-template", "build"])
    proc = subprocess.run(argv + ["--print-only"], cwd=ROOT, env=_gcloud_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    spec = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert spec["image"] == IMAGE and spec["sdkInfo"] == {"language": "PYTHON"}
    assert [p["name"] for p in spec["metadata"]["parameters"]] == list(metadata())


# --- images -----------------------------------------------------------------------------------

def test_image_and_image_local_build_the_same_dockerfile_with_the_same_arguments():
    text = render("image", **GCP)
    every_line_parses(text)
    argv, operators = main_command(text, ["gcloud", "builds", "submit"])
    assert operators == []
    flags = flag_values(argv)
    assert flags["--config"] == ["deploy/cloudbuild.yaml"] and argv[-1] == "."
    subs = gcloud_dict(flags["--substitutions"])
    assert subs == {"_IMAGE": IMAGE, "_BEAM_VERSION": BEAM_VERSION, "_TF_VERSION": TF_VERSION}
    build = yaml.safe_load((ROOT / "deploy" / "cloudbuild.yaml").read_text())
    step_args = [re.sub(r"\$\{(_\w+)\}", lambda m: subs[m.group(1)], a) for a in build["steps"][0]["args"]]
    assert build["images"] == ["${_IMAGE}"]

    local, operators = main_command(render("image-local"), ["docker", "build"])
    assert operators == []
    assert local[-1] == "."
    tag = local[local.index("-t") + 1]
    assert tag == LOCAL_IMAGE
    # Same build arguments and context as Cloud Build's docker step, only the tag differs.
    assert [a for a in local[2:] if a not in ("-t", tag)] == \
        [a for a in step_args[1:] if a not in ("-t", IMAGE)]


# --- Flink ------------------------------------------------------------------------------------

def test_flink_docker_runs_the_project_image():
    text = render("flink", PROJECT="my-proj", REGION="europe-west4")
    every_line_parses(text)
    options = parsed(pulse_argv(text))
    portable = options.view_as(PortableOptions)
    assert (portable.environment_type, portable.environment_config) == ("DOCKER", IMAGE)
    assert portable.job_endpoint == "localhost:8099"
    assert options.view_as(StandardOptions).runner == "PortableRunner"
    job = options.view_as(SentimentOptions)
    assert (job.max_batch_size, job.max_batch_duration_secs, job.model_copies) == (64, 1.0, None)
    # Without a project: the tag `make image-local` builds.
    local = parsed(pulse_argv(render("flink", FLINK_INPUT="/shared/posts.jsonl", FLINK_OUTPUT="/shared/out")))
    assert local.view_as(PortableOptions).environment_config == LOCAL_IMAGE
    assert (local.view_as(SentimentOptions).input, local.view_as(SentimentOptions).output) == \
        ("/shared/posts.jsonl", "/shared/out")


def test_flink_external_uses_the_worker_pool():
    options = parsed(pulse_argv(render("flink", FLINK_ENVIRONMENT="EXTERNAL")))
    portable = options.view_as(PortableOptions)
    assert (portable.environment_type, portable.environment_config) == ("EXTERNAL", "localhost:50000")
    other = parsed(pulse_argv(render("flink", FLINK_ENVIRONMENT="EXTERNAL", WORKER_POOL_PORT="50001",
                                     FLINK_MODEL_COPIES="1")))
    assert other.view_as(PortableOptions).environment_config == "localhost:50001"
    assert other.view_as(SentimentOptions).model_copies == 1


def test_flink_loopback_and_a_wrong_environment():
    portable = parsed(pulse_argv(render("flink", FLINK_ENVIRONMENT="LOOPBACK"))).view_as(PortableOptions)
    assert (portable.environment_type, portable.environment_config) == ("LOOPBACK", None)
    proc = subprocess.run(["make", "-n", "-s", "-o", ".venv/.stamp", "flink", "FLINK_ENVIRONMENT=PROCESS"],
                          cwd=ROOT, env={"PATH": os.environ["PATH"]}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "use DOCKER, EXTERNAL or LOOPBACK" in proc.stderr


def test_flink_job_server_and_worker_pool():
    argv, operators = main_command(render("flink-job-server", FLINK_ARTIFACTS_DIR="gs://my-bucket/artifacts"),
                                   ["docker", "run"])
    assert operators == []
    assert f"apache/beam_flink1.19_job_server:{BEAM_VERSION}" in argv
    assert {"--job-port=8099", "--flink-master=localhost:8081", "--artifacts-dir=gs://my-bucket/artifacts"} <= set(argv)

    text = render("worker-pool")
    every_line_parses(text)
    argv, operators = main_command(text, [".venv/bin/python", "-m", "pipelines.worker_env"])
    assert operators == []
    assert argv == [".venv/bin/python", "-m", "pipelines.worker_env", "serve", "--dest", ".venv-worker",
                    "--port", "50000"]
    argv, _ = main_command(render("worker-pool", WORKER_VENV="/opt/pulse-worker", WORKER_POOL_PORT="50001"),
                           [".venv/bin/python", "-m", "pipelines.worker_env"])
    assert argv[-4:] == ["--dest", "/opt/pulse-worker", "--port", "50001"]


# --- BigQuery tables --------------------------------------------------------------------------

def test_bq_tables():
    text = render("bq-tables", PROJECT="my-proj", DATASET="pulse", REGION="EU")
    every_line_parses(text)
    argv, operators = main_command(text, [".venv/bin/python", "-m", "connectors.sinks.bigquery"])
    assert operators == []
    assert argv[3:] == ["create", "--dataset", "my-proj:pulse", "--location", "EU"]
