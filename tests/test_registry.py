"""models/registry.py: versions and pointers, on a local directory and through Beam's FileSystems.

The remote registry runs on `pulsetest://` (tests/test_model_locations.py: a FileSystem that maps
onto a local folder, found by Beam through its scheme); this module lends it the one write it
lacks, `create`, for the length of a test, as an object store writes: the object appears when
the write closes.
"""
import datetime as dt
import glob
import json
import os
import shutil
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models import locations
from models import registry
from models.contracts import ModelSpec
from pipelines import cli
from tests.test_model_locations import BUCKET, PulseTestFileSystem, bucket  # noqa: F401  (fixture)

BUNDLED_VERSION = json.load(open(os.path.join(locations.bundled_dir(), "model.json")))["version"]


@pytest.fixture
def writable_bucket(bucket, monkeypatch):  # noqa: F811
    def create(self, path, mime_type="application/octet-stream", compression_type="auto"):
        return self._local.create(self._to_local(path), mime_type, compression_type)

    monkeypatch.setattr(PulseTestFileSystem, "create", create)
    return bucket


def copy_model(source, dest, version):
    """A copy of a model directory whose model.json names `version`."""
    shutil.copytree(source, dest)
    spec = json.load(open(os.path.join(dest, "model.json")))
    spec["version"] = version
    json.dump(spec, open(os.path.join(dest, "model.json"), "w"))
    return str(dest)


def five_class_copy(source, dest, version):
    """A copy whose model.json declares five classes; the SavedModel outputs three."""
    five = copy_model(source, dest, version)
    spec = json.load(open(os.path.join(five, "model.json")))
    spec.update(classes=["1", "2", "3", "4", "5"], class_scores=[-1, -0.5, 0, 0.5, 1],
                class_labels=["negative", "negative", "neutral", "positive", "positive"])
    json.dump(spec, open(os.path.join(five, "model.json"), "w"))
    return five


def cut_copy(source, dest, version):
    """A copy whose SavedModel is cut short (its model.json is fine)."""
    cut = copy_model(source, dest, version)
    open(os.path.join(cut, "saved_model.pb"), "wb").write(b"\x08\x01")
    return cut


def pointer_bodies(reg):
    return [json.load(open(p)) for p in sorted(glob.glob(registry.pointer_glob(reg)))]


def test_init_adds_the_bundled_model_and_points_at_it(tmp_path):
    reg = str(tmp_path / "registry")
    assert registry.current(reg) is None and registry.versions(reg) == []
    pointer = registry.init(reg)
    assert pointer.version == BUNDLED_VERSION and pointer.previous is None
    assert registry.versions(reg) == [BUNDLED_VERSION]
    assert pointer.location == os.path.join(os.path.abspath(reg), "versions", BUNDLED_VERSION)
    assert ModelSpec.load(pointer.location).version == BUNDLED_VERSION
    # At the sink: one pointer file, named <stamp>-<version>.json, with the documented body.
    [path] = glob.glob(registry.pointer_glob(reg))
    stamp, _, rest = os.path.basename(path).partition("-")
    assert rest == f"{BUNDLED_VERSION}.json"
    assert dt.datetime.strptime(stamp, registry.STAMP_FORMAT)
    body = json.load(open(path))
    assert set(body) == {"version", "location", "promoted_at", "previous", "reason"}
    assert body["version"] == BUNDLED_VERSION and body["location"] == pointer.location
    assert dt.datetime.fromisoformat(body["promoted_at"].replace("Z", "+00:00")).tzinfo is not None
    assert body["previous"] is None and body["reason"]["action"] == "init"
    assert registry.current(reg) == pointer
    # A registry with a current model is left as it is.
    assert registry.init(reg, "/nowhere/at/all") == pointer
    assert len(glob.glob(registry.pointer_glob(reg))) == 1


def test_promote_rolls_back_and_forward_and_keeps_the_history(tmp_path, tiny_bundled_model):
    reg = str(tmp_path / "registry")
    first = registry.init(reg, tiny_bundled_model)
    second = copy_model(tiny_bundled_model, tmp_path / "second", "2.second")
    location = registry.add_version(reg, second)
    assert registry.versions(reg) == sorted([first.version, "2.second"])
    assert registry.current(reg).version == first.version  # adding is not promoting
    forward = registry.promote(reg, "2.second", {"why": "better"})
    assert forward.previous == first.version and forward.location == location
    assert registry.current(reg) == forward
    back = registry.promote(reg, first.version, {"why": "roll back"})
    assert registry.current(reg).version == first.version and back.previous == "2.second"
    bodies = pointer_bodies(reg)
    assert [b["version"] for b in bodies] == [first.version, "2.second", first.version]
    assert [b["previous"] for b in bodies] == [None, first.version, "2.second"]
    assert [p.version for p in registry.history(reg)] == [b["version"] for b in bodies]
    # Pointers are never rewritten: the earlier files are byte for byte what they were.
    with pytest.raises(registry.RegistryError, match="no version 9.nope in"):
        registry.promote(reg, "9.nope", {})
    assert pointer_bodies(reg) == bodies


