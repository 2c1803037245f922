# Running sentiment-pulse at scale: Dataflow (GPU workers, Streaming Engine) and Flink.
# Included by the Makefile; see deploy/README.md for what each target needs and costs.
#
#   make bq-tables     PROJECT=my-proj DATASET=pulse
#   make image         PROJECT=my-proj REGION=europe-west4      # Cloud Build (no local Docker needed)
#   make image-local                                           # the same image, docker build here
#   make dataflow      PROJECT=my-proj REGION=europe-west4 BUCKET=my-bucket SUBSCRIPTION=posts-sub DATASET=pulse
#   make flex-template PROJECT=... BUCKET=... && make flex-run PROJECT=... BUCKET=... SUBSCRIPTION=...
#   make flink         JOB_ENDPOINT=localhost:8099 FLINK_INPUT=/shared/posts.jsonl FLINK_OUTPUT=/shared/out
#   make worker-pool   WORKER_POOL_PORT=50000                  # a Beam worker pool with the project
#
# Every variable below can be set on the command line or in the environment.
# `make -n TARGET ...` prints the commands without running them (tests/test_make_targets.py
# renders every target this way and parses the result as the shell would).

# --- versions: read from requirements.in, the one place they are written ----------------------
BEAM_VERSION := $(shell sed -n 's/^apache-beam\[gcp\]==//p' requirements.in)
TF_VERSION := $(shell sed -n 's/^tensorflow==//p' requirements.in)
comma := ,

# --- Google Cloud ----------------------------------------------------------------------------
PROJECT ?=
REGION ?= us-central1
BUCKET ?=
SUBSCRIPTION ?=
DATASET ?= pulse
BQ_METHOD ?= STORAGE_WRITE_API
JOB_NAME ?= sentiment-pulse-$(shell date -u +%Y%m%d-%H%M%S)
# The worker image (Dockerfile), pushed to Artifact Registry by `make image`.
IMAGE ?= $(REGION)-docker.pkg.dev/$(PROJECT)/sentiment-pulse/worker:$(BEAM_VERSION)
# The same image built by `make image-local` (docker build on this machine).
LOCAL_IMAGE ?= sentiment-pulse-worker:$(BEAM_VERSION)
# GPU workers: one T4 per worker, driver installed by Dataflow. GPU=none: `make dataflow` runs
# on CPU workers with the default Beam image and the package built from setup.py instead of
# $(IMAGE); `make flex-run` keeps $(IMAGE) (the template's image) on CPU workers.
GPU ?= nvidia-tesla-t4
GPU_COUNT ?= 1
MACHINE_TYPE ?= n1-standard-8
MAX_WORKERS ?= 4
# RunInference batching for BERT-base (128 tokens) on one T4: 64 is a starting point (chosen,
# not measured: no GPU here); waiting at most 1 s keeps streaming latency bounded (without
# max_batch_duration_secs RunInference batches within a bundle only: tiny batches in streaming).
MAX_BATCH_SIZE ?= 64
MAX_BATCH_DURATION ?= 1
MIN_BATCH_SIZE ?=
MODEL ?= bundled
# Models per worker VM, each in a process of its own, shared by all SDK processes of the VM
# (Beam's model_copies). Dataflow starts one SDK process per vCPU: without this, each would load
# its own model onto the GPU. One model per GPU; on CPU workers (GPU=none) not set unless given.
ifeq ($(GPU),none)
MODEL_COPIES ?=
else
MODEL_COPIES ?= $(GPU_COUNT)
endif
TEMPLATE ?= gs://$(BUCKET)/templates/sentiment-pulse.json

# The Dataflow service option that attaches the GPUs. Its semicolons end a shell command when
# unquoted, so every recipe puts it in single quotes.
ACCELERATOR = worker_accelerator=type:$(GPU);count:$(GPU_COUNT);install-nvidia-driver

# --- Flink -------------------------------------------------------------------------------------
FLINK_VERSION ?= 1.19
FLINK_MASTER ?= localhost:8081
JOB_ENDPOINT ?= localhost:8099
# Where the job server keeps staged artifacts: a path the task managers can read too (gs://,
# or a shared mount). Empty: the job server's default (a temporary directory of its own).
FLINK_ARTIFACTS_DIR ?=
FLINK_JOB_SERVER_FLAGS = $(if $(FLINK_ARTIFACTS_DIR), --artifacts-dir=$(FLINK_ARTIFACTS_DIR))
# DOCKER: each task manager starts FLINK_IMAGE (the project's worker image) as the SDK harness.
# EXTERNAL: each task manager asks the Beam worker pool at FLINK_WORKER_POOL (on its own host:
#           the worker image as a sidecar, or `make worker-pool`) for SDK workers.
# LOOPBACK: the harness runs in the submitting process (a local Flink, for trying it out).
FLINK_ENVIRONMENT ?= DOCKER
FLINK_IMAGE ?= $(if $(PROJECT),$(IMAGE),$(LOCAL_IMAGE))
FLINK_INPUT ?= $(DATA)/sample_stream.jsonl
FLINK_OUTPUT ?= out-flink
FLINK_MODEL_COPIES ?=

