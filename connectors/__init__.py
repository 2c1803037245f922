"""The job's edges: what it reads, what it writes, the SQL over what it wrote, and the watch over that.

    sources/     what comes in: Pub/Sub, a replayed file, the sample stream, a model registry's pointers
    sinks/       what goes out: Parquet, BigQuery, the job's counters, the review desk's labels
    feeds/       what feeds Pub/Sub from outside: the publisher, the X API with its rate limiter and checkpoint
    query/       the SQL layer: views.sql, duckdb_compat.sql, queries/*.sql and their one dialect switch
    monitoring/  the accuracy watch (the live model against the labels; model_degraded alerts)
    emulator.py  Google's Pub/Sub emulator as a child process, for tests and benchmarks

sources, sinks, feeds and query (and emulator) may import models and each other, never
transforms, monitoring or pipelines; monitoring may import them, transforms and models, never
pipelines (tests/test_layout.py enforces the rule).
"""
