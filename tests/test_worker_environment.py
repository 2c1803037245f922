"""The job on workers that see only the built package, as Dataflow's --setup_file workers do.

A separate virtual environment gets the wheel built from setup.py (and, so as not to install
TensorFlow again, the test interpreter's dependencies through a .pth path line:
pipelines/worker_env.py). Beam's worker pool (`worker_pool_main`) runs from it, in another
working directory, inside a mount namespace where the checkout the job is launched from is an
empty tmpfs: the workers cannot read one file of the launcher's tree, only the installed
package. The job goes through PortableRunner to Beam's local job service with the EXTERNAL
environment pointing at that pool, with `--model bundled`, and its tables must equal the
DirectRunner's on the same file.

The negative control: a handler pickled with the launcher's absolute model path (what
`--model bundled` used to become) fails on those workers.

    .venv/bin/pytest tests/test_worker_environment.py -q
"""
import datetime as dt
import json
import os
import random
import re
import shlex
import shutil
import socket
import subprocess
import sys
import sysconfig
import time

import pytest

from connectors.query import duckdb_sql
from pipelines import sentiment_pipeline, worker_env
from tests.test_portable_runner import job_service  # noqa: F401  (module fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = worker_env.PROJECT_ROOT
T0 = dt.datetime(2026, 11, 24, 14, 0, tzinfo=dt.timezone.utc)
TEXTS = ["I love this, best service ever", "worst delay, I hate this airline", "the flight is at noon",
         "great crew and great food", "terrible, my bag is lost again"]


def can_unshare() -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                          capture_output=True).returncode == 0


def hidden_checkout_script(keep: str, command: list[str], workdir: str) -> list[str]:
    """`command` in a mount namespace where REPO is an empty tmpfs (its dependencies' venv bound back)."""
    deps = sysconfig.get_paths()["purelib"]
    steps = ["set -e"]
    rebind = os.path.commonpath([deps, REPO]) == REPO  # the reused site-packages lie inside the checkout
    if rebind:
        steps.append(f"mount --bind {shlex.quote(deps)} {shlex.quote(keep)}")
    steps.append(f"mount -t tmpfs -o size=1m pulse-hidden-checkout {shlex.quote(REPO)}")
    if rebind:
        steps += [f"mkdir -p {shlex.quote(deps)}", f"mount --bind {shlex.quote(keep)} {shlex.quote(deps)}"]
    steps += [f"cd {shlex.quote(workdir)}", "exec " + " ".join(shlex.quote(c) for c in command)]
    return ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", "\n".join(steps)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def worker_venv(tmp_path_factory):
    if not can_unshare():
        pytest.skip("needs a mount namespace (unshare --mount: root or user namespaces) to hide the checkout")
    dest = tmp_path_factory.mktemp("worker") / "venv"
    worker_env.build(str(dest), reuse_deps=True)
    return str(dest)


def in_worker_namespace(worker_venv, tmp_path, code: str) -> str:
    keep, workdir = tmp_path / "keep", tmp_path / "cwd"
    keep.mkdir(exist_ok=True)
    workdir.mkdir(exist_ok=True)
    cmd = hidden_checkout_script(str(keep), [worker_env.venv_python(worker_venv), "-c", code], str(workdir))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=worker_env.worker_pool_env(worker_venv),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def worker_pool(tmp_path_factory, worker_venv):
    tmp = tmp_path_factory.mktemp("pool")
    (tmp / "keep").mkdir()
    (tmp / "cwd").mkdir()
    port = free_port()
    log = open(tmp / "pool.log", "w")
    cmd = hidden_checkout_script(str(tmp / "keep"), worker_env.worker_pool_command(worker_venv, port),
                                 str(tmp / "cwd"))
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=worker_env.worker_pool_env(worker_venv),
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.close()
                pytest.fail(f"the worker pool did not start: {(tmp / 'pool.log').read_text()[-2000:]}")
            time.sleep(0.5)
    try:
        yield f"localhost:{port}", tmp / "pool.log"
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        log.close()


def lines() -> list[bytes]:
    rng = random.Random(3)
    posts = []
    for i in range(150):
        at = T0 + dt.timedelta(seconds=rng.uniform(0, 600))
        posts.append((at, json.dumps({"id": f"p{i}", "text": TEXTS[i % len(TEXTS)], "lang": ("en", "fr")[i % 5 == 0],
                                      "keyword": ("acme", "nimbus")[i % 2],
                                      "created_at": at.isoformat().replace("+00:00", "Z")}).encode()))
    posts.sort()
    out = [line for _, line in posts]
    return out + [b"not json", b'{"id": "x"}', b"\xff\xfe"] + out[:2]  # hostile lines, two duplicates


