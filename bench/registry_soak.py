"""Registry soak: a Pub/Sub job on `--model registry:DIR` for minutes, through three promotions.

    TF_USE_LEGACY_KERAS=1 python -m bench.registry_soak --minutes 5        # `make bench` runs it
    TF_USE_LEGACY_KERAS=1 python -m bench.registry_soak --minutes 1 --rate 2

One Google Pub/Sub emulator (connectors/emulator.py) on a free loopback port; `pulse run` as an
operator starts it (a subprocess, PUBSUB_EMULATOR_HOST set) on a registry whose current version is
model A. Posts are published at `rate`/s for the whole run (ids in publish order); meanwhile:

- at 25 % of the run (once the job has named its model), a BROKEN version is promoted (its
  SavedModel cut short; promoted without the registry's check, as a pointer written by an older
  `pulse` or by hand would be);
- at 50 %, two promotions inside one watch interval (both vetted beforehand, so the two pointers
  are written milliseconds apart): model B (other weights), then model A again under a third
  version name; the job must end on the last one, never crash on the pane of two;

then 20 s of quiet, SIGINT, and the job drains. Checked at the sinks and in the subscription
(`check` -> the list of failures, empty when the run holds):

- every post stored exactly once, nothing left in the subscription, the job's own accounting
  "pulled N, acknowledged N (all written), not acknowledged 0" and exit status 0;
- no row names the broken version; posts published 5 watch intervals after the pair are all on
  the last version; versions in publish order never go back;
- each row's label and score are what the version it names gives for its text (every version
  re-scored offline through the same loader): the row names the model that really scored it.

tests/test_registry_soak.py runs the same scenario for about 75 s in the test suite; this module
runs it for minutes and prints the figures that bench/README.md records. No timing is asserted.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = ("I love this phone", "I hate the new update, worst ever", "the app opens at nine",
         "I enjoy the service", "I regret buying this case", "the store is ok I guess",
         "absolutely wonderful support team", "terrible battery, never again")
WATCH_S = 2.0
QUIET_S = 20.0


LAUNCH_WAIT_S = 300.0


def _launched(log_path: str, proc) -> bool:
    """Has the job named its model (the launch line, logged once the registry is resolved)?"""
    with open(log_path, errors="replace") as f:
        return " INFO model " in f.read() or proc.poll() is not None


@dataclasses.dataclass
class SoakResult:
    published: int
    stored_rows: int
    stored_unique: int
    left_unread: int
    exit_code: int | None
    accounting: tuple[int, int, int] | None  # pulled, acknowledged, not acknowledged (the job's line)
    versions: dict  # version -> rows
    versions_in_order: list  # the versions of the rows in publish order, runs collapsed
    mismatched: int  # rows whose label/score differ from what the named version gives
    failures: list
    seconds: float
    output_tail: str = ""

    def summary(self) -> str:
        return (f"published {self.published}, stored {self.stored_unique} once ({self.stored_rows} rows), "
                f"left unread {self.left_unread}, job accounting {self.accounting}, exit {self.exit_code}; "
                f"versions {self.versions}; in publish order {' -> '.join(self.versions_in_order)}; "
                f"rows not matching their version's own output {self.mismatched}; {self.seconds:.0f} s")


def model_variant(source: str, dest: str, version: str) -> str:
    """A copy of a model directory whose model.json names another version (same weights)."""
    shutil.copytree(source, dest)
    spec_path = os.path.join(dest, "model.json")
    with open(spec_path) as f:
        spec = json.load(f)
    spec["version"] = version
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    return dest


def _pulse() -> list[str]:
    pulse = os.path.join(os.path.dirname(sys.executable), "pulse")
    return [pulse, "run"] if os.access(pulse, os.X_OK) else [sys.executable, "-m", "pipelines.cli", "run"]


def _left_unread(subscription: str, idle_s: float = 3.0) -> int:
    from google.cloud import pubsub_v1

    left, last = 0, time.monotonic()
    with pubsub_v1.SubscriberClient() as subscriber:
        while time.monotonic() - last < idle_s:
            response = subscriber.pull(subscription=subscription, max_messages=1000, return_immediately=True,
                                       timeout=10)
            if not response.received_messages:
                time.sleep(0.2)
                continue
            last = time.monotonic()
            left += len(response.received_messages)
            subscriber.acknowledge(subscription=subscription, ack_ids=[r.ack_id for r in response.received_messages])
    return left


def _expected_outputs(locations: dict) -> dict:
    """version -> {text: (label, score)} for every text, from each version's own model."""
    from models.savedmodel import load_checked, read_spec

    out = {}
    for version, location in locations.items():
        try:
            model = load_checked(location)
        except ValueError:
            continue  # the broken version: nothing may name it
        spec = read_spec(location)
        probabilities, _, _ = model.score(list(TEXTS))
        out[version] = {text: (p.label, p.score) for text, p in zip(TEXTS, map(spec.predict, probabilities))}
    return out


