"""`pulse`: the command line of sentiment-pulse.

    pulse run      --input FILE|projects/P/subscriptions/S --output DIR|PROJECT:DATASET [Beam options]
    pulse sql      "SELECT ..." --output DIR        SQL over the Parquet tables (DuckDB)
    pulse summary  --output DIR                     per-keyword summary of a run
    pulse dashboard --output DIR|PROJECT:DATASET    the dashboard and review desk (http://127.0.0.1:8501)
    pulse accuracy --output DIR|PROJECT:DATASET [--margin 0.05] [--min-labels 50] [--model bundled|DIR]
                                                    the live model against the reviewers' labels; model_degraded alerts
    pulse notify   --config notify.toml --output DIR | --subscription projects/P/subscriptions/S [--follow 10]
                                                    alerts or incidents to webhooks and e-mail, each once
    pulse ingest   --keywords acme,nimbus --topic projects/P/topics/T     X API -> Pub/Sub
    pulse publish  --topic projects/P/topics/T --file posts.jsonl --rate 100
    pulse retrain  --output DIR|PROJECT:DATASET --registry DIR|gs://...   challenger vs current model
    pulse registry init|list|promote VERSION --registry DIR|gs://...     the model registry

The package holds the commands: this dispatcher (`pulse = pipelines.cli:main`), `ingest`,
`publish` and `sql`. A command may import the job graph (pipelines.*), connectors, transforms
and models; nothing but another command imports it.
"""
from __future__ import annotations

import importlib
import re
import sys

COMMANDS = {
    "run": ("pipelines.sentiment_pipeline", "main", "run the streaming job"),
    "sql": ("pipelines.cli.sql", "sql_main", "run SQL over an output directory (DuckDB)"),
    "summary": ("pipelines.cli.sql", "summary_main", "print a per-keyword summary of an output directory"),
    "dashboard": ("dashboard.cli", "main", "serve the dashboard and review desk over an output (a web page)"),
    "accuracy": ("connectors.monitoring.accuracy_watch", "main", "the live model against the reviewers' labels; model_degraded alerts"),
    "notify": ("connectors.monitoring.notify", "main",
               "deliver alerts or incidents to Slack-compatible webhooks, JSON webhooks and e-mail"),
    "ingest": ("pipelines.cli.ingest", "main", "poll the X API and publish posts to Pub/Sub"),
    "publish": ("pipelines.cli.publish", "main", "publish a JSON-lines file or synthetic posts to Pub/Sub"),
    "retrain": ("pipelines.cli", "retrain_main", "train a challenger on corpora + labels; promote it if better"),
    "registry": ("models.registry", "main", "the model registry: init, list, promote VERSION (roll back)"),
}


def retrain_main(argv: list[str]) -> int:
    """`pulse retrain` (models/retrain.py) with the labels read by connectors/sinks/labels.py."""
    from connectors.sinks.labels import LabelStoreError, read_latest
    from models.retrain import RetrainError, main

    def read_labels(output: str, project: str | None) -> list[dict]:
        try:
            return read_latest(output, project)
        except LabelStoreError as e:
            raise RetrainError(str(e)) from None

    return main(argv, read_labels=read_labels)


def usage() -> str:
    lines = ["usage: pulse COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "pulse COMMAND --help shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        # Named only when it looks like a command: a stray word may be a pasted secret.
        shown = f"{command!r} " if re.fullmatch(r"-{0,2}[a-z][a-z0-9_-]{0,19}", command) else ""
        print(f"pulse: error: unknown command {shown}(one of: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[command]
    if command == "run" and any(a in ("-h", "--help") for a in rest):
        from pipelines.options import print_help
        print_help()
        return 0
    return int(getattr(importlib.import_module(module), func)(rest) or 0)

