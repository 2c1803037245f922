"""Shared pytest set-up. Fixtures live in tests/fixtures/<component>.py, one module per component."""
import os

import pytest

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

# `make test` runs the suite on two pytest-xdist workers (`-n 2 --dist loadgroup`): many tests
# wait on a broker, a subprocess or a trickle of posts, so two share the 2 cores well. Each test
# module is one group, so its module fixtures are built once, on one worker; the modules that
# share the session's sample-stream output (tests/fixtures/dashboard.py, a minute of job) are
# one group, so that output is built once.
SHARED_GROUPS = {module: "sample_output" for module in (
    "test_dashboard_app", "test_dashboard_browser", "test_dashboard_hostile", "test_dashboard_review",
    "test_learning_loop")}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            module = item.module.__name__.rsplit(".", 1)[-1]
            item.add_marker(pytest.mark.xdist_group(SHARED_GROUPS.get(module, module)))
