"""The four Beam bugs the DirectRunner patches work around still reproduce on stock Beam, and the patches fix them.

Each bug is written up as a Beam issue in docs/upstream/<bug>.md with a standalone
reproduction, docs/upstream/repro_<bug>.py, that imports only apache_beam (and the standard
library) and exits 1 with a line starting "BUG:" while the bug is there, 0 once it is fixed.
Each runs twice, in its own process: on stock Beam (nothing of the project imported), where it
must still reproduce (when it stops, Beam fixed the bug and the test names the patch to drop),
and after `install_direct_runner_fixes()` (the engine `pulse run` uses), where it must pass.
The eight processes run at once; nothing here is timed.

    .venv/bin/pytest tests/test_upstream_repros.py -q
"""
import ast
import os
import subprocess
import sys

import apache_beam
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPSTREAM = os.path.join(ROOT, "docs", "upstream")
# Each bug -> the patch module (pipelines/direct_runner/<module>.py) that works around it.
BUGS = {"metrics_container_per_bundle": "metrics", "late_pane_hold": "triggers",
        "windows_never_expired": "triggers", "keyed_state_leak": "state"}
PATCHED = ("import runpy, sys; from pipelines.direct_runner import install_direct_runner_fixes; "
           "install_direct_runner_fixes(); runpy.run_path(sys.argv[1], run_name='__main__')")


def repro(bug: str) -> str:
    return os.path.join(UPSTREAM, f"repro_{bug}.py")


@pytest.fixture(scope="module")
def runs():
    """(bug, 'stock' | 'patched') -> the finished process, all eight started together."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    started = {}
    for bug in BUGS:
        started[bug, "stock"] = subprocess.Popen([sys.executable, repro(bug)], cwd=UPSTREAM, env=env,
                                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started[bug, "patched"] = subprocess.Popen([sys.executable, "-c", PATCHED, repro(bug)], cwd=ROOT, env=env,
                                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finished = {}
    for run, process in started.items():
        out, err = process.communicate(timeout=300)
        finished[run] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return finished


@pytest.mark.parametrize("bug", BUGS)
def test_the_bug_still_reproduces_on_stock_beam(bug, runs):
    run = runs[bug, "stock"]
    assert run.returncode != 0 or not run.stdout.startswith("FIXED"), (
        f"apache-beam {apache_beam.__version__} fixed {bug} (docs/upstream/{bug}.md): drop its part of "
        f"pipelines/direct_runner/{BUGS[bug]}.py and this reproduction. It printed: {run.stdout.strip()}")
    assert run.returncode == 1 and run.stdout.startswith("BUG: "), (run.returncode, run.stdout, run.stderr[-3000:])


@pytest.mark.parametrize("bug", BUGS)
def test_the_patched_engine_fixes_it(bug, runs):
    run = runs[bug, "patched"]
    assert run.returncode == 0 and run.stdout.startswith("FIXED: "), (run.returncode, run.stdout, run.stderr[-3000:])


@pytest.mark.parametrize("bug", BUGS)
def test_each_report_uses_beam_alone_and_is_linked(bug):
    tree = ast.parse(open(repro(bug), encoding="utf-8").read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported - set(sys.stdlib_module_names) == {"apache_beam"}, imported
    report = open(os.path.join(UPSTREAM, f"{bug}.md"), encoding="utf-8").read()
    for must in ("2.77.0", "3.11", "BundleBasedDirectRunner", f"repro_{bug}.py",
                 f"pipelines/direct_runner/{BUGS[bug]}.py"):
        assert must in report, (bug, must)
    patch_doc = open(os.path.join(ROOT, "pipelines", "direct_runner", f"{BUGS[bug]}.py"), encoding="utf-8").read()
    assert f"docs/upstream/{bug}.md" in patch_doc
    assert f"(upstream/{bug}.md)" in open(os.path.join(ROOT, "docs", "DESIGN.md"), encoding="utf-8").read()
