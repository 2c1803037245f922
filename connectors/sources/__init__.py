"""What comes into the job: Pub/Sub (ReadPosts, PublishAlerts), a JSON-lines file replayed as a
stream (ReplayPosts), the embedded sample stream, and a model registry's pointers (WatchRegistry).

May import: models, and the other edge packages (connectors.sinks, .feeds, .query);
never transforms, connectors.monitoring or pipelines.
"""
