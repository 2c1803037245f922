"""Where a model lives, resolved on the machine that loads it.

A `--model` value names a location; the handler that RunInference pickles to the workers
carries that name, never a path of the launching machine, and turns it into a local
directory in `load_model()`, on the worker:

- `bundled`: the model committed in this package (`models/bundled/`), found inside the
  package *as installed where it is loaded* (site-packages on a Dataflow worker, /pipeline
  in the worker image, the source tree locally).
- a URI with a scheme Beam's `FileSystems` knows (`gs://bucket/models/sentiment`, `s3://`,
  ...): copied once per machine into a local cache (`PULSE_MODEL_CACHE`, default
  `<tmp>/sentiment-pulse-models/<hash of the URI>`) through `FileSystems`, then loaded from
  there. The copy is written under a temporary name and renamed into place, so processes
  that fetch at the same time never load half a model.
- a local directory: loaded where it is. Only the launching machine has it, so `pulse run`
  refuses it for runners whose workers run elsewhere (pipelines/runners.py).

Only the standard library and Beam's FileSystems here: handlers, the Hugging Face path and
tfx-bsl serving all import this module, and it imports none of them.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid

BUNDLED = "bundled"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
CACHE_ENV = "PULSE_MODEL_CACHE"
_COMPLETE = ".pulse-complete"  # written last into a fetched copy


def bundled_dir() -> str:
    """The bundled model inside this package, wherever the package is installed."""
    return os.path.join(_PACKAGE_DIR, BUNDLED)


def scheme(location: str) -> str | None:
    """The FileSystems scheme of a location (`gs`, `s3`, ...), None for a local path or `bundled`."""
    from apache_beam.io.filesystems import FileSystems

    return None if location == BUNDLED else FileSystems.get_scheme(location)


def is_remote(location: str) -> bool:
    return scheme(location) is not None


def is_local_path(location: str) -> bool:
    """A directory of this machine (not `bundled`, not a URI): what remote workers cannot read."""
    return location != BUNDLED and not is_remote(location)


def _join(location: str, *names: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.join(location.rstrip("/"), *names)


def list_files(location: str) -> dict[str, int]:
    """Every file under a model location -> its size in bytes, by path relative to the location.

    Raises FileNotFoundError when nothing is there (one sentence, the location in it).
    """
    from apache_beam.io.filesystem import BeamIOError
    from apache_beam.io.filesystems import FileSystems

    root = location.rstrip("/")
    try:
        [result] = FileSystems.match([_join(root, "**")])
    except BeamIOError as e:
        raise FileNotFoundError(f"cannot list model directory {location}: {e}") from None
    files = {}
    for meta in result.metadata_list:
        relative = meta.path[len(root):].lstrip("/")
        if relative and not relative.endswith("/"):
            files[relative] = meta.size_in_bytes
    if not files:
        raise FileNotFoundError(f"model directory {location} does not exist or is empty")
    return files


def read_bytes(location: str, name: str) -> bytes:
    """One file of a model location, read through FileSystems."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(_join(location, name), compression_type="uncompressed") as f:
        return f.read()


def cache_root() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(tempfile.gettempdir(), "sentiment-pulse-models")


def fetch(location: str, dest_root: str | None = None) -> str:
    """Copy a model directory from any FileSystems location into the local cache; returns the copy.

    A complete copy already in the cache is reused (one download per machine, whatever the
    number of SDK processes). Files are copied in chunks, never read whole into memory.
    """
    from apache_beam.io.filesystems import FileSystems

    root = dest_root or cache_root()
    digest = hashlib.sha256(location.rstrip("/").encode("utf-8")).hexdigest()[:16]
    final = os.path.join(root, digest)
    if os.path.exists(os.path.join(final, _COMPLETE)):
        return final
    os.makedirs(root, exist_ok=True)
    staging = os.path.join(root, f".{digest}.{uuid.uuid4().hex}")
    try:
        for relative in sorted(list_files(location)):
            target = os.path.join(staging, *relative.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with FileSystems.open(_join(location, relative), compression_type="uncompressed") as src, \
                    open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        with open(os.path.join(staging, _COMPLETE), "w", encoding="utf-8") as f:
            f.write(location)
        try:
            os.rename(staging, final)
        except OSError:  # another process put a complete copy there first
            if not os.path.exists(os.path.join(final, _COMPLETE)):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def local_dir(location: str) -> str:
    """The local directory to load a model from, on the machine that calls this (a worker)."""
    if location == BUNDLED:
        path = bundled_dir()
        if not os.path.isdir(path):
            raise FileNotFoundError(f"the bundled model is missing from the installed package: {path} "
                                    "(was the package built without its package data?)")
        return path
    if is_remote(location):
        return fetch(location)
    return location


def fsync_directory(path: str) -> None:
    """Make a rename in a local directory durable (fsync the directory); a platform that cannot
    open directories (Windows) is left as it is: the rename is durable enough there."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
