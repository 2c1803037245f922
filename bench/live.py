"""Live benchmark of the streaming job: Pub/Sub emulator -> `pulse run` -> Parquet, at offered rates.

    python -m bench.live                                   # rates 100,500,1000 msg/s, 1 minute each
    python -m bench.live --rates 50,200 --minutes 1 --out-md live.md
    make bench-live BENCH_MINUTES=10                       # the 10-minute soak (make bench runs it too)

One Google Pub/Sub emulator (connectors/emulator.py) on a free loopback port serves the whole
run. For each offered rate R:

1. a fresh topic and subscription; the job starts as a subprocess (`pulse run --input
   projects/pulse-bench/subscriptions/S --output DIR`, PUBSUB_EMULATOR_HOST set, plus
   --early-firing / --runner / --job-arg), and its RSS (VmRSS of the job's process and its
   children, /proc) is sampled every 5 s;
2. the bench waits until the job is actually reading: it publishes 20 warm-up posts (keyword
   `warmup`) and waits until all of them are in scored_posts' finished Parquet files;
3. synthetic posts (connectors.feeds.publisher.synthetic_posts, as `pulse publish --synthetic`;
   created_at = the moment each is published) are published at R msg/s for M minutes from
   a thread through connectors.feeds.publisher.Publisher, recording each message's publish time;
4. then SIGINT: the job stops pulling, finishes what it read, writes, acknowledges and exits
   (killed after --drain-timeout); what it wrote is read with DuckDB (connectors/query/duckdb_sql.py).

Finally the model alone is timed (posts/s of the job's model through the same model handler,
models.handlers.create_model_handler, at the job's batch size, with bench/run_all.py's
time_batches) and the table is printed (and written as Markdown with --out-md).

Definitions (t0 = the first measured message's publish time, t1 = when publishing ended; times
are wall-clock epoch seconds on this machine: publish times here, processed_at and emitted_at
stamped by the job; warm-up posts are left out of every figure except the job's own lines):

- published msg/s: measured messages published / (t1 - t0) (the offered rate is R).
- sustained msg/s: measured posts whose processed_at lies in [t0, t1] / (t1 - t0).
- last/first: posts processed per second in the last minute [t1 - 60, t1] over the first full
  minute [t0, t0 + 60); when publishing lasts less than 2 minutes, the last 20 % of [t0, t1]
  over the first 20 %. Near 1: the job keeps up all along; falling: it is falling behind.
- backlog at end: measured messages published by t1 minus measured posts processed by t1.
- pane latency p50 / p95: for each measured scored post (not beyond_lateness), the time from
  its created_at to the emitted_at of the first pane that can hold it: within each of its
  windows (window_start, window_end, keyword, lang; a post lies in [window_start, window_end)),
  the posts are ranked by processed_at (ties by post id), and the k-th one is taken to be in the
  first pane of that window whose `posts` count is at least k (panes accumulate); over its
  windows (several when they slide) the earliest such pane counts. A post none of whose windows
  emitted a pane of k posts has no latency and is counted apart ("in no pane").
- RSS start / end: the job's resident memory when publishing starts and when it ends, MiB.
- job / model alone: sustained msg/s over the model's own posts/s at the job's batch size.

Nothing here asserts a time; the ratios come from one run on one machine.
"""
from __future__ import annotations

import argparse
import bisect
import dataclasses
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from typing import Iterable, NamedTuple, Sequence

from pipelines.cli.publish import OneLineParser, UsageError

PROG = "bench.live"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = "pulse-bench"
KEYWORDS = ("acme", "globex", "initech")
WARMUP_KEYWORD = "warmup"
WARMUP_POSTS = 20
WARMUP_ID_START = 1_700_000_000_000_000_000  # measured posts start at synthetic_posts' 1_800_...
RSS_EVERY_S = 5.0
PROGRESS_EVERY_S = 12.0
# The job cancels a drain itself after 300 s (pipelines/sentiment_pipeline.DRAIN_TIMEOUT_S);
# the bench waits a little longer before it kills the job.
DEFAULT_DRAIN_TIMEOUT_S = 420.0
# The job's Pub/Sub read on the DirectRunner hands over bundles of up to 500 messages
# (connectors/sources/pubsub_direct.MAX_MESSAGES) and Beam's BatchElements batches within a bundle,
# adapting its size up to that: the model alone is timed at this batch unless the job is
# given --max_batch_size.
DEFAULT_JOB_BATCH = 500
FORBIDDEN_JOB_ARGS = ("--input", "--output", "--append")
COLUMNS = ("offered msg/s", "published msg/s", "sustained msg/s", "last/first minute", "backlog at end",
           "pane latency p50 / p95", "RSS start / end MiB", "job / model alone")


class BenchError(RuntimeError):
    """A run could not be made (no emulator, the job failed to start); one line."""


