"""The ingester's checkpoint: the newest published post id (`since_id`) per keyword.

A JSON file `{"version": 1, "since_id": {"<keyword>": "<id>"}}`, rewritten atomically
(write a temporary file in the same directory, fsync, rename over the old one) so a
crash leaves either the old or the new checkpoint, never half of one. The ingester
advances a keyword only after Pub/Sub acknowledged every post up to that id, so a
restart resumes exactly after the last acknowledged post: nothing lost, nothing twice.

X post ids are snowflakes (64-bit, increasing with time): compared as integers,
stored as strings, as the API sends them.

    python -c "from connectors.feeds.checkpoint import Checkpoint; c = Checkpoint('/tmp/ck.json'); c.advance('acme', '1790000000000000001'); print(open('/tmp/ck.json').read())"
"""
from __future__ import annotations

import json
import os
import tempfile
import threading

VERSION = 1


class CheckpointError(ValueError):
    """The checkpoint file exists but cannot be read; the message says which file and why."""


class Checkpoint:
    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._since: dict[str, str] = self._load()

    def _load(self) -> dict[str, str]:
        if not os.path.exists(self.path):
            return {}
        try:
            with open(self.path, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"checkpoint {self.path} is unreadable: {e}") from None
        since = doc.get("since_id") if isinstance(doc, dict) else None
        if not isinstance(since, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and v.isdigit() for k, v in since.items()):
            raise CheckpointError(f"checkpoint {self.path} is not a sentiment-pulse checkpoint "
                                  "(expected {\"since_id\": {keyword: id}})")
        return dict(since)

    def get(self, keyword: str) -> str | None:
        with self._lock:
            return self._since.get(keyword)

    def snapshot(self) -> dict[str, str]:
        with self._lock:
            return dict(self._since)

    def advance(self, keyword: str, post_id: str) -> bool:
        """Moves `keyword` to `post_id` if newer, and persists; returns whether it moved."""
        with self._lock:
            old = self._since.get(keyword)
            if old is not None and int(old) >= int(post_id):
                return False
            self._since[keyword] = str(post_id)
            self._write(self._since)
            return True

    def _write(self, since: dict[str, str]) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": VERSION, "since_id": since}, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        # The rename is durable only once the directory entry is on disk.
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
