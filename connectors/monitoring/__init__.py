"""Watches over what the job wrote: the accuracy watch (views labels_resolved and model_accuracy
against the review desk's labels; model_degraded alerts; `pulse accuracy`).

May import: connectors.sources, .sinks, .query, .feeds, transforms and models;
never pipelines or the commands.
"""