# ---- options -----------------------------------------------------------------------------

def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, allow_abbrev=False,
                      description="Live benchmark of the streaming job through Google's Pub/Sub emulator.")
    p.add_argument("--rates", default="100,500,1000", help="offered rates in msg/s, comma-separated")
    p.add_argument("--minutes", type=float, default=1.0, help="minutes of publishing per rate")
    p.add_argument("--early-firing", type=float, default=None, metavar="SECONDS",
                   help="the job's --early_firing (early panes every this many seconds; 0 = none)")
    p.add_argument("--runner", default=None, help="the job's --runner (default: its DirectRunner)")
    p.add_argument("--job-arg", action="append", default=[], metavar="ARG",
                   help="one more argument for pulse run, repeatable: --job-arg=--max_batch_size=256")
    p.add_argument("--model-batch", type=int, default=None, metavar="N",
                   help="batch size for the model alone (default: the job's --max_batch_size, "
                        f"else {DEFAULT_JOB_BATCH}, its largest Pub/Sub bundle)")
    p.add_argument("--startup-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="give up when the job has not scored the warm-up posts after this long")
    p.add_argument("--drain-timeout", type=float, default=DEFAULT_DRAIN_TIMEOUT_S, metavar="SECONDS",
                   help="kill the job when it has not drained this long after SIGINT")
    p.add_argument("--out-md", default=None, metavar="FILE", help="also write the table as Markdown")
    p.add_argument("--keep", action="store_true", help="keep the output directories and logs")
    return p


def parse_rates(text: str) -> list[float]:
    rates = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            rate = float(part)
        except ValueError:
            raise UsageError(f"--rates: {part[:20]!r} is not a number of messages per second") from None
        if not math.isfinite(rate) or rate <= 0:
            raise UsageError(f"--rates: {part} is not a positive number of messages per second")
        rates.append(rate)
    if not rates:
        raise UsageError("--rates is empty (e.g. --rates 100,500,1000)")
    return rates


def flag_value(args: Sequence[str], flag: str) -> str | None:
    """The value of `flag` among pulse run arguments (`--flag=V` or `--flag V`), the last one wins."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Options -> Namespace (rates as floats); UsageError (one line) for a mistake."""
    try:
        args = build_parser().parse_args(list(argv))
    except UsageError as e:
        if "--job-arg: expected one argument" in str(e):
            raise UsageError("--job-arg needs its value after '=' when that value is a flag: "
                             "--job-arg=--max_batch_size=256") from None
        raise
    args.rates = parse_rates(args.rates)
    if not math.isfinite(args.minutes) or args.minutes <= 0:
        raise UsageError("--minutes must be a positive number of minutes")
    if args.early_firing is not None and (not math.isfinite(args.early_firing) or args.early_firing < 0):
        raise UsageError("--early-firing must be 0 (no early panes) or a positive number of seconds")
    for name in ("startup_timeout", "drain_timeout"):
        value = getattr(args, name)
        if not math.isfinite(value) or value <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive number of seconds")
    if args.model_batch is not None and args.model_batch < 1:
        raise UsageError("--model-batch must be a positive batch size")
    for arg in args.job_arg:
        name = arg.split("=", 1)[0]
        if name in FORBIDDEN_JOB_ARGS:
            raise UsageError(f"--job-arg {name}: the benchmark sets --input and --output itself")
        if name == "--runner":
            raise UsageError("--job-arg --runner: use --runner")
        if name == "--early_firing":
            raise UsageError("--job-arg --early_firing: use --early-firing")
    batch = flag_value(args.job_arg, "--max_batch_size")
    if args.model_batch is None:
        try:
            args.model_batch = int(batch) if batch is not None else DEFAULT_JOB_BATCH
        except ValueError:
            raise UsageError(f"--job-arg --max_batch_size: {batch[:20]!r} is not a batch size") from None
    return args


def job_arguments(args: argparse.Namespace, subscription: str, output: str) -> list[str]:
    """The arguments of `pulse run` for one rate."""
    extra = list(args.job_arg)
    if args.early_firing is not None:
        extra.append(f"--early_firing={args.early_firing:g}")
    if args.runner:
        extra.append(f"--runner={args.runner}")
    return ["run", "--input", subscription, "--output", output] + extra


def pulse_command() -> list[str]:
    """The `pulse` console script beside this interpreter (the venv's), else the CLI module."""
    script = os.path.join(os.path.dirname(sys.executable), "pulse")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "pipelines.cli"]


# ---- memory ------------------------------------------------------------------------------

def vm_rss_kib(pid: int) -> int | None:
    """VmRSS of one process in KiB (None when it is gone or a kernel thread)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def descendants(pid: int) -> list[int]:
    """The process ids of pid's children, grandchildren, ... (from /proc/*/stat)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        out.extend(children)
        todo.extend(children)
    return out


