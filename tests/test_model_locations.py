"""Where a model is found: by name in the package where it loads, or through Beam's FileSystems.

`pulsetest://` is a FileSystem registered by this test (Beam finds FileSystem subclasses by
their scheme) that maps its paths onto a local directory: the same FileSystems API a gs://
model goes through (match, open, join), with nothing faked behind it but the bucket.
"""
import os
import pickle
import shutil

import numpy as np
import pytest
from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem

from models import locations
from models.contracts import ModelSpec
from models.handlers import BUNDLED_DIR, create_model_handler, only_on_this_machine, resolve_model
from transforms.inference import IsolateFailures

TEXTS = ["I love this, it is great", "this is awful and I hate it", "the flight is at noon"]
BUCKET = {"root": None}  # the local directory behind pulsetest://


class PulseTestFileSystem(FileSystem):
    """pulsetest://a/b -> <BUCKET root>/a/b, through Beam's LocalFileSystem."""

    def __init__(self, pipeline_options=None):
        super().__init__(pipeline_options)
        self._local = LocalFileSystem(pipeline_options)

    @classmethod
    def scheme(cls):
        return "pulsetest"

    @staticmethod
    def _to_local(path: str) -> str:
        return os.path.join(BUCKET["root"], path[len("pulsetest://"):])

    @staticmethod
    def _to_remote(path: str) -> str:
        return "pulsetest://" + os.path.relpath(path, BUCKET["root"])

    def join(self, basepath, *paths):
        return "/".join([basepath.rstrip("/")] + [p.strip("/") for p in paths])

    def split(self, path):
        head, _, tail = path.rpartition("/")
        return head, tail

    def match(self, patterns, limits=None):
        results = self._local.match([self._to_local(p) for p in patterns], limits)
        for result in results:
            result.pattern = self._to_remote(result.pattern)
            for meta in result.metadata_list:
                meta.path = self._to_remote(meta.path)
        return results

    def open(self, path, mime_type="application/octet-stream", compression_type="auto"):
        return self._local.open(self._to_local(path), mime_type, compression_type)

    def exists(self, path):
        return self._local.exists(self._to_local(path))

    def _unsupported(self, *args, **kwargs):
        raise NotImplementedError("pulsetest:// is read-only")

    mkdirs = has_dirs = _list = create = copy = rename = size = last_updated = checksum = delete = metadata = \
        _unsupported


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    BUCKET["root"] = str(tmp_path / "bucket")
    os.makedirs(BUCKET["root"])
    monkeypatch.setenv(locations.CACHE_ENV, str(tmp_path / "cache"))
    yield BUCKET["root"]
    BUCKET["root"] = None


def scores(handler):
    return [r.inference["probabilities"] for r in handler.run_inference(TEXTS, handler.load_model())]


def test_the_test_filesystem_is_what_beam_resolves(bucket):
    os.makedirs(os.path.join(bucket, "d"))
    with open(os.path.join(bucket, "d", "f.txt"), "w") as f:
        f.write("x")
    assert FileSystems.get_scheme("pulsetest://d/f.txt") == "pulsetest"
    assert locations.is_remote("pulsetest://d/f.txt") and not locations.is_remote("/tmp/f.txt")
    assert locations.read_bytes("pulsetest://d", "f.txt") == b"x"
    assert locations.list_files("pulsetest://d/") == {"f.txt": 1}


def test_a_remote_savedmodel_is_fetched_through_filesystems_and_scores_like_the_local_one(
        bucket, tiny_bundled_model, tmp_path):
    shutil.copytree(tiny_bundled_model, os.path.join(bucket, "models", "sentiment"))
    uri = "pulsetest://models/sentiment"
    assert resolve_model(uri) == ("savedmodel", uri)
    assert resolve_model(uri + "/") == ("savedmodel", uri)
    assert not only_on_this_machine(resolve_model(uri))
    handler, spec = create_model_handler(uri)
    assert spec == ModelSpec.load(tiny_bundled_model)
    shipped = pickle.dumps(IsolateFailures(handler))
    assert bucket.encode() not in shipped and b"pulsetest://models/sentiment" in shipped
    remote = pickle.loads(shipped)
    local, _ = create_model_handler(tiny_bundled_model)
    np.testing.assert_allclose(scores(remote), scores(local), rtol=1e-6)
    # One copy per machine, reused by later loads (another SDK process, a reload).
    [copy] = [d for d in os.listdir(tmp_path / "cache") if not d.startswith(".")]
    files = sorted(os.path.relpath(os.path.join(r, f), tmp_path / "cache" / copy)
                   for r, _, fs in os.walk(tmp_path / "cache" / copy) for f in fs)
    assert set(files) - {locations._COMPLETE} == set(locations.list_files(uri))
    before = os.stat(tmp_path / "cache" / copy / "saved_model.pb").st_mtime_ns
    assert locations.fetch(uri) == str(tmp_path / "cache" / copy)
    assert os.stat(tmp_path / "cache" / copy / "saved_model.pb").st_mtime_ns == before


def test_a_remote_tfx_model_loads_through_the_same_fetch(bucket, tiny_bundled_model):
    shutil.copytree(tiny_bundled_model, os.path.join(bucket, "m"))
    handler, _ = create_model_handler("tfx:pulsetest://m")
    local, _ = create_model_handler(tiny_bundled_model)
    np.testing.assert_allclose(scores(pickle.loads(pickle.dumps(handler))), scores(local), rtol=1e-5)


def test_a_remote_hugging_face_checkpoint_loads_through_the_same_fetch(bucket, tiny_bert_dir):
    name = os.path.basename(tiny_bert_dir)
    shutil.copytree(tiny_bert_dir, os.path.join(bucket, "checkpoints", name))
    handler, spec = create_model_handler(f"pulsetest://checkpoints/{name}", max_batch_size=8)
    _, local_spec = create_model_handler(tiny_bert_dir)
    # The version names the checkpoint by its folder and its config's digest, wherever it is read from.
    assert spec == local_spec
    local, _ = create_model_handler(tiny_bert_dir)
    np.testing.assert_allclose(scores(pickle.loads(pickle.dumps(handler))), scores(local), rtol=1e-5)


def test_missing_remote_model_is_one_sentence(bucket):
    with pytest.raises(ValueError, match="model directory pulsetest://nothing/here does not exist"):
        create_model_handler("pulsetest://nothing/here")
    os.makedirs(os.path.join(bucket, "notes"))
    with open(os.path.join(bucket, "notes", "readme.txt"), "w") as f:
        f.write("hello")
    with pytest.raises(ValueError, match="neither a SavedModel"):
        create_model_handler("pulsetest://notes")


def test_bundled_travels_as_a_name_and_resolves_in_the_package_that_loads_it():
    handler, _ = create_model_handler("bundled")
    shipped = pickle.dumps(IsolateFailures(handler))
    assert BUNDLED_DIR.encode() not in shipped  # no path of the launching machine
    assert resolve_model("bundled") == ("savedmodel", "bundled")
    assert not only_on_this_machine(resolve_model("bundled"))
    assert locations.local_dir("bundled") == os.path.join(os.path.dirname(locations.__file__), "bundled")


def test_a_local_directory_is_a_path_of_this_machine(tiny_bundled_model):
    assert only_on_this_machine(resolve_model(tiny_bundled_model))
    assert not only_on_this_machine(resolve_model("hf:nlptown/bert-base-multilingual-uncased-sentiment"))