# --- a Beam worker pool on this host (EXTERNAL environment) --------------------------------------
WORKER_VENV ?= .venv-worker
WORKER_POOL_PORT ?= 50000
FLINK_WORKER_POOL ?= localhost:$(WORKER_POOL_PORT)

# --- flags shared by the targets -------------------------------------------------------------
BATCH_FLAGS = --max_batch_size $(MAX_BATCH_SIZE) --max_batch_duration_secs $(MAX_BATCH_DURATION)$(if \
  $(MIN_BATCH_SIZE), --min_batch_size $(MIN_BATCH_SIZE))

ifeq ($(GPU),none)
WORKER_FLAGS = --setup_file ./setup.py --machine_type $(MACHINE_TYPE)
else
WORKER_FLAGS = --sdk_container_image $(IMAGE) --sdk_location container \
	--machine_type $(MACHINE_TYPE) --dataflow_service_options '$(ACCELERATOR)'
endif

ifeq ($(FLINK_ENVIRONMENT),DOCKER)
FLINK_ENV_FLAGS = --environment_type DOCKER --environment_config $(FLINK_IMAGE)
else ifeq ($(FLINK_ENVIRONMENT),EXTERNAL)
FLINK_ENV_FLAGS = --environment_type EXTERNAL --environment_config $(FLINK_WORKER_POOL)
else ifeq ($(FLINK_ENVIRONMENT),LOOPBACK)
FLINK_ENV_FLAGS = --environment_type LOOPBACK
else
FLINK_ENV_FLAGS =
endif

# Flex template: the GPU is a service option, which gcloud passes with --additional-experiments
# (a list flag split on commas); the pipeline's own options go in --parameters (a dict flag split
# on commas: no value here holds one). sdk_container_image is a Beam option Dataflow accepts
# without a metadata.json entry; every other parameter is declared there. (Each `$(strip \`
# line end joins two lines without the space make would put there: the value has no spaces.)
FLEX_EXPERIMENTS = use_runner_v2$(if $(filter-out none,$(GPU)),$(comma)$(ACCELERATOR))
FLEX_PARAMETERS = input=projects/$(PROJECT)/subscriptions/$(SUBSCRIPTION),output=$(PROJECT):$(DATASET)$(strip \
  ),bq_method=$(BQ_METHOD),model=$(MODEL),max_batch_size=$(MAX_BATCH_SIZE)$(strip \
  ),max_batch_duration_secs=$(MAX_BATCH_DURATION)$(if $(MIN_BATCH_SIZE),$(comma)min_batch_size=$(MIN_BATCH_SIZE))$(strip \
  )$(if $(MODEL_COPIES),$(comma)model_copies=$(MODEL_COPIES)),sdk_container_image=$(IMAGE)

.PHONY: dataflow dataflow-check bq-tables image image-local flex-template flex-run flink \
	flink-job-server worker-pool

# One line naming the missing variables, before anything is sent anywhere.
REQUIRED_GCP := PROJECT REGION BUCKET SUBSCRIPTION DATASET
MISSING_GCP = $(strip $(foreach v,$(REQUIRED_GCP),$(if $($(v)),,$(v))))
dataflow-check:
	@$(if $(MISSING_GCP),echo "error: set $(MISSING_GCP) (make dataflow PROJECT=my-proj BUCKET=my-bucket SUBSCRIPTION=posts-sub)"; exit 2,true)
	@command -v gcloud >/dev/null || { echo "error: the Google Cloud SDK (gcloud) is needed"; exit 2; }

# The five tables (schema, DAY partitions, keyword clustering) and the views, before the job:
# the Storage Write API creates tables without partitioning.
bq-tables: $(VENV)/.stamp
	@[ -n "$(PROJECT)" ] || { echo "error: set PROJECT (make bq-tables PROJECT=my-proj DATASET=pulse)"; exit 2; }
	$(PY) -m connectors.sinks.bigquery create --dataset $(PROJECT):$(DATASET) --location $(REGION)