@pytest.fixture(scope="module")
def runs(tmp_path_factory, job_service, worker_pool):  # noqa: F811
    endpoint, pool_log = worker_pool
    tmp = tmp_path_factory.mktemp("runs")
    (tmp / "in.jsonl").write_bytes(b"\n".join(lines()) + b"\n")
    started = time.monotonic()
    external = sentiment_pipeline.run([
        "--runner", "PortableRunner", "--job_endpoint", job_service,
        "--environment_type", "EXTERNAL", "--environment_config", endpoint,
        "--input", str(tmp / "in.jsonl"), "--output", str(tmp / "external"), "--model", "bundled",
        "--early_firing", "0"])
    external_s = time.monotonic() - started
    direct = sentiment_pipeline.run(["--input", str(tmp / "in.jsonl"), "--output", str(tmp / "direct"),
                                     "--model", "bundled"])
    return external, direct, str(tmp / "external"), str(tmp / "direct"), pool_log, external_s


def rows(out, sql):
    return duckdb_sql.query(out, sql)[1]


def test_workers_import_the_installed_package_and_cannot_see_the_checkout(worker_venv, tmp_path):
    out = in_worker_namespace(worker_venv, tmp_path, (
        "import os, sys, pipelines, models.locations as l\n"
        f"print(pipelines.__file__); print(l.bundled_dir()); print(os.listdir({REPO!r}))\n"
        f"print(any(p.rstrip('/') == {REPO!r} for p in sys.path))"))
    package, bundled, listing, repo_on_path = out.strip().splitlines()
    site = worker_env.venv_site_packages(worker_venv)
    assert package == os.path.join(site, "pipelines", "__init__.py")
    assert bundled == os.path.join(site, "models", "bundled")
    # Only the dependencies' venv is bound back (when it lies inside the checkout): no source file.
    assert set(eval(listing)) <= {".venv"}
    assert repo_on_path == "False"


def test_the_job_on_package_only_workers_equals_the_direct_runner(runs):
    external, direct, external_out, direct_out, pool_log, _ = runs
    from apache_beam.runners.runner import PipelineState

    assert external.state == PipelineState.DONE
    assert "Starting worker with command" in pool_log.read_text()  # the pool's workers ran it
    posts = ("SELECT post_id, keyword, lang, created_at, label, round(score, 6), round(confidence, 6), "
             "model_version, token_count, oov_count FROM scored_posts_unique ORDER BY ALL")
    scored = rows(direct_out, posts)
    assert len(scored) == 150 and rows(external_out, posts) == scored
    final = ("SELECT window_start, keyword, lang, posts, positive, neutral, negative, mean_score "
             "FROM sentiment_windows_final ORDER BY ALL")
    direct_final, external_final = rows(direct_out, final), rows(external_out, final)
    assert [r[:-1] for r in external_final] == [r[:-1] for r in direct_final] != []
    # Means are sums of float scores added in another order by another runner: equal to rounding.
    assert [r[-1] for r in external_final] == pytest.approx([r[-1] for r in direct_final], abs=1e-9)
    dead = "SELECT stage, reason, message_id FROM dead_letters ORDER BY ALL"
    assert rows(external_out, dead) == rows(direct_out, dead) and len(rows(direct_out, dead)) == 3
    review = "SELECT post_id, keyword FROM review_queue ORDER BY ALL"
    assert rows(external_out, review) == rows(direct_out, review)


def test_a_launcher_path_pickled_into_the_handler_fails_on_those_workers(tmp_path, job_service, worker_pool):  # noqa: F811
    """What `--model bundled` used to send: the launcher's absolute path, which the workers lack."""
    import apache_beam as beam
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.options.pipeline_options import PipelineOptions

    from models.handlers import BUNDLED_DIR
    from models.savedmodel import ContractSavedModelHandler

    endpoint, _ = worker_pool
    options = PipelineOptions(["--runner", "PortableRunner", "--job_endpoint", job_service,
                               "--environment_type", "EXTERNAL", "--environment_config", endpoint])
    with pytest.raises(Exception, match=re.escape(BUNDLED_DIR) + r".*(No file or directory found|No such file or directory)"):
        with beam.Pipeline(options=options) as p:
            _ = (p | beam.Create(["I love it"]) | RunInference(ContractSavedModelHandler(BUNDLED_DIR)))
