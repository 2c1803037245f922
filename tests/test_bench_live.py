"""bench/live.py's pure parts (no emulator, no job): throughput per segment, backlog, pane latency
over hand-made Parquet tables, the flags' one-line errors; and connectors/emulator.py without
an emulator."""
from __future__ import annotations

import datetime as dt
import json
import os

import pyarrow.parquet as pq
import pytest

from bench import live
from connectors import emulator
from connectors.query.duckdb_sql import connect
from connectors.sinks.parquet import to_table
from models.contracts import SCORED_POSTS, SENTIMENT_WINDOWS
from pipelines.cli.publish import UsageError

UTC = dt.timezone.utc
T = dt.datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def at(seconds: float) -> dt.datetime:
    return T + dt.timedelta(seconds=seconds)


# ---- throughput and backlog ----------------------------------------------------------------

def test_throughput_uses_first_and_last_minute_when_publishing_lasts_two_minutes_or_more():
    t0, t1 = 1000.0, 1300.0  # 5 minutes
    # 10/s in the first minute, 5/s afterwards; one post after t1 (the drain) is not counted.
    times = [t0 + i / 10 for i in range(600)] + [t0 + 60 + i / 5 for i in range(1200)] + [t1 + 5]
    result = live.throughput(times, t0, t1)
    assert result.segment == "minute"
    assert result.first == pytest.approx(10.0)
    assert result.last == pytest.approx(5.0, abs=0.02)  # [t1 - 60, t1], t1 itself included
    assert result.ratio == pytest.approx(0.5, abs=0.01)
    assert result.sustained == pytest.approx(1800 / 300, abs=0.01)


def test_throughput_uses_first_and_last_20_percent_of_a_short_run():
    t0, t1 = 0.0, 60.0
    times = [i * 0.5 for i in range(24)] + [48.0 + i for i in range(12)]  # 2/s in [0, 12), 1/s in [48, 60)
    (a0, a1), (b0, b1), label = live.segments(t0, t1)
    assert (a0, a1, b0, b1, label) == (0.0, 12.0, 48.0, 60.0, "20%")
    result = live.throughput(times, t0, t1)
    assert result.first == pytest.approx(2.0)
    assert result.last == pytest.approx(1.0)
    assert result.ratio == pytest.approx(0.5)
    with pytest.raises(ValueError):
        live.throughput(times, 5.0, 5.0)


def test_backlog_is_published_minus_processed_by_the_end_of_publishing():
    published = [1.0, 2.0, 3.0, 4.0, 5.0]
    processed = [1.5, 2.5, 5.5, 6.0]  # two of them after the end (t = 5)
    assert live.backlog_at(published, processed, 5.0) == 3
    assert live.backlog_at(published, processed, 10.0) == 1
    assert live.count_between([1.0, 2.0, 3.0], 1.0, 3.0) == 2
    assert live.count_between([1.0, 2.0, 3.0], 1.0, 3.0, closed=True) == 3


def test_percentile_interpolates_like_numpy():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert live.percentile(values, 50) == 3.0
    assert live.percentile(values, 95) == pytest.approx(4.8)
    assert live.percentile([7.0], 95) == 7.0
    assert live.percentile([], 50) != live.percentile([], 50)  # nan


# ---- pane latency over Parquet tables ------------------------------------------------------

def post(post_id, keyword, created, processed, lang="en", beyond=False) -> dict:
    return {"post_id": post_id, "keyword": keyword, "lang": lang, "author_id": "1", "created_at": at(created),
            "text": "t", "clean_text": "t", "label": "neutral", "score": 0.0, "stars": None,
            "confidence": 0.9, "token_count": 1, "oov_count": 0, "model_version": "v",
            "processed_at": at(processed), "beyond_lateness": beyond}


