"""Watching the job's output and telling people: `pulse notify` (notify.py) delivers alerts and
incidents to webhooks and e-mail."""
