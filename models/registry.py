"""The model registry: every model version the job may serve, and a pointer naming the current one.

    pulse registry init    --registry registry            # empty: add the bundled model, promote it
    pulse registry list    --registry gs://bucket/registry
    pulse registry promote 1.5c74f88237 --registry registry --reason "roll back"

A registry is a directory, local or any URI Beam's `FileSystems` reads (`gs://...`):

    REGISTRY/versions/<version>/                 a contract SavedModel + model.json ("version" == <version>)
    REGISTRY/pointers/<stamp>-<version>.json     one file per promotion, never rewritten

`<stamp>` is the promotion's UTC time as `%Y%m%dT%H%M%S%fZ`, so file names sort in time order
(a stamp that would not sort after the greatest one present is moved 1 microsecond past it).
A pointer's body is JSON: `version`, `location` (absolute path or URI of the version
directory), `promoted_at` (RFC 3339), `previous` (the version current before, or null) and
`reason` (a dict: who or what promoted it, and why). The current model is the readable pointer
with the greatest file name; rolling back or forward is one more promotion, so the history stays.

A version is checked before it can become current (`promote`, `init`, retrain's promotion):
models/savedmodel.py `vet` loads it, scores a probe batch and compares the output with its
model.json (classes, languages, a spec the job can read); one that fails is refused with one
sentence and never reaches a job.

Damage never stops the registry: a file in pointers/ that is not a pointer (`notes.json`, a
name without the stamp) or cannot be read (truncated, not JSON) is reported by `pulse registry
list` (`problems`) and skipped by everything else: `current`, `history`, `promote` (a roll back
too), the job's watch and `pulse run --model registry:`.

Readers never see half a file: locally a pointer is written under a name that does not match
`*.json` (`.tmp-<uuid>.json.partial`) and renamed into place; a version is copied into
`versions/.tmp-<uuid>/` and renamed to `versions/<version>/`. On object stores (gs://) an
object appears whole when its write closes, so pointers are written in place, and a version's
model.json is written after every other file (a version without model.json is not listed,
and is copied again by the next `add_version`).

Only the standard library, Beam's FileSystems and models.locations here: the running job's
hot swap imports this module.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import uuid
from typing import NamedTuple, Sequence

from models import locations
from models.pointers import _POINTER_NAME, _VERSION, Pointer, RegistryError  # noqa: F401  (re-exported)
from models.pointers import _one_line, _read, is_pointer_name, read_pointer  # noqa: F401
from models.pointers import basename as _basename

SPEC_FILE = "model.json"
VERSIONS = "versions"
POINTERS = "pointers"
STAMP_FORMAT = "%Y%m%dT%H%M%S%fZ"
UTC = dt.timezone.utc


# ---- paths ------------------------------------------------------------------------------------


def _remote(registry: str) -> bool:
    return locations.is_remote(registry)


def _root(registry: str) -> str:
    if not registry or not str(registry).strip():
        raise RegistryError("a registry needs a location: a directory or a URI such as gs://bucket/registry")
    registry = str(registry).rstrip("/") or "/"
    return registry if _remote(registry) else os.path.abspath(registry)


def _join(base: str, *names: str) -> str:
    if _remote(base):
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.join(base.rstrip("/"), *names)
    return os.path.join(base, *names)


def pointer_glob(registry: str) -> str:
    """The pattern of the finished pointer files (a pointer being written never matches it)."""
    return f"{str(registry).rstrip('/')}/{POINTERS}/*.json"


def version_location(registry: str, version: str) -> str:
    """Absolute path or URI of a version's directory."""
    return _join(_root(registry), VERSIONS, check_version(version))


def check_version(version: str) -> str:
    """A version usable as a directory name (letters, digits, . _ + -); RegistryError otherwise."""
    if not isinstance(version, str) or not _VERSION.match(version):
        raise RegistryError(f"model version {str(version)[:60]!r} is not usable in a registry "
                            "(letters, digits, '.', '_', '+', '-'; at most 128 characters)")
    return version


