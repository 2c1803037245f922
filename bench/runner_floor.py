"""The local runner's own ceiling, measured apart from the job, and Beam's other local runner.

    TF_USE_LEGACY_KERAS=1 python -m bench.runner_floor                 # 60,000 messages, ~3 min on 2 cores
    TF_USE_LEGACY_KERAS=1 python -m bench.runner_floor --messages 30000  # about 2 minutes

One Pub/Sub emulator; a backlog of N synthetic posts is drained three ways, each timed from
its first message to its last (start-up left out):

1. trivial: the job's Pub/Sub read (connectors/sources/pubsub_direct.py) -> one Map, on the
   BundleBasedDirectRunner with the job's runner fixes (pipelines/direct_runner/): the
   runner and the read alone (timed from the first message pulled to the last acknowledged);
2. the job: `pulse run` on the same backlog (rate from scored_posts' processed_at);
3. Beam's other local runner: the portable runner against Beam's local job service
   (`--runner PortableRunner --job_endpoint embed`, the FnApiRunner behind it):
   a. whether it can run the job's source at all: Beam's ReadFromPubSub, streaming (the
      DirectRunner-only read cannot run there); the outcome is printed as one line;
   b. the same trivial pipeline over N elements as a bounded collection on both runners,
      for the per-element cost of each runner where both can run.

Nothing here asserts a time; the ratios come from one run on one machine.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

from bench.live import (ROOT, ScoredCounter, create_topic_and_subscription, log, pulse_command)

PROBE_TIMEOUT_S = 120


def publish_backlog(topic: str, n: int) -> None:
    from connectors.feeds.publisher import Publisher, post_message, synthetic_posts
    Publisher(topic, max_latency_s=0.01).publish(map(post_message, synthetic_posts(n, seed=1)), total=n)


def trivial_direct(subscription: str, n: int) -> float:
    """msg/s of read -> Map on the BundleBasedDirectRunner: from the first message pulled to the
    moment all n are acknowledged (the read acknowledges only what the pipeline has finished)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    from connectors.sources import pubsub_direct
    from pipelines.direct_runner import install_direct_runner_fixes

    install_direct_runner_fixes()
    reader_id = uuid.uuid4().hex
    span: list[float] = []

    def stop_when_done():
        reader = pubsub_direct.reader(reader_id)
        while reader.pulled == 0:
            time.sleep(0.01)
        span.append(time.monotonic())
        while reader.acknowledged < n:
            time.sleep(0.01)
        span.append(time.monotonic())
        reader.request_stop("all read")

    options = PipelineOptions([])
    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(runner="BundleBasedDirectRunner", options=options)
    _ = p | pubsub_direct.DirectPubSubRead(subscription, reader_id) | beam.Map(len)
    threading.Thread(target=stop_when_done, daemon=True).start()
    result = p.run()
    result.wait_until_finish()
    pubsub_direct.reader(reader_id).finish(written=True)
    return n / (span[1] - span[0])


def whole_job(subscription: str, n: int, workdir: str, env: dict) -> float:
    """msg/s of `pulse run` draining the backlog (processed_at of the first to the last post)."""
    import duckdb

    out = os.path.join(workdir, "job")
    with open(os.path.join(workdir, "job.log"), "wb") as job_log:
        proc = subprocess.Popen(pulse_command() + ["run", "--input", subscription, "--output", out],
                                stdout=job_log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True)
        counter = ScoredCounter(out)
        try:
            while counter.update()[0] < n:
                if proc.poll() is not None:
                    raise RuntimeError(f"pulse run exited with {proc.returncode}: see {job_log.name}")
                time.sleep(1.0)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=300)
    first, last, count = duckdb.connect().execute(
        f"SELECT epoch(min(processed_at)), epoch(max(processed_at)), count(*) "
        f"FROM read_parquet('{out}/scored_posts/**/*.parquet')").fetchone()
    return (count - 1) / (last - first)


