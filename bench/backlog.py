"""One backlog, two engines: the same replayed file drained by `pulse run` on the DirectRunner and on Prism.

    TF_USE_LEGACY_KERAS=1 python -m bench.backlog                      # 30,000 posts on both engines
    TF_USE_LEGACY_KERAS=1 python -m bench.backlog --messages 3000      # a quick look
    TF_USE_LEGACY_KERAS=1 python -m bench.backlog --runners direct     # one engine only

The backlog is a JSON-lines file of N synthetic posts (`connectors.feeds.publisher.synthetic_posts`,
seed 1, three keywords) whose `created_at` spans `--span-minutes` of event time from a fixed
instant, written once and played by both engines as the replay plays any file: a stream
(TestStream) with event time, early, on-time and late panes (pipelines/runners.py,
plays_test_stream). Each engine runs the whole job (`python -m pipelines.cli run --input FILE
--output DIR --model bundled`) in a subprocess of its own, one after the other:

- `direct`: Beam's Python BundleBasedDirectRunner with the project's patches (what `pulse run`
  uses by default);
- `prism`: Beam's Prism runner (Go, `make prism` builds it into .cache/beam/), the nearest real
  engine this machine has (Flink's job server jar is not served here: docs/DESIGN.md), with
  Beam's default environment for it: the SDK harness in the launching process (LOOPBACK).

Figures per engine: drain rates, msg/s from the first post's `processed_at` in scored_posts
to the median post's, the 95th percentile's and the last's (start-up left out; the last post
includes any tail the engine leaves for the end), and the whole command's wall time (start-up
included). Every post must be in scored_posts (checked, else the bench fails); a job that
exits nonzero because its own balance does not add up (its counters against what it stored)
is reported with its exit status and balance lines, not hidden, and the figures are still
printed. The job's replay progress (every 10 %) is echoed as it comes, and every 20 s a line
says how many posts are in finished files. Interrupting the bench stops the job it runs. Nothing asserts a time; the ratios come from one run on one
machine.

Not Pub/Sub: the job refuses a Pub/Sub `--input` on Prism (Beam's Python Pub/Sub read runs on
Dataflow and the DirectRunner only), so a file is the one backlog both engines can read.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from bench.live import ScoredCounter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T0 = dt.datetime(2026, 11, 24, 9, 0, tzinfo=dt.timezone.utc)
RUNNERS = ("direct", "prism")
PROGRESS_MARKS = ("replay: ", "pulse run: ", "Traceback", "Error")
HEARTBEAT_S = 20  # a progress line at least this often while a job runs


class _StepClock:
    """A clock for synthetic_posts: each post `step_s` after the one before, from T0."""

    def __init__(self, step_s: float):
        self.step_s = step_s
        self.t = T0.timestamp() - step_s

    def now(self) -> float:
        self.t += self.step_s
        return self.t


def write_backlog(path: str, n: int, span_minutes: float) -> None:
    """N synthetic posts, event time spread evenly over `span_minutes` from T0, one JSON object a line."""
    from connectors.feeds.publisher import synthetic_posts

    with open(path, "w", encoding="utf-8") as f:
        for post in synthetic_posts(n, seed=1, clock=_StepClock(span_minutes * 60 / n)):
            f.write(json.dumps(post, separators=(",", ":")) + "\n")


def prism_location() -> str:
    import apache_beam

    return os.path.join(ROOT, ".cache", "beam", f"prism-{apache_beam.__version__}", "prism")


def job_argv(runner: str, backlog: str, out: str) -> list[str]:
    argv = [sys.executable, "-m", "pipelines.cli", "run", "--input", backlog, "--output", out, "--model", "bundled"]
    if runner == "prism":
        argv += ["--runner", "PrismRunner", "--prism_location", prism_location()]
    return argv


def drain(runner: str, backlog: str, n: int, workdir: str) -> dict:
    """Run the job on one engine over the backlog; its figures, or raise RuntimeError in one line."""
    import duckdb

    out = os.path.join(workdir, runner)
    log_path = os.path.join(workdir, f"{runner}.log")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    started = time.monotonic()
    balance = []  # the job's own accounting lines
    with open(log_path, "w", encoding="utf-8") as job_log:
        proc = subprocess.Popen(job_argv(runner, backlog, out), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

        def follow():
            for line in proc.stdout:
                job_log.write(line)
                if any(mark in line for mark in PROGRESS_MARKS):
                    log(f"{runner}: {line.strip()[:240]}")
                if line.startswith("pulse run: ") and " read " in line:
                    balance.append(line.strip())

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        written, beat = ScoredCounter(out), started + HEARTBEAT_S
        try:
            while proc.poll() is None:  # the replay says how much it read; this, how much is written
                time.sleep(1.0)
                if time.monotonic() >= beat:
                    beat += HEARTBEAT_S
                    log(f"{runner}: {written.update()[0]}/{n} posts in finished scored_posts files, "
                        f"{time.monotonic() - started:.0f} s")
        except BaseException:  # Ctrl-C or an error here: the job (its own session) goes too
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        reader.join()
    wall = time.monotonic() - started
    if not os.path.isdir(os.path.join(out, "scored_posts")):
        raise RuntimeError(f"pulse run on {runner} exited with {proc.returncode} and wrote no scored_posts: "
                           f"see {log_path}")
    stamps = [row[0] for row in duckdb.connect().execute(
        f"SELECT epoch(min(processed_at)) FROM read_parquet('{out}/scored_posts/**/*.parquet') "
        f"GROUP BY post_id ORDER BY 1").fetchall()]
    if len(stamps) != n:
        raise RuntimeError(f"{runner} scored {len(stamps)} of the {n} posts (exit {proc.returncode}): see {log_path}")
    # Every post is in the table; a nonzero exit (the job's own balance refused) is reported, not hidden.
    return {"runner": runner, "wall": wall, "balance": balance, "exit": proc.returncode, **drain_figures(stamps)}


def drain_figures(stamps: list[float]) -> dict:
    """Sorted processed_at instants (one per post) -> seconds from the first to the median, the 95th
    percentile and the last post, and msg/s over each of those spans."""
    n = len(stamps)
    figures = {}
    for name, share in (("p50", 0.5), ("p95", 0.95), ("all", 1.0)):
        k = max(1, math.ceil(share * n))
        span = stamps[k - 1] - stamps[0]
        figures[name] = span
        figures[f"{name}_rate"] = (k - 1) / span if span > 0 else float("inf")
    return figures


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.backlog", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=30000, help="posts in the backlog (default 30,000)")
    parser.add_argument("--span-minutes", type=float, default=10.0,
                        help="event time the backlog spans (default 10: 10 one-minute windows per keyword)")
    parser.add_argument("--runners", default=None,
                        help=f"comma-separated, from {', '.join(RUNNERS)} (default both; Prism only where "
                             "`make prism` built it)")
    parser.add_argument("--keep", action="store_true", help="keep the backlog, the outputs and the job logs")
    args = parser.parse_args(argv)
    if args.messages < 100:
        parser.error("--messages must be at least 100")
    if args.span_minutes <= 0:
        parser.error("--span-minutes must be positive")
    args.chosen = args.runners is not None
    args.runners = [r.strip() for r in (args.runners or ",".join(RUNNERS)).split(",") if r.strip()]
    unknown = [r for r in args.runners if r not in RUNNERS]
    if unknown or not args.runners:
        parser.error(f"--runners: {', '.join(unknown) or 'none given'}: choose from {', '.join(RUNNERS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if "prism" in args.runners and not os.access(prism_location(), os.X_OK):
        missing = f"Beam's Prism runner is not built ({prism_location()}): `make prism` builds it (needs Go)"
        if args.chosen:
            print(f"bench.backlog: error: {missing}", file=sys.stderr)
            return 1
        log(f"note: {missing}; the DirectRunner only")
        args.runners.remove("prism")
    workdir = tempfile.mkdtemp(prefix="pulse-backlog-")
    try:
        backlog = os.path.join(workdir, "backlog.jsonl")
        write_backlog(backlog, args.messages, args.span_minutes)
        log(f"backlog: {args.messages} posts over {args.span_minutes:g} minutes of event time ({backlog})")
        results = []
        for runner in args.runners:
            log(f"{runner}: pulse run --input backlog.jsonl --model bundled")
            try:
                results.append(drain(runner, backlog, args.messages, workdir))
            except RuntimeError as e:
                print(f"bench.backlog: error: {e}", file=sys.stderr)
                args.keep = True
                return 1
            r = results[-1]
            log(f"{runner}: {r['all_rate']:,.0f} msg/s drained ({r['p95_rate']:,.0f} to the 95th percentile), "
                f"{r['wall']:.0f} s in all")
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{args.messages} posts replayed from one file. Drained: msg/s from the first post's processed_at to "
          f"the median's, the 95th percentile's and the last's (start-up left out); wall: the whole command.")
    print(f"  {'engine':<7} {'to p50':>16} {'to p95':>16} {'to the last':>18} {'wall':>8}  pulse run's exit")
    for r in results:
        print(f"  {r['runner']:<7} {r['p50_rate']:>7,.0f} ({r['p50']:5.1f} s) {r['p95_rate']:>7,.0f} ({r['p95']:5.1f} s) "
              f"{r['all_rate']:>7,.0f} ({r['all']:7.1f} s) {r['wall']:>6.0f} s  {r['exit']}")
    for r in results:
        for line in r["balance"]:
            print(f"  {r['runner']}: {line}")
    if len(results) == 2:
        direct, prism = results
        print("  ratio prism / direct, msg/s: " + ", ".join(
            f"{label} {prism[key] / direct[key]:.2f}" for label, key in
            (("to p50", "p50_rate"), ("to p95", "p95_rate"), ("to the last", "all_rate"))) +
            f"; wall time direct / prism {direct['wall'] / prism['wall']:.2f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench.backlog: interrupted (the job it was running is stopped)", file=sys.stderr)
        sys.exit(130)