def pane(start, keyword, posts, pane_index, emitted, lang="en", size=60, timing="EARLY") -> dict:
    return {"window_start": at(start), "window_end": at(start + size), "keyword": keyword, "lang": lang,
            "posts": posts, "positive": 0, "neutral": posts, "negative": 0, "mean_score": 0.0,
            "mean_confidence": 0.9, "low_confidence": 0, "oov_rate": 0.0, "pane_index": pane_index,
            "pane_timing": timing, "model_version": "v", "emitted_at": at(emitted)}


def write_tables(root, scored: list[dict], windows: list[dict]) -> str:
    for table, fields, rows in (("scored_posts", SCORED_POSTS, scored), ("sentiment_windows", SENTIMENT_WINDOWS, windows)):
        folder = root / table / "2026-11-25"
        folder.mkdir(parents=True)
        # Two files per table, as the job writes one per bundle and pane.
        half = len(rows) // 2
        for i, part in enumerate((rows[:half], rows[half:])):
            pq.write_table(to_table(part, fields), str(folder / f"120000-p{i}-{i:08x}.parquet"))
    return str(root)


def test_pane_latency_is_created_at_to_the_first_pane_whose_count_reaches_the_posts_rank(tmp_path):
    scored = [
        # window 12:00 acme/en: ranks by processed_at: b (k=1), a (k=2), c (k=3)
        post("a", "acme", created=5, processed=9),
        post("b", "acme", created=7, processed=8),
        post("c", "acme", created=20, processed=21),
        post("c", "acme", created=20, processed=40),  # redelivered and scored again: first processing counts
        # window 12:01 globex/en: two posts, but its only pane counts one: the second is in no pane
        post("d", "globex", created=61, processed=62),
        post("e", "globex", created=62, processed=63),
        post("late", "acme", created=3, processed=900, beyond=True),  # beyond the lateness: in no pane, left out
        post("w", live.WARMUP_KEYWORD, created=1, processed=2),  # warm-up: left out
    ]
    windows = [
        pane(0, "acme", 2, 0, emitted=10),
        pane(0, "acme", 3, 1, emitted=30),
        pane(0, "acme", 3, 2, emitted=62, timing="ON_TIME"),
        pane(0, "*", 3, 0, emitted=10, lang="*"),  # roll-ups are not the posts' keys
        pane(60, "globex", 1, 0, emitted=70),
        pane(0, live.WARMUP_KEYWORD, 1, 0, emitted=5),
    ]
    con = connect(write_tables(tmp_path, scored, windows))
    try:
        latencies, no_pane = live.pane_latencies(con)
        processed = live.processed_times(con)
    finally:
        con.close()
    # b: 10 - 7 = 3; a: 10 - 5 = 5 (rank 2, pane 0 holds 2); c: 30 - 20 = 10 (rank 3); d: 70 - 61 = 9.
    assert latencies == pytest.approx([3.0, 5.0, 9.0, 10.0])
    assert no_pane == 1  # e
    assert processed == pytest.approx([at(s).timestamp() for s in (8, 9, 21, 62, 63, 900)])


def test_pane_latency_with_sliding_windows_takes_the_first_pane_of_any_window(tmp_path):
    # Windows of 60 s every 30 s: a post at 12:00:40 is in [12:00:00, 12:01:00) and [12:00:30, 12:01:30).
    scored = [post("x", "acme", created=40, processed=41)]
    windows = [pane(0, "acme", 1, 0, emitted=55), pane(30, "acme", 1, 0, emitted=50)]
    con = connect(write_tables(tmp_path, scored, windows))
    try:
        latencies, no_pane = live.pane_latencies(con)
    finally:
        con.close()
    assert latencies == pytest.approx([10.0]) and no_pane == 0


def test_pane_latency_without_any_pane(tmp_path):
    con = connect(write_tables(tmp_path, [post("a", "acme", 1, 2), post("b", "acme", 2, 3)], []))
    try:
        assert live.pane_latencies(con) == ([], 2)
    finally:
        con.close()