# The worker image (GPU and CPU; also the flex template launcher and Flink's SDK harness), built
# by Cloud Build (docker cannot build on every machine) and pushed to IMAGE.
image:
	@[ -n "$(PROJECT)" ] || { echo "error: set PROJECT (make image PROJECT=my-proj REGION=...)"; exit 2; }
	gcloud builds submit --project $(PROJECT) --region $(REGION) --config deploy/cloudbuild.yaml \
	  --substitutions _IMAGE=$(IMAGE),_BEAM_VERSION=$(BEAM_VERSION),_TF_VERSION=$(TF_VERSION) .

# The same image with the local Docker daemon (for a local Flink, or to push it yourself).
image-local:
	docker build -t $(LOCAL_IMAGE) \
	  --build-arg BEAM_VERSION=$(BEAM_VERSION) --build-arg TF_VERSION=$(TF_VERSION) .

# Submit the streaming job: Pub/Sub in, BigQuery out, Streaming Engine, Runner v2.
dataflow: dataflow-check $(VENV)/.stamp
	$(VENV)/bin/pulse run \
	  --runner DataflowRunner --project $(PROJECT) --region $(REGION) --job_name $(JOB_NAME) \
	  --temp_location gs://$(BUCKET)/tmp --staging_location gs://$(BUCKET)/staging \
	  --input projects/$(PROJECT)/subscriptions/$(SUBSCRIPTION) --output $(PROJECT):$(DATASET) \
	  --bq_method $(BQ_METHOD) --model $(MODEL)$(if $(MODEL_COPIES), --model_copies $(MODEL_COPIES)) \
	  $(BATCH_FLAGS) \
	  --streaming --enable_streaming_engine --experiments use_runner_v2 \
	  --max_num_workers $(MAX_WORKERS) --autoscaling_algorithm THROUGHPUT_BASED \
	  $(WORKER_FLAGS)

# A flex template (metadata.json lists its parameters; IMAGE is launcher and worker) and a run of it.
flex-template: dataflow-check
	gcloud dataflow flex-template build $(TEMPLATE) --project $(PROJECT) \
	  --image $(IMAGE) --sdk-language PYTHON --metadata-file metadata.json
flex-run: dataflow-check
	gcloud dataflow flex-template run $(JOB_NAME) --project $(PROJECT) --region $(REGION) \
	  --template-file-gcs-location $(TEMPLATE) \
	  --staging-location gs://$(BUCKET)/staging --temp-location gs://$(BUCKET)/tmp \
	  --enable-streaming-engine --worker-machine-type $(MACHINE_TYPE) --max-workers $(MAX_WORKERS) \
	  --additional-experiments '$(FLEX_EXPERIMENTS)' \
	  --parameters '$(FLEX_PARAMETERS)'

# Beam's Flink job server (a Docker container) in front of the Flink cluster at FLINK_MASTER.
flink-job-server:
	docker run --rm --net=host apache/beam_flink$(FLINK_VERSION)_job_server:$(BEAM_VERSION) \
	  --flink-master=$(FLINK_MASTER) --job-port=$(lastword $(subst :, ,$(JOB_ENDPOINT)))$(FLINK_JOB_SERVER_FLAGS)

# Submit through the portable runner to the job server at JOB_ENDPOINT. Input: a JSON-lines
# file replayed as a bounded stream (Python's Pub/Sub IO does not run on Flink; deploy/README.md).
# FLINK_INPUT and FLINK_OUTPUT must be paths every task manager can read/write (gs://, or a
# shared mount). The workers get the project from FLINK_IMAGE (DOCKER) or the worker pool
# (EXTERNAL); LOOPBACK runs them in this process.
flink: $(VENV)/.stamp
	$(if $(FLINK_ENV_FLAGS),,$(error FLINK_ENVIRONMENT=$(FLINK_ENVIRONMENT): use DOCKER, EXTERNAL or LOOPBACK))$(VENV)/bin/pulse run \
	  --runner PortableRunner --job_endpoint $(JOB_ENDPOINT) \
	  $(FLINK_ENV_FLAGS) \
	  --input $(FLINK_INPUT) --output $(FLINK_OUTPUT) \
	  --model $(MODEL)$(if $(FLINK_MODEL_COPIES), --model_copies $(FLINK_MODEL_COPIES)) \
	  $(BATCH_FLAGS)

# A Beam worker pool on this host for EXTERNAL environments: a virtualenv at WORKER_VENV with
# the wheel built from setup.py and the requirements.lock pins, serving on WORKER_POOL_PORT.
# Run one on every Flink task manager host and submit with FLINK_ENVIRONMENT=EXTERNAL.
worker-pool: $(VENV)/.stamp
	$(PY) -m pipelines.worker_env serve --dest $(WORKER_VENV) --port $(WORKER_POOL_PORT)