def _match(pattern: str) -> list[tuple[str, int]]:
    """Files matching a glob -> [(path, size)], [] when nothing (or no directory) matches."""
    from apache_beam.io.filesystem import BeamIOError
    from apache_beam.io.filesystems import FileSystems

    try:
        [result] = FileSystems.match([pattern])
    except BeamIOError as e:
        errors = getattr(e, "exception_details", None) or {}
        if any("No files found" in str(err) or "not found" in str(err).lower() for err in errors.values()) \
                or not errors:
            return []
        raise RegistryError(f"cannot list {pattern}: {_one_line(next(iter(errors.values())))}") from None
    except (OSError, ValueError) as e:
        raise RegistryError(f"cannot list {pattern}: {_one_line(e)}") from None
    return [(m.path, m.size_in_bytes) for m in result.metadata_list]


# ---- pointers -----------------------------------------------------------------------------------


def pointer_files(registry: str) -> list[str]:
    """The registry's pointer files (by name: readable or not), oldest first (by file name)."""
    paths = [p for p, _ in _match(pointer_glob(_root(registry)))]
    return sorted((p for p in paths if is_pointer_name(p)), key=_basename)


def scan(registry: str) -> tuple[list[Pointer], list[tuple[str, str]]]:
    """The readable promotions, oldest first, and the problems in pointers/: [(path, why)] for each
    file there that is not a pointer or cannot be read (everything but `list` skips them)."""
    root = _root(registry)
    pointers, problems = [], []
    names = set(pointer_files(root))
    for path, _ in _match(_join(root, POINTERS, "*")):
        name = _basename(path)
        if path not in names and not name.startswith("."):  # .tmp-*.partial: a promotion being written
            problems.append((path, "not a pointer (a pointer is named <stamp>-<version>.json)"))
    for path in sorted(names, key=_basename):
        try:
            pointers.append(read_pointer(path))
        except RegistryError as e:
            problems.append((path, str(e)))
    return pointers, sorted(problems)


def current(registry: str) -> Pointer | None:
    """The current model: the readable pointer with the greatest file name (damaged ones are
    skipped); None for a registry with no readable pointer."""
    for path in reversed(pointer_files(registry)):
        try:
            return read_pointer(path)
        except RegistryError:
            continue
    return None


def history(registry: str) -> list[Pointer]:
    """Every readable promotion, oldest first."""
    return scan(registry)[0]


def _stamp(now: dt.datetime, after: str | None) -> str:
    stamp = now.astimezone(UTC).strftime(STAMP_FORMAT)
    if after is not None and stamp <= after:
        # A clock behind the last promotion (another machine), or the same microsecond.
        previous = dt.datetime.strptime(after, STAMP_FORMAT).replace(tzinfo=UTC)
        stamp = (previous + dt.timedelta(microseconds=1)).strftime(STAMP_FORMAT)
    return stamp


_VETTED: set[str] = set()  # locations that passed `vet` in this process (a version never changes)


def vet_version(location: str, version: str) -> None:
    """Load the version at `location`, score a probe batch, compare with its model.json
    (models/savedmodel.py `vet`); RegistryError (one sentence) when a job could not use it."""
    if location in _VETTED:
        return
    from models.savedmodel import vet

    try:
        spec = vet(location)
    except ValueError as e:
        raise RegistryError(f"version {version} is refused: {_one_line(e)}") from None
    if spec.version != version:
        raise RegistryError(f"version {version} is refused: its {SPEC_FILE} names version {spec.version}")
    _VETTED.add(location)


_REFUSED_AT_LAUNCH: dict[str, str] = {}  # location -> why vet_version refused it (a version never changes)


def serving(registry: str) -> tuple[Pointer | None, list[tuple[Pointer, str]]]:
    """The version a job launched now serves -> (its pointer or None, [(refused pointer, why)], newest first).

    The current version, when it passes `vet_version`; else the newest earlier promotion that does,
    which is what a running job keeps scoring with after a promotion it cannot load. A version
    can reach the pointers unvetted (`promote(check=False)`, a pointer written by hand, a version
    directory damaged after its promotion): a job launched then starts on the last good version
    instead of failing on every bundle. Each version is loaded at most once per process.
    """
    refused: list[tuple[Pointer, str]] = []
    seen: set[str] = set()
    for pointer in reversed(history(registry)):
        if pointer.location in seen:
            continue
        seen.add(pointer.location)
        why = _REFUSED_AT_LAUNCH.get(pointer.location)
        if why is None:
            try:
                vet_version(pointer.location, pointer.version)
                return pointer, refused
            except RegistryError as e:
                why = _REFUSED_AT_LAUNCH.setdefault(pointer.location, str(e))
        refused.append((pointer, why))
    return None, refused