def test_add_version_is_idempotent_and_never_changes_a_version(tmp_path, tiny_bundled_model):
    reg = str(tmp_path / "registry")
    location = registry.add_version(reg, tiny_bundled_model)
    pb = os.path.join(location, "saved_model.pb")
    before = os.stat(pb).st_mtime_ns
    assert registry.add_version(reg, tiny_bundled_model) == location
    assert os.stat(pb).st_mtime_ns == before
    assert not [n for n in os.listdir(os.path.join(reg, "versions")) if n.startswith(".")]  # no staging left
    other = copy_model(tiny_bundled_model, tmp_path / "other", "tiny-test")
    open(os.path.join(other, "extra.txt"), "w").write("x")
    with pytest.raises(registry.RegistryError, match="already in .* with other files"):
        registry.add_version(reg, other)
    bad = copy_model(tiny_bundled_model, tmp_path / "bad", "../escape")
    with pytest.raises(registry.RegistryError, match="not usable in a registry"):
        registry.add_version(reg, bad)


def test_a_reader_polling_the_pointer_glob_never_sees_a_partial_pointer(tmp_path, tiny_bundled_model):
    reg = str(tmp_path / "registry")
    registry.init(reg, tiny_bundled_model)
    version = registry.current(reg).version
    big_reason = {"why": "x" * 200_000}  # a pointer far larger than one write() of a naive writer
    stop, problems, reads = threading.Event(), [], [0]

    def reader():
        while not stop.is_set():
            for path in glob.glob(registry.pointer_glob(reg)):
                try:
                    body = json.load(open(path))
                    assert body["version"] == version
                except FileNotFoundError:
                    continue
                except Exception as e:  # noqa: BLE001
                    problems.append(f"{path}: {e}")
                reads[0] += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(60):
            registry.promote(reg, version, big_reason)
    finally:
        stop.set()
        thread.join()
    assert problems == [] and reads[0] > 0
    assert len(glob.glob(registry.pointer_glob(reg))) == 61
    assert not [n for n in os.listdir(os.path.join(reg, "pointers")) if not n.endswith(".json")]
    # Negative control: a pointer written in place is visible half-written to the same reader.
    naive = os.path.join(reg, "pointers", "99999999T999999999999Z-naive.json")
    with open(naive, "w") as f:
        f.write('{"version": "nai')
        f.flush()
        assert naive in glob.glob(registry.pointer_glob(reg))
        with pytest.raises(json.JSONDecodeError):
            json.load(open(naive))
        with pytest.raises(registry.RegistryError, match="unreadable"):
            registry.read_pointer(naive)
        assert registry.current(reg).version == version  # a reader of the registry skips it


def test_an_unreadable_pointer_is_a_one_sentence_error(tmp_path, tiny_bundled_model):
    reg = str(tmp_path / "registry")
    registry.init(reg, tiny_bundled_model)
    bad = os.path.join(reg, "pointers", "29990101T000000000000Z-x.json")
    open(bad, "w").write("[1, 2")
    with pytest.raises(registry.RegistryError) as err:
        registry.read_pointer(bad)
    assert bad in str(err.value) and "\n" not in str(err.value)
    open(bad, "w").write('{"version": 3}')
    with pytest.raises(registry.RegistryError, match="needs a JSON object with version and location"):
        registry.read_pointer(bad)
    with pytest.raises(registry.RegistryError, match="unreadable"):
        registry.read_pointer(os.path.join(reg, "pointers", "missing.json"))