def run_soak(model_a: str, model_b: str, workdir: str, duration_s: float, rate: float = 4.0,
             watch_s: float = WATCH_S, log=print) -> SoakResult:
    """The scenario of the module docstring, on the emulator that PUBSUB_EMULATOR_HOST names."""
    import duckdb

    from connectors.feeds.publisher import Publisher, post_message, rfc3339
    from models import registry

    os.makedirs(workdir, exist_ok=True)
    base = json.load(open(os.path.join(model_a, "model.json")))["version"]
    names = {"a": base, "broken": f"{base}-broken", "b": f"{base}-b", "a2": f"{base}-a2"}
    root = os.path.join(workdir, "registry")
    registry.init(root, model_a)
    broken = model_variant(model_a, os.path.join(workdir, "broken"), names["broken"])
    with open(os.path.join(broken, "saved_model.pb"), "wb") as f:
        f.write(b"\x08\x01")  # cut short: model.json is fine, the SavedModel does not load
    registry.add_version(root, broken)
    registry.add_version(root, model_variant(model_b, os.path.join(workdir, "b"), names["b"]))
    registry.add_version(root, model_variant(model_a, os.path.join(workdir, "a2"), names["a2"]))
    locations = {v: registry.version_location(root, v) for v in names.values()}
    from bench.live import create_topic_and_subscription

    topic, subscription = create_topic_and_subscription("soak-" + os.path.basename(workdir.rstrip("/")))
    out = os.path.join(workdir, "out")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log_path = os.path.join(workdir, "job.log")
    job_log = open(log_path, "w")
    started = time.monotonic()
    proc = subprocess.Popen(_pulse() + ["--input", subscription, "--output", out, "--model", f"registry:{root}",
                                        "--model_watch_interval", str(watch_s), "--window_size", "10"],
                            cwd=REPO, env=env, stdout=job_log, stderr=subprocess.STDOUT, text=True)
    publisher = Publisher(topic)
    published_at: dict[str, float] = {}
    pair_at = None
    n = max(1, int(duration_s * rate))
    try:
        start = time.monotonic()
        for i in range(n):
            if i == n // 4:
                # The promotions are for a running job: on a loaded machine its launch (TensorFlow's
                # import, the registry's vetting) can outlast a quarter of a short run.
                if not _launched(log_path, proc):
                    log("[soak] waiting for the job to launch before the first promotion")
                    while not _launched(log_path, proc) and proc.poll() is None \
                            and time.monotonic() - started < LAUNCH_WAIT_S:
                        time.sleep(0.5)
                registry.promote(root, names["broken"], {"why": "soak: a broken promotion"}, check=False)
                log(f"[soak] promoted the broken version at post {i}")
            if i == n // 2:
                # Vetted first (a load each), so that the two pointers land milliseconds apart.
                registry.vet_version(locations[names["b"]], names["b"])
                registry.vet_version(locations[names["a2"]], names["a2"])
                registry.promote(root, names["b"], {"why": "soak: first of two in one interval"})
                registry.promote(root, names["a2"], {"why": "soak: second of two in one interval"})
                pair_at = time.monotonic()
                log(f"[soak] promoted {names['b']} then {names['a2']} at post {i}")
            post = {"id": f"s{i:06d}", "text": TEXTS[i % len(TEXTS)], "keyword": "acme", "lang": "en",
                    "author_id": str(i), "created_at": rfc3339(dt.datetime.now(dt.timezone.utc))}
            publisher.publish([post_message(post)])
            published_at[post["id"]] = time.monotonic()
            if proc.poll() is not None:
                break
            time.sleep(max(0.0, start + (i + 1) / rate - time.monotonic()))
        publisher.close()
        time.sleep(QUIET_S)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.wait(timeout=420)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        job_log.close()
    seconds = time.monotonic() - started
    output = open(log_path).read()
    left = _left_unread(subscription)
    rows = []
    if os.path.isdir(os.path.join(out, "scored_posts")):
        rows = duckdb.connect().execute(
            f"SELECT post_id, text, model_version, label, score FROM "
            f"read_parquet('{out}/scored_posts/**/*.parquet')").fetchall()
    m = re.search(r"pulled (\d+), acknowledged (\d+) \(all written\), not acknowledged (\d+)", output)
    accounting = tuple(map(int, m.groups())) if m else None
    expected = _expected_outputs(locations)
    by_id = {r[0]: r for r in rows}
    in_order = [by_id[p][2] for p in sorted(published_at, key=published_at.get) if p in by_id]
    collapsed = [v for k, v in enumerate(in_order) if k == 0 or in_order[k - 1] != v]
    mismatched = sum(1 for _, text, version, label, score in rows
                     if version not in expected or expected[version][text][0] != label
                     or abs(expected[version][text][1] - score) > 1e-4)
    versions: dict = {}
    for r in rows:
        versions[r[2]] = versions.get(r[2], 0) + 1
    failures = []
    if proc.returncode != 0:
        failures.append(f"pulse run exited {proc.returncode}")
    if "Traceback" in output:
        failures.append("a traceback in the job's output")
    if len(published_at) != n:
        failures.append(f"the job stopped before the end: {len(published_at)} of {n} published")
    if len(rows) != len(by_id) or set(by_id) != set(published_at):
        failures.append(f"stored {len(by_id)} distinct of {len(published_at)} published in {len(rows)} rows")
    if left:
        failures.append(f"{left} posts left unread in the subscription")
    if accounting != (len(published_at), len(published_at), 0):
        failures.append(f"the job's accounting says {accounting}")
    if names["broken"] in versions:
        failures.append(f"{versions[names['broken']]} rows name the broken version")
    late = [p for p, t in published_at.items() if pair_at is not None and t > pair_at + 5 * watch_s]
    if not late or {by_id[p][2] for p in late if p in by_id} != {names["a2"]}:
        failures.append("posts well after the two promotions are not all on the last one")
    order = [names["a"], names["b"], names["a2"]]
    if any(v not in order for v in collapsed) or [order.index(v) for v in collapsed] != sorted(
            order.index(v) for v in collapsed):
        failures.append(f"versions in publish order go back or are unknown: {collapsed}")
    if mismatched:
        failures.append(f"{mismatched} rows do not carry the output of the version they name")
    tail = "\n".join(output.splitlines()[-15:])
    return SoakResult(len(published_at), len(rows), len(by_id), left, proc.returncode, accounting, versions,
                      collapsed, mismatched, failures, seconds, tail)


def _train_b(data: str, dest: str) -> str:
    """Model B for the soak: other weights than the bundled model (1 epoch on 300 posts, seconds)."""
    from models import train

    train.run(data, dest, epochs=1, subset=300, ablation=False, progress=False, version="soak-b")
    return dest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench.registry_soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=4.0, help="posts published per second")
    parser.add_argument("--data", default=os.path.join(REPO, "data"), help="the corpora, to train model B")
    args = parser.parse_args(argv)
    from connectors.emulator import EmulatorNotFound, running_emulator
    from models import locations

    workdir = tempfile.mkdtemp(prefix="registry-soak-")
    try:
        with running_emulator(log_path=os.path.join(workdir, "emulator.log")) as emulator:
            os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
            model_b = _train_b(args.data, os.path.join(workdir, "model-b"))
            result = run_soak(locations.bundled_dir(), model_b, os.path.join(workdir, "run"), args.minutes * 60,
                              args.rate)
    except EmulatorNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"[registry soak] {args.minutes:g} min at {args.rate:g} posts/s: {result.summary()}")
    for failure in result.failures:
        print(f"[registry soak] FAILED: {failure}")
    if result.failures:
        print(result.output_tail)
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