def promote(registry: str, version: str, reason: dict, *, check: bool = True) -> Pointer:
    """Make `version` (already in versions/) the current model: write one new pointer -> it.

    With `check` (turned off only by tests of the job's own checks) the version is vetted first
    (`vet_version`). RegistryError when the version is not in the registry, fails the check, or
    the pointer cannot be written.
    """
    root = _root(registry)
    check_version(version)
    if version not in versions(root):
        known = ", ".join(versions(root)) or "none"
        raise RegistryError(f"no version {version} in {root} (versions: {known})")
    if not isinstance(reason, dict):
        raise RegistryError("a promotion's reason must be a dict (what promoted it and why)")
    if check:
        vet_version(version_location(root, version), version)
    files = pointer_files(root)  # damaged ones too: a new stamp sorts after every name present
    last = _POINTER_NAME.match(_basename(files[-1])).group(1) if files else None
    now_pointer = current(root)
    previous = now_pointer.version if now_pointer else None
    now = dt.datetime.now(UTC)
    stamp = _stamp(now, last)
    body = {"version": version, "location": version_location(root, version),
            "promoted_at": now.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "previous": previous, "reason": reason}
    data = (json.dumps(body, indent=2, sort_keys=False, default=str) + "\n").encode("utf-8")
    name = f"{stamp}-{version}.json"
    path = _join(root, POINTERS, name)
    try:
        if _remote(root):
            _write_remote(path, data)  # an object appears whole when its write closes
        else:
            folder = os.path.join(root, POINTERS)
            os.makedirs(folder, exist_ok=True)
            temp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}.json.partial")
            try:
                with open(temp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.rename(temp, path)
            finally:
                if os.path.exists(temp):
                    os.unlink(temp)
            locations.fsync_directory(folder)
    except RegistryError:
        raise
    except Exception as e:  # noqa: BLE001
        raise RegistryError(f"cannot write pointer {path}: {_one_line(e)}") from None
    return Pointer(version, body["location"], body["promoted_at"], previous, path, reason)


def _write_remote(path: str, data: bytes) -> None:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path, compression_type="uncompressed") as f:
        f.write(data)


# ---- versions -----------------------------------------------------------------------------------


def versions(registry: str) -> list[str]:
    """The complete versions (a directory whose model.json names it), sorted by name."""
    root = _root(registry)
    found = []
    for path, _ in _match(_join(root, VERSIONS, "*", SPEC_FILE)):
        name = path.rstrip("/").rsplit("/", 2)[-2]
        if not name.startswith(".") and _VERSION.match(name):
            found.append(name)
    return sorted(set(found))


