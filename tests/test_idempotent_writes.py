"""Writes are idempotent: a retried bundle or a rerun leaves no duplicate row.

connectors/sinks/parquet.py names each file by the identities of its rows (never their clock
stamps), creates folders that another writer may be creating too, and refuses a non-empty
output directory unless the job runs with --append; the views of connectors/query/views.sql
de-duplicate what a rerun adds. The end of this module runs the job twice into one
directory and reads it back through `pulse sql` and `pulse summary`.

    .venv/bin/pytest tests/test_idempotent_writes.py -q
"""
import datetime as dt
import glob
import io
import json
import os
import shutil
import threading
import zoneinfo

import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import GlobalWindow, IntervalWindow
from apache_beam.utils.windowed_value import PaneInfo, PaneInfoTiming

from connectors.query import duckdb_sql, sqlfiles
from connectors.sinks import parquet
from models.contracts import JOB_TABLES, TABLES
from pipelines.cli import sql as sql_cli
from pipelines.options import OptionsError, SentimentOptions, validate_options

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 24, 14, 0, tzinfo=UTC)
CLOCK = {"scored_posts": "processed_at", "review_queue": "processed_at", "sentiment_windows": "emitted_at",
         "alerts": "emitted_at", "dead_letters": "received_at"}


def scored(post_id, keyword="acme", second=5):
    return {"post_id": post_id, "keyword": keyword, "lang": "en", "author_id": None,
            "created_at": T0 + dt.timedelta(seconds=second), "text": "t", "clean_text": "t", "label": "neutral",
            "score": 0.0, "stars": None, "confidence": 0.4, "token_count": 1, "oov_count": 0,
            "model_version": "v1", "processed_at": dt.datetime.now(tz=UTC), "beyond_lateness": False}


def rows_of(table):
    now = dt.datetime.now(tz=UTC)
    if table in ("scored_posts", "review_queue"):
        return [scored("p1"), scored("p2", second=30), scored("p1", keyword="nimbus")]
    if table == "sentiment_windows":
        return [{"window_start": T0, "window_end": T0 + dt.timedelta(seconds=60), "keyword": kw, "lang": "*",
                 "posts": 2, "positive": 0, "neutral": 2, "negative": 0, "mean_score": 0.0, "mean_confidence": 0.4,
                 "low_confidence": 2, "oov_rate": 0.0, "pane_index": 1, "pane_timing": "ON_TIME",
                 "model_version": "v1", "emitted_at": now} for kw in ("acme", "*")]
    if table == "alerts":
        return [{"window_start": T0, "window_end": T0 + dt.timedelta(seconds=60), "keyword": "acme", "kind": kind,
                 "value": 1.0, "baseline": 0.1, "zscore": 4.0, "sample_post_ids": ["p1"], "emitted_at": now}
                for kind in ("negative_surge", "volume_spike")]
    return [{"stage": "parse", "reason": "invalid JSON", "payload": payload, "attributes": None, "received_at": now}
            for payload in (b"{", b"\xff")]


WINDOWED = {"scored_posts", "review_queue", "sentiment_windows"}  # the others arrive in the global window


def write_bundle(output_dir, table, rows):
    """One bundle through the sink's DoFn, as Beam calls it."""
    fn = parquet._WriteTableFiles(output_dir, table)
    fn.start_bundle()
    win = IntervalWindow(T0.timestamp(), T0.timestamp() + 60) if table in WINDOWED else GlobalWindow()
    pane = PaneInfo(False, False, PaneInfoTiming.ON_TIME, 1, 0)
    for row in rows:
        fn.process(row, win=win, pane=pane)
    fn.finish_bundle()


def files_of(output_dir, table):
    paths = glob.glob(os.path.join(output_dir, table, "**", "*"), recursive=True)
    return sorted(p for p in paths if os.path.isfile(p))


@pytest.mark.parametrize("table", JOB_TABLES)
def test_a_retried_bundle_replaces_its_own_file(tmp_path, table):
    rows = rows_of(table)
    write_bundle(str(tmp_path), table, rows)
    [first] = files_of(str(tmp_path), table)
    # The retry: the same rows, later clock stamps, another order.
    retry = [dict(row, **{CLOCK[table]: row[CLOCK[table]] + dt.timedelta(seconds=7)}) for row in reversed(rows)]
    write_bundle(str(tmp_path), table, retry)
    assert files_of(str(tmp_path), table) == [first]
    stored = pq.read_table(first).to_pylist()
    assert len(stored) == len(rows)
    assert sorted(r[CLOCK[table]] for r in stored) == sorted(r[CLOCK[table]] for r in retry)  # the retry's rows
    folder = os.path.basename(os.path.dirname(first))
    assert folder == ("undated" if table == "dead_letters" else "2026-11-24")


