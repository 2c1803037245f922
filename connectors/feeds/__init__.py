"""What feeds the job's Pub/Sub topic from outside it: the publisher (pacing, batching, the message
attributes), the X API v2 recent search and filtered stream, their rate limiter and retries, and
the ingester's checkpoint. Used by `pulse publish` and `pulse ingest`; none of it imports Beam.

May import: models, and the other edge packages (connectors.sources, .sinks, .query);
never transforms, connectors.monitoring or pipelines.
"""