def read_spec(location: str) -> dict:
    """model.json of a model directory (local or remote) -> dict; RegistryError when unreadable."""
    try:
        spec = json.loads(locations.read_bytes(location, SPEC_FILE).decode("utf-8"))
    except Exception as e:  # noqa: BLE001
        raise RegistryError(f"{location} has no readable {SPEC_FILE}: {_one_line(e)}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("version"), str):
        raise RegistryError(f"{location}/{SPEC_FILE} names no version")
    return spec


def add_version(registry: str, model_dir: str) -> str:
    """Copy a model directory (local or remote, with model.json) into versions/<its version>/ ->
    that directory's location. A complete copy of the version already there is kept."""
    root = _root(registry)
    spec = read_spec(model_dir)
    version = check_version(spec["version"])
    target = version_location(root, version)
    try:
        files = locations.list_files(model_dir)
    except FileNotFoundError as e:
        raise RegistryError(str(e)) from None
    if version in versions(root):
        present = set(locations.list_files(target))
        if present != set(files):
            raise RegistryError(f"version {version} is already in {root} with other files: "
                                "a version's contents never change (export under a new version)")
        return target
    try:
        if _remote(root):
            # model.json last: a version without it is not listed, and is copied again next time.
            for relative in sorted(files, key=lambda r: (r == SPEC_FILE, r)):
                _copy(_join(model_dir, relative) if _remote(model_dir) else os.path.join(model_dir, relative),
                      _join(target, relative))
        else:
            parent = os.path.join(root, VERSIONS)
            os.makedirs(parent, exist_ok=True)
            staging = os.path.join(parent, f".tmp-{uuid.uuid4().hex}")
            try:
                for relative in sorted(files):
                    source = _join(model_dir, relative) if _remote(model_dir) else \
                        os.path.join(model_dir, *relative.split("/"))
                    dest = os.path.join(staging, *relative.split("/"))
                    os.makedirs(os.path.dirname(dest), exist_ok=True)
                    _copy(source, dest)
                os.chmod(staging, 0o755)
                if os.path.isdir(target) and not os.path.exists(os.path.join(target, SPEC_FILE)):
                    shutil.rmtree(target)  # an incomplete copy of an older layout: never listed
                try:
                    os.rename(staging, target)
                except OSError:
                    if version not in versions(root):  # another process put it there first: fine
                        raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except RegistryError:
        raise
    except Exception as e:  # noqa: BLE001
        raise RegistryError(f"cannot add version {version} to {root}: {_one_line(e)}") from None
    return target


def _copy(source: str, dest: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(source, compression_type="uncompressed") as src:
        if _remote(dest):
            with FileSystems.create(dest, compression_type="uncompressed") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        else:
            with open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def init(registry: str, model: str = locations.BUNDLED, *, check: bool = True) -> Pointer:
    """An empty registry: add `model` (bundled, a directory or a URI) and promote it -> its pointer.
    A registry that has a current model: that pointer, untouched."""
    root = _root(registry)
    found = current(root)
    if found is not None:
        return found
    damaged = pointer_files(root)
    if damaged:  # promotions were made, none can be read: not an empty registry to fill
        _, problems = scan(root)
        raise RegistryError(f"no readable pointer in {root} ({len(damaged)} damaged, e.g. {problems[0][1]}); "
                            "add a version and promote it with pulse registry promote")
    try:
        source = locations.local_dir(model)
    except FileNotFoundError as e:
        raise RegistryError(_one_line(e)) from None
    if not locations.is_remote(source) and not os.path.isdir(source):
        raise RegistryError(f"no model directory {model}")
    version = read_spec(source)["version"]
    add_version(root, source)
    return promote(root, version, {"action": "init", "source": model,
                                   "why": "the registry was empty: its first model"}, check=check)


# ---- CLI ----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pulse registry", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_init = sub.add_parser("init", help="an empty registry: add a model (default: bundled) and promote it")
    p_list = sub.add_parser("list", help="the versions, the current one marked, and the promotions")
    p_promote = sub.add_parser("promote", help="make VERSION current (roll back or forward by hand)")
    p_promote.add_argument("version")
    p_promote.add_argument("--reason", default="promoted by hand", help="why (kept in the pointer)")
    p_init.add_argument("--model", default=locations.BUNDLED, help="bundled, a model directory or a URI")
    for p in (p_init, p_list, p_promote):
        p.add_argument("--registry", default="registry", help="registry directory or URI (gs://...)")
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            pointer = init(args.registry, args.model)
            print(f"current: {pointer.version} ({pointer.location})")
        elif args.command == "promote":
            if not _exists(args.registry):
                raise RegistryError(f"no registry at {args.registry}: create one with pulse registry init")
            before = current(args.registry)
            pointer = promote(args.registry, args.version,
                              {"action": "manual", "why": args.reason, "user": _user()})
            print(f"current: {pointer.version} (was {before.version if before else 'none'})")
        else:
            if not _exists(args.registry):
                raise RegistryError(f"no registry at {args.registry}: create one with pulse registry init")
            print(listing(args.registry))
    except RegistryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _exists(registry: str) -> bool:
    if _remote(registry):
        return bool(_match(_join(registry.rstrip("/"), "*", "*")))
    return os.path.isdir(registry)


def _user() -> str:
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # noqa: BLE001
        return "unknown"


def listing(registry: str) -> str:
    """Versions (current marked with '*') and the promotions, as text."""
    now = current(registry)
    lines = ["versions:"]
    for version in versions(registry):
        mark = "*" if now is not None and now.version == version else " "
        lines.append(f"  {mark} {version}")
    pointers, problems = scan(registry)
    lines.append("promotions (oldest first):")
    for p in pointers:
        why = p.reason.get("why") or p.reason.get("decision") or ""
        lines.append(f"  {p.promoted_at}  {p.version:<16} from {p.previous or '-':<16} {why}")
    if problems:
        lines.append("skipped in pointers/ (not read by promote, roll back or a job):")
        for path, why in problems:
            lines.append(f"  ! {_basename(path)}: {why}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
