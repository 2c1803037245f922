"""Which runner a job goes to, decided by the class Beam builds, never by how `--runner` is spelled.

Beam accepts `DataflowRunner`, `dataflow`, `Dataflow`, `TestDataflowRunner` or the dotted class
path for the same runner (`apache_beam.runners.runner.create_runner`); comparing the flag's
string silently treated `--runner dataflow` as "not Dataflow" (no Pub/Sub de-duplication on
`post_key`, no `event_time` timestamps). `identify(options)` builds the runner the way
`beam.Pipeline` will and classifies its class:

- `direct`: Beam's Python DirectRunner family. `pulse run` swaps in BundleBasedDirectRunner
  (streaming replay, the Pub/Sub reader that acknowledges after writing, drains on stop).
- `dataflow`: DataflowRunner and its subclasses.
- `portable`: PortableRunner and its subclasses (Flink, Spark, Prism, the local job service).
- `fnapi`: the FnApiRunner, in this process.

`workers` says where the SDK workers run, which is what decides whether a path of this machine
can be handed to them: "here" (DirectRunner, FnApiRunner, a portable runner with the LOOPBACK
environment), "elsewhere" (Dataflow; a portable runner's DOCKER containers, which see none of
this machine's files) or "shared?" (PROCESS and EXTERNAL environments: workers on some machine
that may or may not share this one's files).
"""
from __future__ import annotations

from typing import NamedTuple

from apache_beam.options.pipeline_options import FlinkRunnerOptions, PipelineOptions, PortableOptions, StandardOptions


class RunnerError(ValueError):
    """An unknown --runner, said in one sentence."""


class Runner(NamedTuple):
    name: str  # the class Beam builds, e.g. "DataflowRunner", "FlinkRunner"
    family: str  # "direct", "dataflow", "portable" or "fnapi"
    workers: str  # "here", "elsewhere" or "shared?"

    @property
    def is_direct(self) -> bool:
        return self.family == "direct"

    @property
    def is_dataflow(self) -> bool:
        return self.family == "dataflow"

    @property
    def plays_test_stream(self) -> bool:
        """Whether the runner itself executes TestStream, so a file replays as a stream (event
        time, early and late panes) rather than as a bounded collection: the DirectRunner and
        Prism (`beam:transform:teststream:v1` is a Prism primitive). Flink, Dataflow and Beam's
        local job service do not run TestStream in a portable pipeline."""
        return self.is_direct or self.name == "PrismRunner"


def runner_class(spelling: str | None) -> type:
    """The runner class Beam builds for a --runner value (None: Beam's default, the DirectRunner)."""
    from apache_beam.runners.runner import create_runner

    try:
        return type(create_runner(spelling or "DirectRunner"))
    except (ValueError, ImportError, AttributeError) as e:
        raise RunnerError(f"--runner {spelling}: {str(e).splitlines()[0]}") from None


def identify(options: PipelineOptions) -> Runner:
    """Classify the runner `options` name (see the module docstring)."""
    from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner
    from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner, SwitchingDirectRunner
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.runners.portability.portable_runner import PortableRunner

    cls = runner_class(options.view_as(StandardOptions).runner)
    if issubclass(cls, (SwitchingDirectRunner, BundleBasedDirectRunner)):
        return Runner(cls.__name__, "direct", "here")
    if issubclass(cls, DataflowRunner):
        return Runner(cls.__name__, "dataflow", "elsewhere")
    if issubclass(cls, FnApiRunner):
        return Runner(cls.__name__, "fnapi", "here")
    if issubclass(cls, PortableRunner):
        return Runner(cls.__name__, "portable", _portable_workers(cls, options))
    raise RunnerError(f"--runner {options.view_as(StandardOptions).runner}: {cls.__name__} is not supported "
                      "by pulse run (use DirectRunner, DataflowRunner, or a portable runner such as FlinkRunner)")


def _portable_workers(cls: type, options: PipelineOptions) -> str:
    environment = (options.view_as(PortableOptions).environment_type or "").upper()
    if not environment:
        # Beam's defaults: Prism, and Flink on an embedded cluster, run the harness in this
        # process (LOOPBACK); every other portable runner starts Docker containers.
        from apache_beam.runners.portability.flink_runner import MAGIC_HOST_NAMES, FlinkRunner
        from apache_beam.runners.portability.prism_runner import PrismRunner

        local_flink = (issubclass(cls, FlinkRunner)
                       and options.view_as(FlinkRunnerOptions).flink_master in MAGIC_HOST_NAMES)
        environment = "LOOPBACK" if issubclass(cls, PrismRunner) or local_flink else "DOCKER"
    if environment in ("LOOPBACK", "EMBEDDED"):
        return "here"
    if environment == "DOCKER":
        return "elsewhere"
    return "shared?"