def test_a_damaged_registry_is_reported_by_list_and_skipped_by_everything_else(tmp_path, tiny_bundled_model,
                                                                               capsys):
    reg = str(tmp_path / "registry")
    registry.init(reg, tiny_bundled_model)
    registry.add_version(reg, copy_model(tiny_bundled_model, tmp_path / "second", "2.second"))
    registry.promote(reg, "2.second", {"why": "forward"})
    pointers = os.path.join(reg, "pointers")
    truncated = os.path.join(pointers, "29990101T000000000000Z-2.second.json")
    open(truncated, "w").write('{"version": "2.sec')  # a copy cut short, sorting after every stamp
    open(os.path.join(pointers, "notes.json"), "w").write('{"version": "x", "location": "/nowhere"}')
    open(os.path.join(pointers, "zz-README.txt"), "w").write("who promoted what")
    # Everything but list skips them: current, history, the job's launch, promote and roll back.
    assert registry.current(reg).version == "2.second"
    assert [p.version for p in registry.history(reg)] == ["tiny-test", "2.second"]
    from models.handlers import resolve_model
    assert resolve_model(f"registry:{reg}").location == registry.version_location(reg, "2.second")
    assert cli.main(["registry", "promote", "tiny-test", "--registry", reg, "--reason", "roll back"]) == 0
    assert "current: tiny-test (was 2.second)" in capsys.readouterr().out
    back = registry.current(reg)
    assert back.version == "tiny-test" and back.previous == "2.second"
    assert os.path.basename(back.path) > os.path.basename(truncated)  # still the newest name
    assert cli.main(["registry", "list", "--registry", reg]) == 0
    out = capsys.readouterr().out
    assert "* tiny-test" in out
    skipped = out.split("skipped in pointers/")[1]
    assert "! 29990101T000000000000Z-2.second.json: pointer" in skipped and "unreadable" in skipped
    assert "! notes.json: not a pointer" in skipped and "! zz-README.txt: not a pointer" in skipped
    _, problems = registry.scan(reg)
    assert len(problems) == 3


def test_the_pointer_name_filter(tmp_path):
    assert registry.is_pointer_name("/r/pointers/20261203T101010123456Z-1.5c74f88237.json")
    assert not registry.is_pointer_name("/r/pointers/notes.json")
    assert not registry.is_pointer_name("/r/pointers/20261203T101010123456Z-.json")
    assert not registry.is_pointer_name("/r/pointers/.tmp-abc.json.partial")
    assert not registry.is_pointer_name("/r/pointers/20261203T101010Z-v1.json")


