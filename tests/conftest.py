"""Shared pytest set-up. Fixtures live in tests/fixtures/<component>.py, one module per component."""
import os

# Keras 2 (tf-keras) is the Keras this project serves SavedModels with; see models/__init__.py.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

pytest_plugins = [
    "tests.fixtures.models",
    "tests.fixtures.pubsub",
    "tests.fixtures.bert",
    "tests.fixtures.x_api_server",
    "tests.fixtures.bigquery",
    "tests.fixtures.gcs",
    "tests.fixtures.dashboard",
    "tests.fixtures.engines",
]
