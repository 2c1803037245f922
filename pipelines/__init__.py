"""The job graph and the commands that drive it.

    sentiment_pipeline.py  build_pipeline (the graph) and run (options -> runner -> result)
    options.py             SentimentOptions, the job's one PipelineOptions subclass
    runners.py             which runner a job goes to, by the class Beam builds
    worker_env.py          a worker environment that has only the built wheel
    direct_runner/         the job's patches to Beam's BundleBasedDirectRunner
    cli/                   the `pulse` command and its sub-commands

The job graph may import connectors (all of it), transforms and models, never pipelines.cli,
dashboard or bench (tests/test_layout.py enforces it).
"""