# ---- flags ---------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--rates", "100,abc"], "--rates: 'abc' is not a number"),
    (["--rates", "0"], "--rates: 0 is not a positive number"),
    (["--rates", ","], "--rates is empty"),
    (["--minutes", "0"], "--minutes must be a positive number"),
    (["--minutes", "nan"], "--minutes must be a positive number"),
    (["--early-firing", "-1"], "--early-firing must be 0"),
    (["--drain-timeout", "0"], "--drain-timeout must be a positive"),
    (["--minuts", "2"], "did you mean --minutes?"),
    (["--job-arg", "--max_batch_size=3"], "--job-arg=--max_batch_size=256"),
    (["--job-arg=--output=/tmp/x"], "sets --input and --output itself"),
    (["--job-arg=--runner=DirectRunner"], "use --runner"),
    (["--job-arg=--max_batch_size=big"], "is not a batch size"),
    (["--model-batch", "0"], "--model-batch must be a positive"),
])
def test_bad_flags_are_one_line_errors(argv, message, capsys):
    with pytest.raises(UsageError, match=message.replace("?", r"\?").replace("(", r"\(")):
        live.parse_args(argv)
    assert live.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench.live: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_flags_reach_the_job():
    args = live.parse_args(["--rates", "50, 200", "--minutes", "0.5", "--early-firing", "5", "--runner",
                            "DirectRunner", "--job-arg=--max_batch_size=128", "--job-arg=--window_size=30"])
    assert args.rates == [50.0, 200.0] and args.minutes == 0.5
    assert args.model_batch == 128  # the model alone is timed at the job's batch size
    assert live.job_arguments(args, "projects/p/subscriptions/s", "/tmp/o") == [
        "run", "--input", "projects/p/subscriptions/s", "--output", "/tmp/o", "--max_batch_size=128",
        "--window_size=30", "--early_firing=5", "--runner=DirectRunner"]
    assert live.parse_args([]).model_batch == live.DEFAULT_JOB_BATCH
    assert live.flag_value(["--model", "a", "--model=b"], "--model") == "b"


