# Running sentiment-pulse at scale: Dataflow (GPU workers, Streaming Engine) and Flink.
# Included by the Makefile; see deploy/README.md for what each target needs and costs.
#
#   make bq-tables PROJECT=my-proj DATASET=pulse
#   make image     PROJECT=my-proj REGION=europe-west4
#   make dataflow  PROJECT=my-proj REGION=europe-west4 BUCKET=my-bucket SUBSCRIPTION=posts-sub DATASET=pulse
#   make flink     JOB_ENDPOINT=localhost:8099 FLINK_INPUT=data/sample_stream.jsonl FLINK_OUTPUT=/shared/out
#
# Every variable below can be set on the command line or in the environment.

# --- versions: read from requirements.in, the one place they are written ----------------------
BEAM_VERSION := $(shell sed -n 's/^apache-beam\[gcp\]==//p' requirements.in)
TF_VERSION := $(shell sed -n 's/^tensorflow==//p' requirements.in)

# --- Google Cloud ----------------------------------------------------------------------------
PROJECT ?=
REGION ?= us-central1
BUCKET ?=
SUBSCRIPTION ?=
DATASET ?= pulse
BQ_METHOD ?= STORAGE_WRITE_API
JOB_NAME ?= sentiment-pulse-$(shell date -u +%Y%m%d-%H%M%S)
IMAGE ?= $(REGION)-docker.pkg.dev/$(PROJECT)/sentiment-pulse/worker:$(BEAM_VERSION)
# GPU workers: one T4 per worker, driver installed by Dataflow. GPU=none runs on CPU workers
# with the default Beam image and the package built from setup.py instead of $(IMAGE).
GPU ?= nvidia-tesla-t4
GPU_COUNT ?= 1
MACHINE_TYPE ?= n1-standard-8
MAX_WORKERS ?= 4
# RunInference batching for BERT-base (128 tokens) on one T4: 64 is a starting point (chosen,
# not measured: no GPU here); waiting at most 1 s keeps streaming latency bounded.
MAX_BATCH_SIZE ?= 64
MAX_BATCH_DURATION ?= 1
MODEL ?= bundled
TEMPLATE ?= gs://$(BUCKET)/templates/sentiment-pulse.json

# --- Flink -------------------------------------------------------------------------------------
FLINK_VERSION ?= 1.19
FLINK_MASTER ?= localhost:8081
JOB_ENDPOINT ?= localhost:8099
# DOCKER: Flink task managers start $(FLINK_IMAGE) as the Python SDK harness.
# LOOPBACK: the harness runs in this process (a local Flink for trying it out).
FLINK_ENVIRONMENT ?= DOCKER
FLINK_IMAGE ?= apache/beam_python3.11_sdk:$(BEAM_VERSION)
FLINK_INPUT ?= $(DATA)/sample_stream.jsonl
FLINK_OUTPUT ?= out-flink

ifeq ($(GPU),none)
WORKER_FLAGS := --setup_file ./setup.py --machine_type $(MACHINE_TYPE)
else
WORKER_FLAGS := --sdk_container_image $(IMAGE) --sdk_location container \
	--machine_type $(MACHINE_TYPE) \
	--dataflow_service_options "worker_accelerator=type:$(GPU);count:$(GPU_COUNT);install-nvidia-driver"
endif

ifeq ($(FLINK_ENVIRONMENT),DOCKER)
FLINK_ENV_FLAGS := --environment_type DOCKER --environment_config $(FLINK_IMAGE)
else
FLINK_ENV_FLAGS := --environment_type $(FLINK_ENVIRONMENT)
endif

.PHONY: dataflow dataflow-check bq-tables image flex-template flex-run flink flink-job-server

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
	$(PY) -m connectors.bigquery create --dataset $(PROJECT):$(DATASET) --location $(REGION)

# The GPU worker image, built by Cloud Build (docker cannot build on every machine).
image:
	@[ -n "$(PROJECT)" ] || { echo "error: set PROJECT (make image PROJECT=my-proj REGION=...)"; exit 2; }
	gcloud builds submit --project $(PROJECT) --region $(REGION) --config deploy/cloudbuild.yaml \
	  --substitutions _IMAGE=$(IMAGE),_BEAM_VERSION=$(BEAM_VERSION),_TF_VERSION=$(TF_VERSION) .

# Submit the streaming job: Pub/Sub in, BigQuery out, Streaming Engine, Runner v2.
dataflow: dataflow-check $(VENV)/.stamp
	$(VENV)/bin/pulse run \
	  --runner DataflowRunner --project $(PROJECT) --region $(REGION) --job_name $(JOB_NAME) \
	  --temp_location gs://$(BUCKET)/tmp --staging_location gs://$(BUCKET)/staging \
	  --input projects/$(PROJECT)/subscriptions/$(SUBSCRIPTION) --output $(PROJECT):$(DATASET) \
	  --bq_method $(BQ_METHOD) --model $(MODEL) \
	  --max_batch_size $(MAX_BATCH_SIZE) --max_batch_duration_secs $(MAX_BATCH_DURATION) \
	  --streaming --enable_streaming_engine --experiments use_runner_v2 \
	  --max_num_workers $(MAX_WORKERS) --autoscaling_algorithm THROUGHPUT_BASED \
	  $(WORKER_FLAGS)

# A flex template (metadata.json lists its parameters) and a run of it.
flex-template: dataflow-check
	gcloud dataflow flex-template build $(TEMPLATE) --project $(PROJECT) \
	  --image $(IMAGE) --sdk-language PYTHON --metadata-file metadata.json
flex-run: dataflow-check
	gcloud dataflow flex-template run $(JOB_NAME) --project $(PROJECT) --region $(REGION) \
	  --template-file-gcs-location $(TEMPLATE) --enable-streaming-engine \
	  --worker-machine-type $(MACHINE_TYPE) --max-workers $(MAX_WORKERS) \
	  --additional-experiments use_runner_v2 \
	  --parameters input=projects/$(PROJECT)/subscriptions/$(SUBSCRIPTION),output=$(PROJECT):$(DATASET),bq_method=$(BQ_METHOD),max_batch_size=$(MAX_BATCH_SIZE) \
	  --parameters sdk_container_image=$(IMAGE) \
	  --parameters dataflow_service_options=worker_accelerator=type:$(GPU);count:$(GPU_COUNT);install-nvidia-driver

# Beam's Flink job server (a Docker container) in front of the Flink cluster at FLINK_MASTER.
flink-job-server:
	docker run --rm --net=host apache/beam_flink$(FLINK_VERSION)_job_server:$(BEAM_VERSION) \
	  --flink-master=$(FLINK_MASTER) --job-port=$(lastword $(subst :, ,$(JOB_ENDPOINT)))

# Submit through the portable runner to the job server at JOB_ENDPOINT. Input: a JSON-lines
# file replayed as a bounded stream (Python's Pub/Sub IO does not run on Flink; README).
# FLINK_OUTPUT must be a path every task manager can write (gs://, or a shared mount).
flink: $(VENV)/.stamp
	$(VENV)/bin/pulse run --runner PortableRunner --job_endpoint $(JOB_ENDPOINT) \
	  $(FLINK_ENV_FLAGS) \
	  --input $(FLINK_INPUT) --output $(FLINK_OUTPUT) --model $(MODEL)