_PROBE = r"""
import sys, apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
options = PipelineOptions(["--runner", "PortableRunner", "--job_endpoint", "embed", "--streaming",
                           "--environment_type", "LOOPBACK"])
p = beam.Pipeline(options=options)
_ = p | beam.io.ReadFromPubSub(subscription=sys.argv[1]) | beam.Map(lambda m: print("MESSAGE", flush=True))
result = p.run()
result.wait_until_finish()
"""


def portable_pubsub_probe(subscription: str, env: dict, waiting: int) -> str:
    """One line: what the portable runner does with a streaming ReadFromPubSub (`waiting` messages there)."""
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE, subscription], capture_output=True, text=True,
                              env=env, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"no message read and no error in {PROBE_TIMEOUT_S} s"
    read = done.stdout.count("MESSAGE")
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    outcome = f"exit {done.returncode}, {read} of the {waiting} messages waiting were read"
    return outcome + (f"; {errors[-1][:300]}" if errors else "")


def bounded_trivial(runner: str, n: int) -> float:
    """elements/s of Create(n) -> Map -> Map on `runner` (start-up included: both are local)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    argv = ["--runner", runner]  # PipelineOptions(argv): not this script's own command line
    if runner == "PortableRunner":
        argv += ["--job_endpoint", "embed", "--environment_type", "LOOPBACK"]
    started = time.monotonic()
    with beam.Pipeline(options=PipelineOptions(argv)) as p:
        _ = (p | beam.Create(range(n)) | "Bytes" >> beam.Map(lambda i: str(i).encode())
             | "Length" >> beam.Map(len))
    return n / (time.monotonic() - started)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.runner_floor", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=60000, help="backlog drained each way")
    args = parser.parse_args(argv)
    if args.messages < 100:
        parser.error("--messages must be at least 100")

    from connectors import emulator

    command, why = emulator.find_emulator()
    if command is None:
        print(f"runner_floor: error: {why}", file=sys.stderr)
        return 1
    workdir = tempfile.mkdtemp(prefix="pulse-floor-")
    process = emulator.EmulatorProcess(command, emulator.free_port(), os.path.join(workdir, "emulator.log"))
    process.start()
    try:
        os.environ["PUBSUB_EMULATOR_HOST"] = process.host
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
        n = args.messages
        rows = []
        topic, sub = create_topic_and_subscription("floor-trivial")
        publish_backlog(topic, n)
        log(f"trivial pipeline on the DirectRunner, {n} messages")
        trivial = trivial_direct(sub, n)
        rows.append(("read -> Map, BundleBasedDirectRunner (Pub/Sub)", trivial))
        topic, sub = create_topic_and_subscription("floor-job")
        publish_backlog(topic, n)
        log(f"the whole job, {n} messages")
        job = whole_job(sub, n, workdir, env)
        rows.append(("the whole job (pulse run), BundleBasedDirectRunner (Pub/Sub)", job))
        log("portable runner: ReadFromPubSub, streaming")
        topic, sub = create_topic_and_subscription("floor-portable")
        publish_backlog(topic, 100)
        probe = portable_pubsub_probe(sub, env, 100)
        log(f"bounded Create -> Map -> Map, {n} elements, both runners")
        direct_bounded = bounded_trivial("BundleBasedDirectRunner", n)
        portable_bounded = bounded_trivial("PortableRunner", n)
        rows.append(("Create -> Map -> Map, BundleBasedDirectRunner (bounded)", direct_bounded))
        rows.append(("Create -> Map -> Map, PortableRunner + local job service (bounded)", portable_bounded))
    finally:
        process.stop(signal.SIGTERM)
        shutil.rmtree(workdir, ignore_errors=True)
    width = max(len(name) for name, _ in rows)
    print(f"\n{n} messages each; msg/s from the first message to the last (bounded rows: whole run)")
    for name, rate in rows:
        print(f"  {name:<{width}}  {rate:>10,.0f} msg/s")
    print(f"  the job / the trivial pipeline on the same runner and source: {job / trivial:.2f}")
    print(f"  PortableRunner / DirectRunner on the bounded pipeline: {portable_bounded / direct_bounded:.2f}")
    print(f"  PortableRunner, streaming ReadFromPubSub: {probe}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