def test_missing_emulator_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setattr(emulator, "find_emulator", lambda: (None, "java is not installed (the Pub/Sub emulator needs it)"))
    assert live.main(["--rates", "10"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bench.live: error: java is not installed")


# ---- the job's lines, the publisher's pacing -------------------------------------------------

def test_job_lines_finds_the_accounting_and_pubsub_lines():
    text = "\n".join([
        "2026-11-25 12:00:00,000 INFO model bundled (v3), input projects/p/subscriptions/s, output /o",
        "E0000 00:00:1795625683.255183    9941 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
        "2026-11-25 12:01:00,000 WARNING holding 500 acknowledgements for 31 s",
        "pulse run: SIGINT: stopping cleanly (send SIGINT again to abort)",
        "pulse run: DONE (stopped by SIGINT, drained) in 95 s; read 6020 = scored 6020 + duplicates 0 + dead "
        "letters 0; stored 6020 scored posts + 0 dead letters (balanced)",
        "pulse run: Pub/Sub projects/p/subscriptions/s: pulled 6020, acknowledged 6020 (all written), "
        "not acknowledged 0 (left in the subscription for the next run)",
    ])
    state, pubsub, notes = live.job_lines(text)
    assert state.startswith("DONE (stopped by SIGINT, drained)") and state.endswith("(balanced)")
    assert pubsub.startswith("Pub/Sub projects/p/subscriptions/s: pulled 6020")
    assert notes == ["2026-11-25 12:01:00,000 WARNING holding 500 acknowledgements for 31 s"]


def test_paced_posts_are_stamped_when_published():
    posts = live.PacedPosts(rate=200, duration_s=0.25)
    messages = list(posts)
    assert 40 <= len(messages) <= 52 and len(posts.times) == len(messages)
    assert posts.times == sorted(posts.times) and posts.t1 >= posts.t0 + 0.25
    for message, published in zip(messages, posts.times):
        created = dt.datetime.fromisoformat(json.loads(message.data)["created_at"].replace("Z", "+00:00"))
        assert abs(created.timestamp() - published) < 0.01
    assert posts.published_by(posts.times[9]) == 10


def test_rss_of_this_process_tree():
    rss = live.tree_rss_mib(os.getpid())
    assert rss is not None and rss > 10
    assert live.vm_rss_kib(2 ** 30) is None


# ---- connectors/emulator.py without an emulator -------------------------------------------------

def test_emulator_process_that_exits_is_an_emulator_error(tmp_path):
    process = emulator.EmulatorProcess(["false"], emulator.free_port(), str(tmp_path / "emulator.log"))
    with pytest.raises(emulator.EmulatorError, match="exited with 1"):
        process.start(timeout_s=10)
    assert process.proc is None  # stopped after the failure
    assert not emulator.answers(f"127.0.0.1:{emulator.free_port()}", timeout_s=0.5)


def test_running_emulator_without_one_says_why(monkeypatch):
    monkeypatch.setattr(emulator, "find_emulator", lambda: (None, "the Cloud SDK pubsub-emulator component is not installed"))
    with pytest.raises(emulator.EmulatorNotFound, match="pubsub-emulator component"):
        with emulator.running_emulator():
            pass


def test_report_prints_the_table_and_writes_markdown(monkeypatch, tmp_path, capsys):
    class FakeEmulator:
        def __init__(self, command, port, log_path=None):
            self.port, self.host = port, f"127.0.0.1:{port}"

        def start(self, timeout_s=90):
            pass

        def stop(self, sig=None):
            pass

    def fake_run_rate(args, rate, workdir, env):
        assert env["PUBSUB_EMULATOR_HOST"].startswith("127.0.0.1:")
        if rate == 2:
            raise live.BenchError("pulse run exited with 2 during start-up: boom")
        r = live.RateResult(rate, str(tmp_path), ["run", "--input", "s", "--output", "o"], published=600,
                            warmup=20, t0=0.0, t1=60.0, startup_s=5.0, processed_total=600, processed_by_t1=580,
                            backlog=20, latencies=[1.0, 2.0, 3.0], rss_start=700.0, rss_end=720.0, rss_peak=725.0,
                            drain_s=2.0, exit_code=0, job_line="DONE; read 620 = scored 620 (balanced)",
                            pubsub_line="Pub/Sub s: pulled 620, acknowledged 620", pulled=620)
        r.throughput = live.Throughput(580 / 60, 9.0, 10.0, "20%")
        return r

    monkeypatch.setattr(emulator, "find_emulator", lambda: (["emulator"], ""))
    monkeypatch.setattr(emulator, "EmulatorProcess", FakeEmulator)
    monkeypatch.setattr(live, "run_rate", fake_run_rate)
    monkeypatch.setattr(live, "model_alone", lambda job_args, batch: (1000.0, "a model"))
    md = tmp_path / "live.md"
    assert live.main(["--rates", "10,2", "--minutes", "1", "--out-md", str(md)]) == 1  # one rate failed
    out = capsys.readouterr().out
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| ")]
    assert rows[0] == list(live.COLUMNS)
    assert rows[1] == ["10", "10.0", "9.7", "1.11 (20%)", "20 (2.0 s)", "2.0 / 2.9 s", "700 / 720", "0.0097"]
    assert rows[2] == ["2", "–", "–", "–", "–", "–", "–", "failed (details below)"]
    assert "  failed: pulse run exited with 2 during start-up: boom" in out
    assert "model alone: 1,000 posts/s (a model, batch 500)" in out
    text = md.read_text()
    assert text.startswith("| offered msg/s | published msg/s | sustained msg/s | last/first minute |")
    assert "| 10 | 10.0 | 9.7 | 1.11 (20%) | 20 (2.0 s) | 2.0 / 2.9 s | 700 / 720 | 0.0097 |" in text