def tree_rss_mib(pid: int) -> float | None:
    """Resident memory of pid and its descendants in MiB (the job runs in one process; a runner
    that starts workers would show them too). None when the process is gone."""
    own = vm_rss_kib(pid)
    if own is None:
        return None
    return (own + sum(vm_rss_kib(child) or 0 for child in descendants(pid))) / 1024


class RssSampler:
    """Samples tree_rss_mib(pid) every `every_s` seconds in a thread; `sample()` takes one now."""

    def __init__(self, pid: int, every_s: float = RSS_EVERY_S):
        self.pid, self.every_s = pid, every_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._lock = threading.Lock()

    def sample(self) -> float | None:
        value = tree_rss_mib(self.pid)
        if value is not None:
            with self._lock:
                self.samples.append((time.time(), value))
        return value

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def start(self) -> "RssSampler":
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def latest(self) -> float | None:
        with self._lock:
            return self.samples[-1][1] if self.samples else None

    @property
    def peak(self) -> float | None:
        with self._lock:
            return max(v for _, v in self.samples) if self.samples else None


# ---- the job's files while it runs -------------------------------------------------------

class ScoredCounter:
    """Counts the rows of scored_posts' finished Parquet files as they appear (only new files
    are read, one column): measured posts and warm-up posts. Cheap enough for progress lines."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self._seen: dict[str, tuple[int, int]] = {}

    def update(self) -> tuple[int, int]:
        """-> (measured posts, warm-up posts) written so far."""
        import pyarrow.parquet as pq

        from connectors.query.duckdb_sql import table_files

        for path in table_files(self.output_dir, "scored_posts"):
            if path in self._seen:
                continue
            try:
                keywords = pq.read_table(path, columns=["keyword"]).column("keyword").to_pylist()
            except Exception:  # noqa: BLE001  (replaced while we read it: next time)
                continue
            warm = sum(1 for k in keywords if k == WARMUP_KEYWORD)
            self._seen[path] = (len(keywords) - warm, warm)
        return sum(m for m, _ in self._seen.values()), sum(w for _, w in self._seen.values())


# ---- publishing --------------------------------------------------------------------------

class PacedPosts:
    """Synthetic post messages at `rate` per second for `duration_s` seconds (a generator for
    Publisher.publish, which is given no rate of its own): each post is generated after its
    pacing wait, so its created_at is the moment it is handed to the client, and that moment
    is recorded in `times` (epoch seconds). `t0` / `t1`: when publishing started and ended."""

    def __init__(self, rate: float, duration_s: float, keywords: tuple[str, ...] = KEYWORDS, seed: int = 0):
        self.rate, self.duration_s, self.keywords, self.seed = rate, duration_s, keywords, seed
        self.times: list[float] = []
        self.t0: float | None = None
        self.t1: float | None = None
        self.stop = threading.Event()

    def __iter__(self):
        from connectors.feeds.publisher import Pacer, post_message, synthetic_posts
        from connectors.feeds.rate_limit import SystemClock

        pacer = Pacer(self.rate, SystemClock(self.stop))
        posts = synthetic_posts(10 ** 15, keywords=self.keywords, seed=self.seed)
        self.t0 = time.time()
        deadline = self.t0 + self.duration_s
        try:
            while not self.stop.is_set() and time.time() < deadline:
                pacer.wait()
                if self.stop.is_set() or time.time() >= deadline:
                    break
                post = next(posts)
                self.times.append(time.time())
                yield post_message(post)
        finally:
            self.t1 = max(time.time(), deadline) if not self.stop.is_set() else time.time()

    def published_by(self, when: float) -> int:
        return bisect.bisect_right(self.times, when)


def warmup_messages(n: int = WARMUP_POSTS):
    from connectors.feeds.publisher import post_message, synthetic_posts
    return [post_message(p) for p in synthetic_posts(n, keywords=(WARMUP_KEYWORD,), seed=1,
                                                     id_start=WARMUP_ID_START)]


# ---- figures -----------------------------------------------------------------------------

class Throughput(NamedTuple):
    sustained: float  # msg/s processed during [t0, t1]
    first: float  # msg/s in the first segment
    last: float  # msg/s in the last segment
    segment: str  # "minute" or "20%"

    @property
    def ratio(self) -> float:
        return self.last / self.first if self.first > 0 else float("nan")


def segments(t0: float, t1: float) -> tuple[tuple[float, float], tuple[float, float], str]:
    """The first and last segment of [t0, t1]: full minutes when it lasts 2 minutes or more, else 20 %."""
    length = t1 - t0
    if length >= 120:
        return (t0, t0 + 60), (t1 - 60, t1), "minute"
    fifth = length / 5
    return (t0, t0 + fifth), (t1 - fifth, t1), "20%"


def count_between(sorted_times: Sequence[float], start: float, end: float, closed: bool = False) -> int:
    """How many of sorted_times lie in [start, end) ([start, end] with closed=True)."""
    hi = bisect.bisect_right(sorted_times, end) if closed else bisect.bisect_left(sorted_times, end)
    return max(0, hi - bisect.bisect_left(sorted_times, start))


def throughput(processed_times: Iterable[float], t0: float, t1: float) -> Throughput:
    """Posts processed per second (processed_at) during [t0, t1], and in its first and last segment."""
    times = sorted(processed_times)
    length = t1 - t0
    if length <= 0:
        raise ValueError("the publishing interval is empty")
    (a0, a1), (b0, b1), label = segments(t0, t1)
    return Throughput(count_between(times, t0, t1, closed=True) / length,
                      count_between(times, a0, a1) / (a1 - a0),
                      count_between(times, b0, b1, closed=True) / (b1 - b0), label)


def backlog_at(published_times: Sequence[float], processed_times: Sequence[float], when: float) -> int:
    """Messages published by `when` minus posts processed by `when`."""
    return (sum(1 for t in published_times if t <= when)
            - sum(1 for t in processed_times if t <= when))


def _exclude_clause(exclude: Sequence[str]) -> tuple[str, list]:
    if not exclude:
        return "TRUE", []
    return f"keyword NOT IN ({', '.join('?' for _ in exclude)})", list(exclude)


def processed_times(con, exclude: Sequence[str] = (WARMUP_KEYWORD,)):
    """processed_at (epoch seconds, sorted) of each scored (post id, keyword), first processing kept."""
    where, params = _exclude_clause(exclude)
    rows = con.execute(f"""
        SELECT epoch_us(min(processed_at)) / 1e6 AS t FROM scored_posts WHERE {where}
        GROUP BY post_id, keyword ORDER BY t""", params).fetchall()
    return [r[0] for r in rows]


LATENCY_SQL = """
WITH posts AS (
  SELECT post_id, keyword, lang, min(created_at) AS created_at, min(processed_at) AS processed_at
  FROM scored_posts
  WHERE NOT coalesce(beyond_lateness, FALSE) AND {where}
  GROUP BY post_id, keyword, lang
),
windows AS (
  SELECT DISTINCT window_start, window_end, keyword, lang FROM sentiment_windows
),
ranked AS (
  SELECT p.post_id, p.keyword, p.created_at, w.window_start, w.window_end, w.lang,
         ROW_NUMBER() OVER (PARTITION BY w.window_start, w.window_end, w.keyword, w.lang
                            ORDER BY p.processed_at, p.post_id) AS k
  FROM posts p
  JOIN windows w ON w.keyword = p.keyword AND w.lang = p.lang
   AND p.created_at >= w.window_start AND p.created_at < w.window_end
),
panes AS (
  SELECT window_start, window_end, keyword, lang, pane_index, max(posts) AS posts, min(emitted_at) AS emitted_at
  FROM sentiment_windows GROUP BY ALL
),
first_pane AS (
  SELECT r.post_id, r.keyword, r.created_at, min(s.emitted_at) AS emitted_at
  FROM ranked r
  JOIN panes s ON s.window_start = r.window_start AND s.window_end = r.window_end
   AND s.keyword = r.keyword AND s.lang = r.lang AND s.posts >= r.k
  GROUP BY r.post_id, r.keyword, r.created_at
)
SELECT (epoch_us(emitted_at) - epoch_us(created_at)) / 1e6 AS latency_s, (SELECT count(*) FROM posts) AS n
FROM first_pane
"""


def pane_latencies(con, exclude: Sequence[str] = (WARMUP_KEYWORD,)) -> tuple[list[float], int]:
    """(latency in seconds of each post that reached a pane, posts that reached none): see the
    module docstring for the definition. `con`: connectors.query.duckdb_sql.connect(output_dir)."""
    where, params = _exclude_clause(exclude)
    rows = con.execute(LATENCY_SQL.format(where=where), params).fetchall()
    if not rows:
        n = con.execute(f"SELECT count(*) FROM (SELECT DISTINCT post_id, keyword FROM scored_posts "
                        f"WHERE NOT coalesce(beyond_lateness, FALSE) AND {where})", params).fetchone()[0]
        return [], n
    latencies = sorted(r[0] for r in rows)
    return latencies, rows[0][1] - len(latencies)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation (numpy's default); nan when empty."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


# ---- one rate ----------------------------------------------------------------------------

@dataclasses.dataclass
class RateResult:
    offered: float
    output_dir: str
    job_args: list[str]  # pulse's arguments (run --input ... --output ...)
    published: int = 0
    warmup: int = 0
    t0: float = 0.0
    t1: float = 0.0
    startup_s: float = float("nan")
    publish_error: str | None = None
    throughput: Throughput | None = None
    processed_total: int = 0
    processed_by_t1: int = 0
    backlog: int = 0
    latencies: list[float] = dataclasses.field(default_factory=list)
    no_pane: int = 0
    beyond_lateness: int = 0
    dead_letters: int = 0
    rss_start: float | None = None
    rss_end: float | None = None
    rss_peak: float | None = None
    drain_s: float = float("nan")
    killed: bool = False
    exit_code: int | None = None
    job_line: str | None = None
    pubsub_line: str | None = None
    pulled: int | None = None
    log_notes: list[str] = dataclasses.field(default_factory=list)
    log_path: str = ""
    model_alone: float | None = None
    model_batch: int | None = None
    error: str | None = None

    @property
    def published_rate(self) -> float:
        return self.published / (self.t1 - self.t0) if self.t1 > self.t0 else float("nan")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def create_topic_and_subscription(tag: str) -> tuple[str, str]:
    from google.cloud import pubsub_v1

    suffix = uuid.uuid4().hex[:6]
    topic = f"projects/{PROJECT}/topics/posts-{tag}-{suffix}"
    subscription = f"projects/{PROJECT}/subscriptions/live-{tag}-{suffix}"
    publisher = pubsub_v1.PublisherClient()
    publisher.create_topic(name=topic)
    publisher.stop()
    with pubsub_v1.SubscriberClient() as subscriber:
        subscriber.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=60)
    return topic, subscription


# TensorFlow's start-up lines on a machine without a GPU: not the job's warnings.
LOG_NOISE = ("cuInit", "cuda drivers", "absl::InitializeLog", "oneDNN custom operations")


def job_lines(text: str) -> tuple[str | None, str | None, list[str]]:
    """From the job's output: (its final state and accounting line, its Pub/Sub report line,
    its warnings and errors)."""
    state = pubsub = None
    notes = []
    for line in text.splitlines():
        if any(noise in line for noise in LOG_NOISE):
            continue
        if line.startswith("pulse run: ") and " = scored " in line:
            state = line[len("pulse run: "):]
        elif line.startswith("pulse run: Pub/Sub "):
            pubsub = line[len("pulse run: "):]
        elif (" WARNING " in line or " ERROR " in line or "Traceback" in line or line.startswith("pulse run: error")
              or re.match(r"\w*(Error|Exception)\b", line)):
            notes.append(line.strip())
    return state, pubsub, notes


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def run_rate(args: argparse.Namespace, rate: float, workdir: str, env: dict) -> RateResult:
    """One offered rate: job up, warm-up, publish for M minutes, drain, read the tables."""
    from connectors.feeds.publisher import Publisher

    tag = f"r{rate:g}".replace(".", "_")
    rate_dir = os.path.join(workdir, tag)
    os.makedirs(rate_dir)
    output = os.path.join(rate_dir, "out")
    topic, subscription = create_topic_and_subscription(tag)
    job_args = job_arguments(args, subscription, output)
    command = pulse_command() + job_args
    result = RateResult(rate, output, job_args, log_path=os.path.join(rate_dir, "job.log"))
    label = f"[{rate:g} msg/s]"
    log(f"{label} starting the job: pulse {' '.join(job_args)}")
    publisher = Publisher(topic, max_latency_s=0.01)
    job_log = open(result.log_path, "wb")
    started = time.monotonic()
    # A session of its own: a Ctrl-C in the terminal reaches the bench, which kills it (below).
    proc = subprocess.Popen(command, stdout=job_log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                            start_new_session=True)
    sampler = RssSampler(proc.pid).start()
    counter = ScoredCounter(output)
    posts = PacedPosts(rate, args.minutes * 60)
    thread = None
    try:
        # Is the job reading yet? Its log cannot say: the last line it writes before it runs
        # ("model ..., input ..., output ...") comes before the runner starts and the model
        # loads, and nothing is logged at its first pull. So the bench publishes a few warm-up
        # posts and waits until all of them are in scored_posts' finished files: pulled,
        # parsed, scored by the loaded model and written, the whole path the measured posts
        # take. They carry a keyword of their own, so they are in no measured window, and
        # every figure leaves them out.
        publisher.publish(warmup_messages())
        result.warmup = WARMUP_POSTS
        next_note = time.monotonic() + PROGRESS_EVERY_S
        while True:
            if proc.poll() is not None:
                tail = _tail(result.log_path, 40)
                last = [line for line in tail.splitlines() if line.strip()]
                errors = [line for line in last if "error" in line.lower()]
                raise BenchError(f"pulse run exited with {proc.returncode} during start-up: "
                                 f"{(errors or last or ['(no output)'])[-1].strip()} (log: {result.log_path})")
            _, warm = counter.update()
            if warm >= WARMUP_POSTS:
                break
            elapsed = time.monotonic() - started
            if elapsed > args.startup_timeout:
                raise BenchError(f"the job had not written the {WARMUP_POSTS} warm-up posts after "
                                 f"{args.startup_timeout:.0f} s (log: {result.log_path})")
            if time.monotonic() >= next_note:
                next_note += PROGRESS_EVERY_S
                log(f"{label} waiting for the job to score the warm-up posts: {elapsed:.0f} s, "
                    f"{warm}/{WARMUP_POSTS} written, RSS {_mib(sampler.latest)}")
            time.sleep(1.0)
        result.startup_s = time.monotonic() - started
        log(f"{label} the job is reading (warm-up written after {result.startup_s:.0f} s); "
            f"publishing {rate:g} msg/s for {args.minutes:g} min")

        failure: list[BaseException] = []

        def publish():
            try:
                publisher.publish(posts)
            except BaseException as e:  # noqa: BLE001  (reported below)
                failure.append(e)

        thread = threading.Thread(target=publish, name="live-publisher", daemon=True)
        thread.start()
        while posts.t0 is None and thread.is_alive():
            time.sleep(0.01)
        result.rss_start = sampler.sample()
        next_note = time.monotonic() + PROGRESS_EVERY_S
        while thread.is_alive():
            thread.join(0.5)
            if proc.poll() is not None:
                posts.stop.set()
                thread.join(30)
                raise BenchError(f"pulse run exited with {proc.returncode} while posts were published "
                                 f"(log: {result.log_path})")
            if posts.t1 is not None and result.rss_end is None:
                result.rss_end = sampler.sample()  # publishing ended; the client waits for acks
            if time.monotonic() >= next_note:
                next_note += PROGRESS_EVERY_S
                measured, _ = counter.update()
                elapsed = time.time() - (posts.t0 or time.time())
                log(f"{label} {elapsed:5.0f} s: published {len(posts.times)} "
                    f"({len(posts.times) / max(elapsed, 1e-9):.0f}/s), processed {measured} "
                    f"(in the job's files), RSS {_mib(sampler.latest)}")
        if result.rss_end is None:
            result.rss_end = sampler.sample()
        if failure:
            result.publish_error = f"{type(failure[0]).__name__}: {failure[0]}"
        result.t0, result.t1 = posts.t0 or time.time(), posts.t1 or time.time()
        result.published = len(posts.times)

        # Drain: SIGINT, as Ctrl-C would; the job stops pulling, finishes what it read, writes,
        # acknowledges and exits.
        sigint_at = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        log(f"{label} published {result.published} in {result.t1 - result.t0:.1f} s; SIGINT sent, draining")
        next_note = time.monotonic() + PROGRESS_EVERY_S
        while proc.poll() is None:
            waited = time.monotonic() - sigint_at
            if waited > args.drain_timeout:
                result.killed = True
                log(f"{label} the job did not drain in {args.drain_timeout:.0f} s: SIGKILL")
                _kill_group(proc)
                break
            if time.monotonic() >= next_note:
                next_note += PROGRESS_EVERY_S
                measured, _ = counter.update()
                log(f"{label} draining {waited:.0f} s: processed {measured} (in the job's files), "
                    f"RSS {_mib(sampler.latest)}")
            time.sleep(0.5)
        result.drain_s = time.monotonic() - sigint_at
        result.exit_code = proc.returncode
    finally:
        posts.stop.set()
        if proc.poll() is None:
            _kill_group(proc)
        sampler.stop()
        job_log.close()
        if thread is not None:
            thread.join(10)
        try:
            publisher.close()
        except Exception:  # noqa: BLE001
            pass
    result.rss_peak = sampler.peak
    with open(result.log_path, encoding="utf-8", errors="replace") as f:
        result.job_line, result.pubsub_line, result.log_notes = job_lines(f.read())
    if result.pubsub_line:
        match = re.search(r"pulled (\d+)", result.pubsub_line)
        result.pulled = int(match.group(1)) if match else None
    analyse(result, posts.times)
    return result


def analyse(result: RateResult, published_times: Sequence[float]) -> None:
    """Read the job's tables (DuckDB) into result's figures."""
    from connectors.query.duckdb_sql import connect

    con = connect(result.output_dir)
    try:
        processed = processed_times(con)
        result.processed_total = len(processed)
        result.processed_by_t1 = count_between(processed, float("-inf"), result.t1, closed=True)
        result.throughput = throughput(processed, result.t0, result.t1)
        result.backlog = backlog_at(published_times, processed, result.t1)
        result.latencies, result.no_pane = pane_latencies(con)
        where, params = _exclude_clause((WARMUP_KEYWORD,))
        result.beyond_lateness = con.execute(
            f"SELECT count(*) FROM scored_posts WHERE beyond_lateness AND {where}", params).fetchone()[0]
        result.dead_letters = con.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    finally:
        con.close()


# ---- the model alone ---------------------------------------------------------------------

def model_alone(job_args: Sequence[str], batch: int, posts: int = 4096) -> tuple[float, str]:
    """Posts/s of the job's model (its --model, default bundled) through the same model handler
    (models.handlers.create_model_handler), on the synthetic posts' cleaned texts, at `batch`
    (bench/run_all.time_batches: one untimed warm-up batch, then every batch timed)."""
    import models  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
    from bench.run_all import bundled_model_dir, time_batches
    from connectors.feeds.publisher import synthetic_posts
    from models.handlers import create_model_handler
    from models.textnorm import normalize

    model = flag_value(job_args, "--model") or "bundled"
    texts = [normalize(p["text"]) for p in synthetic_posts(posts, keywords=KEYWORDS)]
    with tempfile.TemporaryDirectory(prefix="bench-live-model-") as workdir:
        if model == "bundled":
            model, which = bundled_model_dir(workdir)
        else:
            which = model
        handler, _spec = create_model_handler(model)
        loaded = handler.load_model()
        timing = time_batches(lambda chunk: list(handler.run_inference(list(chunk), loaded)), texts, batch,
                              "model alone", progress=False)
    return timing.posts_per_s, which


# ---- report ------------------------------------------------------------------------------

def _mib(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f} MiB"


def _num(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"


def table_row(r: RateResult) -> list[str]:
    if r.error:
        return [f"{r.offered:g}", "–", "–", "–", "–", "–", "–", "failed (details below)"]
    t = r.throughput
    ratio = "–" if t is None else f"{t.ratio:.2f}" + ("" if t.segment == "minute" else " (20%)")
    lat = ("–" if not r.latencies else
           f"{percentile(r.latencies, 50):.1f} / {percentile(r.latencies, 95):.1f} s")
    backlog = f"{r.backlog:,}"
    if r.published_rate and r.published_rate > 0 and r.backlog > 0:
        backlog += f" ({r.backlog / r.published_rate:.1f} s)"
    job_model = "–"
    if t is not None and r.model_alone:
        job_model = f"{t.sustained / r.model_alone:.4f}"
    return [f"{r.offered:g}", _num(r.published_rate), _num(None if t is None else t.sustained),
            ratio, backlog, lat,
            f"{_num(r.rss_start, 0)} / {_num(r.rss_end, 0)}", job_model]


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "| " + " | ".join("---:" for _ in COLUMNS) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(COLUMNS[i]), *(len(row[i]) for row in rows)) for i in range(len(COLUMNS))]
    def line(cells):
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(COLUMNS), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def details(r: RateResult, minutes: float) -> list[str]:
    out = [f"[offered {r.offered:g} msg/s, {minutes:g} min]" + (f" pulse {' '.join(r.job_args)}" if r.job_args else "")]
    if r.error:
        out.append(f"  failed: {r.error}")
        return out
    t = r.throughput
    out.append(f"  start-up: {r.startup_s:.0f} s until the {r.warmup} warm-up posts were scored and written")
    achieved = r.published_rate
    short = " (the publisher did NOT reach the offered rate)" if achieved < 0.98 * r.offered else ""
    out.append(f"  published {r.published:,} messages in {r.t1 - r.t0:.1f} s: offered {r.offered:g} msg/s, "
               f"achieved {achieved:.1f} msg/s{short}" + (f"; publish error: {r.publish_error}"
                                                          if r.publish_error else ""))
    if t is not None:
        seg = "minute" if t.segment == "minute" else "20% of the interval"
        out.append(f"  processed during publishing: {r.processed_by_t1:,} ({t.sustained:.1f} msg/s); "
                   f"first {seg} {t.first:.1f} msg/s, last {seg} {t.last:.1f} msg/s, last/first {t.ratio:.2f}")
    unread = ""
    if r.pulled is not None:
        unread = f"; never read by the job (left in the subscription): {r.published + r.warmup - r.pulled:,}"
    out.append(f"  backlog at end of publishing: {r.backlog:,}; processed during the drain: "
               f"{r.processed_total - r.processed_by_t1:,}{unread}")
    if r.latencies:
        out.append(f"  pane latency over {len(r.latencies):,} posts: p50 {percentile(r.latencies, 50):.1f} s, "
                   f"p95 {percentile(r.latencies, 95):.1f} s, max {r.latencies[-1]:.1f} s; "
                   f"posts in no pane: {r.no_pane:,}; beyond the allowed lateness: {r.beyond_lateness:,}")
    else:
        out.append(f"  pane latency: no post reached a pane (posts in no pane: {r.no_pane:,})")
    out.append(f"  RSS (job's process tree, every {RSS_EVERY_S:g} s): start of publishing {_mib(r.rss_start)}, "
               f"end {_mib(r.rss_end)}, peak {_mib(r.rss_peak)}")
    if r.model_alone:
        ratio = f"; job / model alone {t.sustained / r.model_alone:.4f}" if t is not None else ""
        out.append(f"  model alone: {r.model_alone:,.0f} posts/s at batch {r.model_batch}{ratio}")
    how = "SIGKILL after the drain timeout" if r.killed else f"exit {r.exit_code}"
    out.append(f"  drain: SIGINT -> {how} in {r.drain_s:.0f} s; dead letters {r.dead_letters:,}")
    out.append(f"  job: {r.job_line or '(no accounting line in its output)'}")
    out.append(f"  job: {r.pubsub_line or '(no Pub/Sub line in its output)'}")
    if r.log_notes:
        out.append(f"  job log: {len(r.log_notes)} warning/error line(s), e.g.:")
        out += [f"    {line[:240]}" for line in r.log_notes[:5]]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2

    from connectors import emulator

    command, why = emulator.find_emulator()
    if command is None:
        print(f"{PROG}: error: {why}; the live benchmark needs Google's Pub/Sub emulator "
              "(gcloud components install pubsub-emulator)", file=sys.stderr)
        return 1

    # Ctrl-C and SIGTERM end the run through the cleanup below (job killed, emulator stopped),
    # also where SIGINT was inherited as ignored (a background job of a script).
    def interrupted(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous_handlers = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    workdir = tempfile.mkdtemp(prefix="pulse-live-")
    results: list[RateResult] = []
    previous_host = os.environ.get("PUBSUB_EMULATOR_HOST")
    status = 0
    try:
        process = emulator.EmulatorProcess(command, emulator.free_port(), os.path.join(workdir, "emulator.log"))
        try:
            log(f"starting the Pub/Sub emulator on 127.0.0.1:{process.port}")
            process.start()
        except emulator.EmulatorError as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return 1
        try:
            os.environ["PUBSUB_EMULATOR_HOST"] = process.host
            env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONUNBUFFERED="1")
            env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            for rate in args.rates:
                try:
                    results.append(run_rate(args, rate, workdir, env))
                except BenchError as e:
                    log(f"[{rate:g} msg/s] error: {e}")
                    results.append(RateResult(rate, "", [], error=str(e)))
                    status = 1
                except Exception as e:  # noqa: BLE001  (the other rates still run; the traceback is shown)
                    traceback.print_exc()
                    results.append(RateResult(rate, "", [], error=f"{type(e).__name__}: {e}"))
                    status = 1
        finally:
            process.stop(signal.SIGTERM)
            if previous_host is None:
                os.environ.pop("PUBSUB_EMULATOR_HOST", None)
            else:
                os.environ["PUBSUB_EMULATOR_HOST"] = previous_host

        measured = [r for r in results if not r.error]
        which = None
        if measured:
            log(f"timing the model alone at batch {args.model_batch}")
            speed, which = model_alone(args.job_arg, args.model_batch)
            for r in measured:
                r.model_alone, r.model_batch = speed, args.model_batch
            log(f"model alone ({which}): {speed:,.0f} posts/s at batch {args.model_batch}")
        if any(r.killed or (r.exit_code not in (0, None)) for r in measured):
            status = 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        if args.keep:
            log(f"kept the output directories and logs under {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = [table_row(r) for r in results]
    print()
    print(text_table(rows))
    segment_note = ("last/first: the last over the first minute of publishing" if args.minutes >= 2 else
                    "last/first (20%): publishing lasted under 2 minutes, so the last 20% of it over the first 20%")
    short = [f"{r.offered:g}" for r in results if not r.error and r.published_rate < 0.98 * r.offered]
    if short:
        print(f"\nthe publisher did NOT reach the offered rate at {', '.join(short)} msg/s (see published msg/s)")
    notes = [f"{segment_note}; backlog in messages (and seconds of input); pane latency from created_at "
             f"to the first pane holding the post; job / model alone = sustained / the model's posts/s "
             f"at batch {args.model_batch} (bench/README.md)"]
    if which and measured:
        notes.append(f"model alone: {measured[0].model_alone:,.0f} posts/s ({which}, batch {args.model_batch}); "
                     f"{args.minutes:g} min of publishing per rate")
    print("\n" + "\n".join(notes))
    for r in results:
        print()
        print("\n".join(details(r, args.minutes)))
    if args.out_md:
        with open(args.out_md, "w", encoding="utf-8") as f:
            f.write(markdown_table(rows) + "\n\n" + "\n\n".join(notes) + "\n")
        print(f"\nwrote {args.out_md}")
    return status


if __name__ == "__main__":
    sys.exit(main())
