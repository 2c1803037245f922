"""The four Beam bugs the DirectRunner patches work around still reproduce on stock Beam, and the patches fix them.

Each bug is written up as a Beam issue in docs/upstream/<bug>.md with a standalone
reproduction, docs/upstream/repro_<bug>.py, that imports only apache_beam (and the standard
library) and exits 1 with a line starting "BUG:" while the bug is there, 0 once it is fixed.
Each runs twice: on stock Beam (an interpreter where nothing of the project is imported, checked),
where it must still reproduce (when it stops, Beam fixed the bug and the test
names the patch to drop), and after `install_direct_runner_fixes()` (the engine `pulse run`
uses), where it must pass. One interpreter per side runs the four one after the other (Beam
imported once), the two sides at once; nothing here is timed.

    .venv/bin/pytest tests/test_upstream_repros.py -q
"""
import ast
import json
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
# Runs each reproduction given on the command line in this one interpreter (one import of Beam for
# all four; each builds and runs its own pipeline), after the patches when the first argument says
# so, and prints {bug: [exit status, what it printed]} as JSON.
DRIVER = r"""
import contextlib, io, json, os, runpy, sys
mode, paths = sys.argv[1], sys.argv[2:]
if mode == "patched":
    from pipelines.direct_runner import install_direct_runner_fixes
    install_direct_runner_fixes()
results = {}
for path in paths:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_path(path, run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    results[os.path.basename(path)[len("repro_"):-len(".py")]] = [code, out.getvalue()]
project = {"pipelines", "connectors", "transforms", "models", "dashboard", "bench", "tests"}
print(json.dumps({"repros": results, "project_modules": sorted({m.split(".")[0] for m in sys.modules} & project)}))
"""


def repro(bug: str) -> str:
    return os.path.join(UPSTREAM, f"repro_{bug}.py")


@pytest.fixture(scope="module")
def runs():
    """(bug, 'stock' | 'patched') -> (exit status, what it printed, the interpreter's stderr); the two
    interpreters started together."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    stock_env = dict(os.environ)
    stock_env.pop("PYTHONPATH", None)  # stock Beam: the worktree is not on the path
    started = {mode: subprocess.Popen([sys.executable, "-c", DRIVER, mode] + [repro(bug) for bug in BUGS],
                                      cwd=UPSTREAM if mode == "stock" else ROOT,
                                      env=stock_env if mode == "stock" else env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for mode in ("stock", "patched")}
    finished = {}
    for mode, process in started.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0 and out.strip(), (mode, process.returncode, err[-3000:])
        report = json.loads(out.strip().splitlines()[-1])
        if mode == "stock":  # nothing of the project was imported: Beam as it ships
            assert report["project_modules"] == [], report["project_modules"]
        for bug, (code, printed) in report["repros"].items():
            finished[bug, mode] = (code, printed, err)
    return finished


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("bug", BUGS)
def test_the_bug_still_reproduces_on_stock_beam(bug, runs):
    code, printed, err = runs[bug, "stock"]
    assert code != 0 or not printed.startswith("FIXED"), (
        f"apache-beam {apache_beam.__version__} fixed {bug} (docs/upstream/{bug}.md): drop its part of "
        f"pipelines/direct_runner/{BUGS[bug]}.py and this reproduction. It printed: {printed.strip()}")
    assert code == 1 and printed.startswith("BUG: "), (code, printed, err[-3000:])


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("bug", BUGS)
def test_the_patched_engine_fixes_it(bug, runs):
    code, printed, err = runs[bug, "patched"]
    assert code == 0 and printed.startswith("FIXED: "), (code, printed, err[-3000:])


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