def test_promote_refuses_a_version_a_job_could_not_use(tmp_path, tiny_bundled_model, capsys):
    reg = str(tmp_path / "registry")
    registry.init(reg, tiny_bundled_model)
    registry.add_version(reg, five_class_copy(tiny_bundled_model, tmp_path / "five", "5.classes"))
    registry.add_version(reg, cut_copy(tiny_bundled_model, tmp_path / "cut", "6.cut"))
    # languages the job cannot read.
    odd = copy_model(tiny_bundled_model, tmp_path / "odd", "7.lang")
    spec = json.load(open(os.path.join(odd, "model.json")))
    spec["languages"] = ["English!"]
    json.dump(spec, open(os.path.join(odd, "model.json"), "w"))
    registry.add_version(reg, odd)
    for version, why in (("5.classes", "declares 5 classes, the model outputs 3"),
                         ("6.cut", "does not load as a SavedModel"), ("7.lang", "not a language code")):
        assert cli.main(["registry", "promote", version, "--registry", reg]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: version {version} is refused: ") and why in err and err.count("\n") == 1
        assert registry.current(reg).version == "tiny-test"  # never reaches a job
    assert len(registry.history(reg)) == 1


def test_a_job_launched_after_a_forced_broken_promotion_starts_on_the_last_good_version(
        tmp_path, tiny_bundled_model, caplog, capsys):
    """`promote(check=False)`, a pointer written by hand or a version damaged after its promotion
    can make an unusable version current; a job launched then starts on the newest promotion that
    loads (what a running job keeps scoring with), says so once, and refuses only when none loads."""
    from models.handlers import resolve_model
    from pipelines import sentiment_pipeline

    reg = str(tmp_path / "registry")
    registry.init(reg, tiny_bundled_model)
    cut = cut_copy(tiny_bundled_model, tmp_path / "cut", "6.cut")
    registry.add_version(reg, cut)
    registry.add_version(reg, five_class_copy(tiny_bundled_model, tmp_path / "five", "5.classes"))
    registry.promote(reg, "6.cut", {"why": "forced"}, check=False)
    registry.promote(reg, "5.classes", {"why": "forced"}, check=False)
    assert registry.current(reg).version == "5.classes"
    with caplog.at_level("ERROR", logger="models.handlers"):
        assert resolve_model(f"registry:{reg}").location == registry.version_location(reg, "tiny-test")
        assert resolve_model(f"registry:{reg}").location == registry.version_location(reg, "tiny-test")
    [record] = [r for r in caplog.records if r.name == "models.handlers"]  # once per process
    message = record.getMessage()
    assert "version 5.classes is refused" in message and "declares 5 classes, the model outputs 3" in message
    assert "version 6.cut is refused" in message and "does not load as a SavedModel" in message
    assert "the job starts on version tiny-test" in message
    pointer, refused = registry.serving(reg)
    assert pointer.version == "tiny-test" and [p.version for p, _ in refused] == ["5.classes", "6.cut"]

    # A registry none of whose promotions loads: `pulse run` refuses in one line, exit 2.
    only_cut = str(tmp_path / "only_cut")
    registry.init(only_cut, cut, check=False)
    with pytest.raises(ValueError, match=r"no promoted version can serve \(version 6.cut is refused: "):
        resolve_model(f"registry:{only_cut}")
    sample = tmp_path / "in.jsonl"
    sample.write_text('{"id": "1", "text": "hi"}\n')
    code = sentiment_pipeline.main(["--input", str(sample), "--output", str(tmp_path / "out"),
                                    "--model", f"registry:{only_cut}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no promoted version can serve" in err[0], err


def test_a_remote_registry_works_through_filesystems(writable_bucket, tiny_bundled_model, tmp_path):
    reg = "pulsetest://models/registry"
    pointer = registry.init(reg, tiny_bundled_model)
    assert pointer.location == "pulsetest://models/registry/versions/tiny-test"
    assert pointer.path.startswith("pulsetest://models/registry/pointers/")
    assert registry.versions(reg) == ["tiny-test"] and registry.current(reg) == pointer
    local = os.path.join(writable_bucket, "models", "registry")
    assert sorted(locations.list_files(pointer.location)) == sorted(locations.list_files(tiny_bundled_model))
    [name] = os.listdir(os.path.join(local, "pointers"))
    assert json.load(open(os.path.join(local, "pointers", name)))["location"] == pointer.location
    # The job loads the current version the way it loads any remote model: fetched, then the same model.
    assert ModelSpec.load(locations.local_dir(registry.current(reg).location)) == ModelSpec.load(tiny_bundled_model)
    second = copy_model(tiny_bundled_model, tmp_path / "second", "2.second")
    registry.add_version(reg, second)
    promoted = registry.promote(reg, "2.second", {"why": "test"})
    assert registry.current(reg) == promoted and promoted.previous == "tiny-test"
    assert registry.add_version(reg, second) == promoted.location  # idempotent remotely too
    # An upload cut short (no model.json: it is written last) is not a version, and is copied again.
    shutil.rmtree(os.path.join(local, "versions", "2.second"))
    os.makedirs(os.path.join(local, "versions", "2.second"))
    open(os.path.join(local, "versions", "2.second", "saved_model.pb"), "wb").write(b"half")
    assert registry.versions(reg) == ["tiny-test"]
    with pytest.raises(registry.RegistryError, match="no version 2.second"):
        registry.promote(reg, "2.second", {})
    registry.add_version(reg, second)
    assert registry.versions(reg) == ["2.second", "tiny-test"]
    assert ModelSpec.load(os.path.join(local, "versions", "2.second")).version == "2.second"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2200, 1, 1)),
                min_size=1, max_size=20))
def test_pointer_names_sort_in_promotion_order_whatever_the_clock(clocks):
    # Each promotion reads the clock (which may go back, or repeat) and the greatest stamp present.
    stamps = []
    for clock in clocks:
        stamps.append(registry._stamp(clock.replace(tzinfo=dt.timezone.utc), stamps[-1] if stamps else None))
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert all(len(s) == len(stamps[0]) for s in stamps)


def test_the_registry_command(tmp_path, tiny_bundled_model, capsys):
    reg = str(tmp_path / "registry")
    assert cli.main(["registry", "list", "--registry", reg]) == 2
    assert "no registry at" in capsys.readouterr().err
    assert cli.main(["registry", "init", "--registry", reg, "--model", tiny_bundled_model]) == 0
    assert "current: tiny-test" in capsys.readouterr().out
    registry.add_version(reg, copy_model(tiny_bundled_model, tmp_path / "second", "2.second"))
    assert cli.main(["registry", "promote", "2.second", "--registry", reg, "--reason", "by hand"]) == 0
    assert "current: 2.second (was tiny-test)" in capsys.readouterr().out
    assert registry.current(reg).reason["why"] == "by hand"
    assert cli.main(["registry", "list", "--registry", reg]) == 0
    out = capsys.readouterr().out
    assert "* 2.second" in out and "  tiny-test" in out and "by hand" in out
    assert cli.main(["registry", "promote", "7.none", "--registry", reg]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no version 7.none") and err.count("\n") == 1
    assert cli.main(["registry", "init", "--registry", str(tmp_path / "r2"), "--model", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
