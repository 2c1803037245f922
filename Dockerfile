# The worker image: Dataflow GPU (and CPU) workers, the flex template launcher, and the Python SDK
# harness of `make flink` (DOCKER environment, or as a worker pool: `docker run --net=host IMAGE
# --worker_pool`, the entry point being Beam's boot).
#
# Versions are not written here: they come from requirements.in (the one source of truth)
# through build arguments, which `make image` (deploy/deploy.mk) reads and passes:
#
#   make image PROJECT=my-proj REGION=europe-west4      # = docker build with the args below
#   docker build -t IMAGE \
#     --build-arg BEAM_VERSION=$(sed -n 's/^apache-beam\[gcp\]==//p' requirements.in) \
#     --build-arg TF_VERSION=$(sed -n 's/^tensorflow==//p' requirements.in) .
#
# Base: Apache Beam's Python SDK container (the SDK harness Dataflow's Runner v2 starts),
# the same Beam version as the launcher, which Dataflow requires.
ARG PY_VERSION=3.11
ARG BEAM_VERSION
# The flex template launcher, copied in so one image serves as launcher and worker
# (pin a dated tag for reproducible builds: LAUNCHER_IMAGE=...:flex_templates_base_image_release_YYYYMMDD_RC00).
ARG LAUNCHER_IMAGE=gcr.io/dataflow-templates-base/python311-template-launcher-base:latest
FROM ${LAUNCHER_IMAGE} AS launcher

FROM apache/beam_python${PY_VERSION}_sdk:${BEAM_VERSION}
ARG TF_VERSION

RUN test -n "${TF_VERSION}" || (echo "build with --build-arg TF_VERSION=... (make image does)" && false)

WORKDIR /pipeline
COPY requirements.in requirements.lock setup.py ./
COPY pipelines/ pipelines/
COPY transforms/ transforms/
COPY connectors/ connectors/
COPY models/ models/
COPY dashboard/ dashboard/

# TensorFlow with its CUDA/cuDNN wheels ("and-cuda") at the pinned version; everything else
# at the lock's pins (-c), installed as the package setup.py describes, so the workers run
# exactly the code and versions that were tested. The SDK container already has Beam.
RUN pip install --no-cache-dir -c requirements.lock "tensorflow[and-cuda]==${TF_VERSION}" \
 && pip install --no-cache-dir -c requirements.lock . \
 && python -c "import apache_beam, tensorflow as tf; print('beam', apache_beam.__version__, 'tf', tf.__version__)"

COPY --from=launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher

# A flex template builds the job inside this image (the launcher). The default BigQuery write
# method, STORAGE_WRITE_API, is a Java cross-language transform expanded there: it needs a Java
# runtime (11+ for Beam 2.77) and Beam's GCP expansion-service jar, cached here at build time so
# that launching does not depend on Maven Central. (`make dataflow` expands on the submitting
# machine instead, which needs the same.)
RUN apt-get update \
 && apt-get install -y --no-install-recommends default-jre-headless \
 && rm -rf /var/lib/apt/lists/* \
 && java -version \
 && python -c "from apache_beam.utils.subprocess_server import JavaJarServer as J; \
print(J.local_jar(J.path_to_beam_jar('sdks:java:io:google-cloud-platform:expansion-service:build')))"

# Keras 2 serves SavedModels (see models/__init__.py); the CUDA libraries come from the wheels.
ENV TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    FLEX_TEMPLATE_PYTHON_PY_FILE=/pipeline/pipelines/sentiment_pipeline.py \
    FLEX_TEMPLATE_PYTHON_SETUP_FILE=/pipeline/setup.py

# The SDK harness stays the entry point for workers; the flex template launcher is started
# by Dataflow with its own command.
ENTRYPOINT ["/opt/apache/beam/boot"]
