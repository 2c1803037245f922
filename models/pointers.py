"""A registry's pointer files: their name format and how one is read (models/registry.py has the rest).

    REGISTRY/pointers/<stamp>-<version>.json   {"version", "location", "promoted_at", "previous", "reason"}

Apart from models/registry.py so that the model handler (models/savedmodel.py), which reads a
pointer when the running job swaps models, and the registry, which vets a version with the
handler's loader before promoting it, do not import each other. Only the standard library and
Beam's FileSystems here.
"""
from __future__ import annotations

import json
import re
from typing import NamedTuple

_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_POINTER_NAME = re.compile(r"^(\d{8}T\d{12}Z)-(.+)\.json$")


class RegistryError(Exception):
    """The registry cannot be read or written as asked (one sentence, fit for a one-line error)."""


class Pointer(NamedTuple):
    """One promotion: `version` became current at `promoted_at`, served from `location`."""

    version: str
    location: str
    promoted_at: str
    previous: str | None
    path: str
    reason: dict


def _one_line(error) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(error).__name__


def basename(path: str) -> str:
    """A path's file name (local or URI)."""
    return path.rstrip("/").rsplit("/", 1)[-1]


def _read(path: str) -> bytes:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type="uncompressed") as f:
        return f.read()


def read_pointer(path: str) -> Pointer:
    """One pointer file -> Pointer; RegistryError (one sentence) when it cannot be read or parsed."""
    try:
        body = json.loads(_read(path).decode("utf-8"))
    except Exception as e:  # noqa: BLE001  (missing, unreadable, not UTF-8, not JSON: one verdict)
        raise RegistryError(f"pointer {path} is unreadable: {_one_line(e)}") from None
    if not isinstance(body, dict) or not isinstance(body.get("version"), str) \
            or not isinstance(body.get("location"), str):
        raise RegistryError(f"pointer {path} is unreadable: it needs a JSON object with version and location")
    reason = body.get("reason")
    previous = body.get("previous")
    return Pointer(version=body["version"], location=body["location"],
                   promoted_at=str(body.get("promoted_at") or ""),
                   previous=previous if isinstance(previous, str) else None,
                   path=path, reason=reason if isinstance(reason, dict) else {})


def is_pointer_name(path: str) -> bool:
    """True when a path's file name has the pointer format `<stamp>-<version>.json` (a promotion's
    name; `notes.json` or any other file in pointers/ is not a pointer)."""
    match = _POINTER_NAME.match(basename(path))
    return match is not None and _VERSION.match(match.group(2)) is not None


