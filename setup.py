"""Packaging for sentiment-pulse: the `pulse` console script, and the package that
Dataflow workers install (`--setup_file ./setup.py`).

Runtime pins come from requirements.in (the one place versions are written); the
test-only pins there are left out of install_requires.
"""
import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
TEST_ONLY = {"pytest", "pytest-timeout", "bqemulator", "testcontainers", "hypothesis", "selenium"}


def requirements():
    reqs = []
    for line in (HERE / "requirements.in").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and line.split("==")[0].split("[")[0] not in TEST_ONLY:
            reqs.append(line)
    return reqs


setup(
    name="sentiment-pulse",
    version="0.1.0",
    description="Real-time customer sentiment: Pub/Sub -> Beam RunInference -> BigQuery/Parquet",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["pipelines", "pipelines.*", "transforms", "transforms.*", "connectors",
                                    "connectors.*", "models", "models.*", "dashboard", "dashboard.*"]),
    package_data={"models": ["bundled/*", "bundled/*/*", "bundled/*/*/*"],
                  "connectors.query": ["*.sql", "queries/*.sql"]},
    install_requires=requirements(),
    entry_points={"console_scripts": ["pulse = pipelines.cli:main"]},
)
