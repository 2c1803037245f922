"""A Beam worker environment that has only the built package: what a remote worker sees.

    python -m pipelines.worker_env build --dest .venv-worker            # wheel + venv + pinned deps
    python -m pipelines.worker_env serve --dest .venv-worker --port 50000  # then a worker pool on it

`build` makes the wheel from setup.py (`pip wheel --no-deps`), creates a virtual environment
and installs the wheel there: not the source tree, not an editable install, so `import
pipelines` on a worker resolves to `<venv>/lib/python3.11/site-packages/pipelines`, as on a
Dataflow worker started with `--setup_file` or in the worker image (Dockerfile). The
dependencies come from requirements.lock (`pip install -c requirements.lock`), or, with
`--reuse-deps` (what the tests use), from the running interpreter's site-packages through a
`.pth` line, so TensorFlow is not installed a second time. A `.pth` path line adds that
directory only: the `.pth` files inside it (the editable install's finder among them) are
not processed, so the source tree stays off the worker's path.

`serve` starts Beam's worker pool (`apache_beam.runners.worker.worker_pool_main`) from that
environment: a portable runner submits with `--environment_type EXTERNAL
--environment_config HOST:PORT`, and the pool starts one SDK worker process per request. The
pool starts workers as `python -c ...` looked up on PATH, so PATH begins with the venv's bin/.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What setup.py packages, as the Dockerfile copies it: the wheel is built from a copy of these,
# so the build leaves nothing in the checkout (setuptools writes build/ and *.egg-info beside
# setup.py, and a stale build/ can carry deleted modules into the next wheel).
SOURCES = ("setup.py", "requirements.in", "requirements.lock", "pipelines", "transforms", "connectors",
           "models", "dashboard")
REUSE_PTH = "_pulse_reused_dependencies.pth"


class WorkerEnvError(RuntimeError):
    """Building the worker environment failed, said in one sentence."""


def _run(cmd: list[str], what: str, **kwargs) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise WorkerEnvError(f"{what} failed (exit {proc.returncode}): {' / '.join(tail)}")


def build_wheel(out_dir: str, project_root: str = PROJECT_ROOT) -> str:
    """The project's wheel, built from setup.py into out_dir; returns its path."""
    if not os.path.exists(os.path.join(project_root, "setup.py")):
        raise WorkerEnvError(f"no setup.py in {project_root}: build the worker environment from a checkout")
    with tempfile.TemporaryDirectory(prefix="pulse-wheel-build-") as build_dir:
        source = os.path.join(build_dir, "src")
        os.makedirs(source)
        for name in SOURCES:
            path = os.path.join(project_root, name)
            if os.path.isdir(path):
                shutil.copytree(path, os.path.join(source, name),
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif os.path.exists(path):
                shutil.copy2(path, source)
        _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
              "--wheel-dir", out_dir, source], "building the wheel")
    wheels = sorted(glob.glob(os.path.join(out_dir, "sentiment_pulse-*.whl")), key=os.path.getmtime)
    if not wheels:
        raise WorkerEnvError(f"pip wheel wrote no sentiment_pulse wheel into {out_dir}")
    return wheels[-1]


def venv_python(dest: str) -> str:
    return os.path.join(dest, "bin", "python")


def venv_site_packages(dest: str) -> str:
    python = venv_python(dest)
    out = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def build(dest: str, reuse_deps: bool = False, project_root: str = PROJECT_ROOT) -> str:
    """Create the worker environment at dest (see the module docstring); returns its python."""
    dest = os.path.abspath(dest)
    if not os.path.exists(venv_python(dest)):
        _run([sys.executable, "-m", "venv", dest], f"creating the virtual environment {dest}")
    python = venv_python(dest)
    if reuse_deps:
        with open(os.path.join(venv_site_packages(dest), REUSE_PTH), "w", encoding="utf-8") as f:
            f.write(sysconfig.get_paths()["purelib"] + "\n")
    with tempfile.TemporaryDirectory(prefix="pulse-wheel-") as wheel_dir:
        wheel = build_wheel(wheel_dir, project_root)
        if reuse_deps:
            cmd = [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--force-reinstall", wheel]
        else:
            cmd = [python, "-m", "pip", "install", "--quiet", "--force-reinstall",
                   "-c", os.path.join(project_root, "requirements.lock"), wheel]
        _run(cmd, f"installing {os.path.basename(wheel)} into {dest}")
    return python


def worker_pool_env(dest: str, base: dict | None = None) -> dict:
    """The environment a worker pool from dest runs with: its bin/ first on PATH, no PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    env.pop("PYTHONPATH", None)
    env["PATH"] = os.path.join(os.path.abspath(dest), "bin") + os.pathsep + env.get("PATH", "")
    env.setdefault("TF_USE_LEGACY_KERAS", "1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def worker_pool_command(dest: str, port: int) -> list[str]:
    return [venv_python(dest), "-m", "apache_beam.runners.worker.worker_pool_main", "--service_port", str(port)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.worker_env", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("build", "serve"):
        p = sub.add_parser(name)
        p.add_argument("--dest", default=".venv-worker", help="where the worker virtual environment goes")
        p.add_argument("--reuse-deps", action="store_true",
                       help="take the dependencies from this interpreter's site-packages (tests)")
        if name == "serve":
            p.add_argument("--port", type=int, default=50000, help="the worker pool's port")
    args = parser.parse_args(argv)
    try:
        print(f"worker_env: building {args.dest} (the wheel from setup.py, then "
              f"{'the reused dependencies' if args.reuse_deps else 'the requirements.lock pins'})", file=sys.stderr)
        build(args.dest, reuse_deps=args.reuse_deps)
    except WorkerEnvError as e:
        print(f"worker_env: error: {e}", file=sys.stderr)
        return 2
    if args.command == "build":
        print(venv_python(os.path.abspath(args.dest)))
        return 0
    print(f"worker_env: Beam worker pool on port {args.port}; submit with --environment_type EXTERNAL "
          f"--environment_config HOST:{args.port}", file=sys.stderr)
    env = worker_pool_env(args.dest)
    os.execve(venv_python(args.dest), worker_pool_command(args.dest, args.port), env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
