"""Watches over what the job wrote and tells people: the accuracy watch (views labels_resolved
and model_accuracy against the review desk's labels; model_degraded alerts; `pulse accuracy`) and
`pulse notify` (notify.py: alerts and incidents to webhooks and e-mail, each at most once).

May import: connectors.sources, .sinks, .query, .feeds, transforms and models;
never pipelines or the commands.
"""