def test_file_names_come_from_row_identity_not_clock_stamps():
    a = rows_of("scored_posts")
    later = [dict(r, processed_at=r["processed_at"] + dt.timedelta(hours=1), score=0.5) for r in a]
    assert parquet.digest_of("scored_posts", a) == parquet.digest_of("scored_posts", later)
    assert parquet.digest_of("scored_posts", a) != parquet.digest_of("scored_posts", a[:2])
    assert parquet.digest_of("scored_posts", a) != parquet.digest_of(
        "scored_posts", a[:2] + [dict(a[2], keyword="globex")])
    w = rows_of("sentiment_windows")
    assert parquet.digest_of("sentiment_windows", w) != parquet.digest_of(
        "sentiment_windows", [dict(r, pane_index=2) for r in w])
    # The same instant in any time zone is the same identity.
    other_zone = [dict(r, window_start=r["window_start"].astimezone(zoneinfo.ZoneInfo("Europe/Paris"))) for r in w]
    assert parquet.digest_of("sentiment_windows", w) == parquet.digest_of("sentiment_windows", other_zone)
    d = rows_of("dead_letters")
    assert parquet.digest_of("dead_letters", d) != parquet.digest_of(
        "dead_letters", [dict(r, attributes='{"a": "1"}') for r in d])
    assert parquet.digest_of("dead_letters", [dict(d[0], payload=b"1")]) != parquet.digest_of(
        "dead_letters", [dict(d[0], payload="1")])


def test_global_window_rows_are_dated_by_their_event_time():
    assert parquet.file_name("alerts", None, 0, "abc", dt.date(2026, 11, 24)) == \
        "alerts/2026-11-24/global-p000-abc.parquet"
    assert parquet.file_name("dead_letters", None, 0, "abc") == "dead_letters/undated/global-p000-abc.parquet"
    assert parquet.file_name("scored_posts", T0 + dt.timedelta(seconds=60), 3, "abc") == \
        "scored_posts/2026-11-24/140100-p003-abc.parquet"


def run_together(n, target):
    """Run target(i) on n threads released at the same moment -> the exceptions raised."""
    barrier = threading.Barrier(n)
    errors = []

    def work(i):
        barrier.wait()
        try:
            target(i)
        except Exception as e:  # noqa: BLE001 - collected and asserted on
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_writers_creating_the_same_date_folder_at_once_all_succeed(tmp_path):
    table = parquet.to_table(rows_of("dead_letters"), TABLES["dead_letters"])
    for day in range(20):  # 20 fresh folders x 20 writers = 400 writes
        folder = f"{tmp_path}/dead_letters/2026-11-{day + 1:02d}"
        errors = run_together(20, lambda i: parquet.write_atomically(f"{folder}/f{i}.parquet", table))
        assert errors == []
        assert len(os.listdir(folder)) == 20
    errors = run_together(16, lambda i: parquet.ensure_directory(f"{tmp_path}/a/b/c"))
    assert errors == [] and os.path.isdir(f"{tmp_path}/a/b/c")


def test_writers_of_the_same_file_at_once_leave_one_whole_file(tmp_path):
    """A retried bundle racing the original: both renames succeed, one complete file remains."""
    path = f"{tmp_path}/scored_posts/2026-11-24/140000-p000-x.parquet"
    tables = [parquet.to_table([dict(r, processed_at=T0 + dt.timedelta(seconds=i)) for r in rows_of("scored_posts")],
                               TABLES["scored_posts"]) for i in range(16)]
    assert run_together(16, lambda i: parquet.write_atomically(path, tables[i])) == []
    assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]  # no temporary file left
    assert pq.read_table(path).num_rows == 3


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def broken_rename(sources, destinations):
        raise OSError("disk full")
    monkeypatch.setattr(FileSystems, "rename", staticmethod(broken_rename))
    with pytest.raises(OSError, match="disk full"):
        parquet.write_atomically(f"{tmp_path}/t/x.parquet", parquet.to_table([], TABLES["alerts"]))
    assert os.listdir(tmp_path / "t") == []


# ---- a second run into a non-empty output directory ----------------------------------------


def test_check_output_refuses_a_non_empty_directory_unless_appending(tmp_path):
    parquet.check_output(str(tmp_path / "new"), append=False)  # not there yet
    parquet.check_output(str(tmp_path), append=False)  # empty
    (tmp_path / "scored_posts" / "2026-11-24").mkdir(parents=True)
    parquet.check_output(str(tmp_path), append=False)  # folders but no file
    (tmp_path / "scored_posts" / "2026-11-24" / "a.parquet").write_bytes(b"x")
    with pytest.raises(ValueError) as e:
        parquet.check_output(str(tmp_path), append=False)
    message = str(e.value)
    assert str(tmp_path) in message and "--append" in message and message.count(". ") == 0
    parquet.check_output(str(tmp_path), append=True)
    with pytest.raises(ValueError, match="is a file"):
        parquet.check_output(str(tmp_path / "scored_posts" / "2026-11-24" / "a.parquet"), append=False)


def test_validate_options_refuses_a_second_run_without_append(tmp_path):
    (tmp_path / "in.jsonl").write_text("{}\n")
    (tmp_path / "out" / "alerts").mkdir(parents=True)
    (tmp_path / "out" / "alerts" / "a.parquet").write_bytes(b"x")
    argv = ["--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out")]
    with pytest.raises(OptionsError, match="not empty: pass --append"):
        validate_options(PipelineOptions(argv).view_as(SentimentOptions))
    validate_options(PipelineOptions(argv + ["--append"]).view_as(SentimentOptions))
    validate_options(PipelineOptions(["--input", str(tmp_path / "in.jsonl"), "--output", "my-proj:pulse"])
                     .view_as(SentimentOptions))  # BigQuery: not a directory


# ---- the job, run twice into one directory ---------------------------------------------------

TEXTS = ["I love this, best service ever", "worst delay, I hate this airline", "the flight is at noon",
         "great crew and great food", "terrible, my bag is lost again", "ok I guess"]


def iso(seconds):
    return (T0 + dt.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def replay_lines():
    """~75 posts over four minutes, many a fraction of a second before a window ends (the
    rounding UNIX_SECONDS stand-in counted those in the next window), a surge, late posts
    inside the allowed lateness, one past it, a duplicate and two broken messages."""
    lines, n = [], 0
    for second in range(0, 240, 4):
        n += 1
        at = second + (0.6 if n % 3 == 0 else 0.25)
        if n % 5 == 0:
            at = second - second % 60 + 59.9  # just before the window ends
        lines.append(json.dumps({"id": f"p{n}", "text": TEXTS[n % len(TEXTS)], "created_at": iso(at),
                                 "keyword": ("acme", "nimbus")[n % 2], "lang": ("en", "fr")[n % 3 == 0]}))
    for i in range(12):  # a complaint surge in the fourth minute: alerts
        lines.append(json.dumps({"id": f"s{i}", "text": "terrible, my bag is lost again, worst airline",
                                 "created_at": iso(181 + 4 * i + 0.5), "keyword": "acme", "lang": "en"}))
    lines.append(lines[7])  # redelivered
    lines.insert(40, json.dumps({"id": "late-ok", "text": "late but fine, I love it", "created_at": iso(59.7),
                                 "keyword": "acme", "lang": "en"}))
    lines.append(json.dumps({"id": "far-past", "text": "way too late, terrible", "created_at": iso(-1200.5),
                             "keyword": "acme", "lang": "en"}))
    lines += ['{"id": "x", "text": ', "[1, 2]"]
    return lines


def pulse_sql(output_dir, *argv):
    out = io.StringIO()
    assert sql_cli.sql_main([*argv, "--output", output_dir, "--format", "json"], out=out) == 0
    return json.loads(out.getvalue())


def assert_same(got, want, where=""):
    """Equal, floats to 1e-12 (an average over the same rows may differ in its last bits)."""
    if isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15), where
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for k in want:
            assert_same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


def every_answer(output_dir):
    answers = {}
    for name in sqlfiles.query_names():
        params = []
        if name == "top_negative_posts":
            params = ["--param", f"window_start={iso(-3600)}", "--param", f"window_end={iso(3600)}"]
        if name == "drivers":
            params = ["--param", "keyword=*", "--param", f"window_start={iso(-600)}",
                      "--param", f"window_end={iso(3600)}"]
        answers[name] = pulse_sql(output_dir, name, *params)
    out = io.StringIO()
    assert sql_cli.summary_main(["--output", output_dir], out=out) == 0
    answers["summary"] = out.getvalue().split("\n", 1)[1]  # after the line naming the directory
    answers["final"] = pulse_sql(output_dir, "SELECT * FROM sentiment_windows_final ORDER BY ALL")
    answers["posts"] = pulse_sql(output_dir, "SELECT * EXCLUDE (processed_at) FROM scored_posts_unique ORDER BY ALL")
    return answers


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_bundled_model):
    from pipelines import sentiment_pipeline

    tmp = tmp_path_factory.mktemp("reruns")
    (tmp / "in.jsonl").write_text("\n".join(replay_lines()) + "\n")
    once, twice = str(tmp / "once"), str(tmp / "twice")
    argv = ["--input", str(tmp / "in.jsonl"), "--model", str(tiny_bundled_model), "--alert_min_posts", "3",
            "--alert_baseline_windows", "2", "--alert_zscore", "2", "--early_firing", "0"]
    sentiment_pipeline.run(argv + ["--output", twice])
    shutil.copytree(twice, once)
    with pytest.raises(OptionsError, match="not empty: pass --append"):
        sentiment_pipeline.run(argv + ["--output", twice])
    sentiment_pipeline.run(argv + ["--output", twice, "--append"])
    # A writer whose bundles were cut differently would name its files differently: such
    # copies must change nothing either.
    for path in glob.glob(f"{once}/*/*/*.parquet"):
        copy = os.path.join(twice, os.path.relpath(path, once))
        shutil.copy(path, os.path.join(os.path.dirname(copy), "copy-" + os.path.basename(copy)))
    return once, twice


@pytest.mark.integration
@pytest.mark.slow
def test_window_consistency_is_empty_on_the_jobs_output(two_runs):
    once, _ = two_runs
    assert pulse_sql(once, "window_consistency") == []
    con = duckdb_sql.connect(once)
    try:
        posts, late = con.execute("SELECT COUNT(*), COUNT(*) FILTER (beyond_lateness) FROM scored_posts").fetchone()
        assert late == 1
        total, beyond = con.execute("SELECT SUM(posts), SUM(posts_beyond_lateness) FROM sentiment_windows_final "
                                    "WHERE keyword = '*' AND lang = '*'").fetchone()
        assert (total, beyond) == (posts, 1)
        # The sub-second posts just before a window's end are counted in that window.
        edge = con.execute("SELECT COUNT(*) FROM scored_posts WHERE epoch_us(created_at) % 1000000 = 900000"
                           ).fetchone()[0]
        assert edge >= 10
        # Every window the streaming job emitted equals the final one, figure by figure.
        compared = con.execute("""
            SELECT COUNT(*), COUNT(*) FILTER (
              s.posts = f.posts AND s.positive = f.positive AND s.neutral = f.neutral AND s.negative = f.negative
              AND coalesce(abs(s.mean_score - f.mean_score) < 1e-9, s.mean_score IS NULL AND f.mean_score IS NULL)
              AND coalesce(abs(s.mean_confidence - f.mean_confidence) < 1e-9,
                           s.mean_confidence IS NULL AND f.mean_confidence IS NULL)
              AND coalesce(s.unsupported, 0) = coalesce(f.unsupported, 0)
              AND s.low_confidence = f.low_confidence AND s.oov_rate IS NOT DISTINCT FROM f.oov_rate
              AND s.model_version IS NOT DISTINCT FROM f.model_version)
            FROM sentiment_windows_latest AS s JOIN sentiment_windows_final AS f USING (window_start, window_end,
                                                                                     keyword, lang)""").fetchone()
        windows = con.execute("SELECT COUNT(*) FROM sentiment_windows_final WHERE posts_beyond_lateness = 0"
                              ).fetchone()[0]
        assert compared[0] == compared[1] == windows > 20
    finally:
        con.close()


@pytest.mark.integration
@pytest.mark.slow
def test_a_rerun_with_append_doubles_no_figure(two_runs):
    once, twice = two_runs
    con = duckdb_sql.connect(twice)
    raw, unique = con.execute("SELECT (SELECT COUNT(*) FROM scored_posts), (SELECT COUNT(*) FROM scored_posts_unique)"
                              ).fetchone()
    con.close()
    assert raw >= 2 * unique  # the rows are there twice (or more) ...
    first, rerun = every_answer(once), every_answer(twice)
    assert first["keyword_summary"] and first["dead_letters_by_reason"] and first["alert_history"]
    for name in first:  # ... and no figure shows it
        assert_same(rerun[name], first[name], name)
