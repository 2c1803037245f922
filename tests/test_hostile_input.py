"""Hostile input, property-based: whatever a message holds, it ends scored or as a dead letter.

Hypothesis generates arbitrary bytes, arbitrary JSON and posts with hostile values (lone
surrogates, `*`, huge numbers, deep nesting, dates out of range or in the future) and
feeds them

- through the pure per-element functions (parse, clean, dead letter, the Parquet row
  conversion): they never raise anything but ParseError, and whatever they return a
  sink can write;
- through the whole job (replay source on TestStream, the real Parquet writer) with a
  small pure model handler that also fails on some posts: the job never fails,
  `read = scored + duplicates + dead letters` holds at the steps and at the sinks (rows
  read back from the files), and every streaming window equals SQL over scored_posts.
"""
import datetime as dt
import json
import math
import os

import apache_beam as beam
import duckdb
import pytest
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.sinks.parquet import WriteParquetTables, to_table
from connectors.sources.replay import ReplayPosts, plan_replay, read_lines
from models.contracts import DEAD_LETTERS, SCORED_POSTS, ModelSpec
from pipelines.direct_runner import metrics as direct_runner_metrics
from pipelines import sentiment_pipeline
from pipelines.options import SentimentOptions
from transforms.inference import IsolateFailures, ModelFailure
from transforms.parse import MAX_TEXT_CHARS, ParseError, parse_post
from transforms.preprocess import clean_text
from transforms.records import CleanPost, dead_letter

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 24, 14, 0, tzinfo=UTC)

# Any code point, lone surrogates included (Hypothesis leaves category Cs out by default).
ANY_CHAR = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, categories=None, exclude_categories=())
HOSTILE_TEXT = st.one_of(st.text(ANY_CHAR, max_size=40), st.sampled_from([
    "hi \ud83d", "\udc00", "*", " * ", "", "   ", "\x00", "\u200b\u200b\x07", "x" * 300, "😀" * 5]))
HOSTILE_TIME = st.one_of(
    st.integers(0, 600).map(lambda s: (T0 + dt.timedelta(seconds=s)).isoformat().replace("+00:00", "Z")),
    st.sampled_from(["0001-01-01T00:00:00+05:30", "9999-12-31T23:59:59-05:00", "9999-12-31T23:59:59Z",
                     "2062-01-01T00:00:00Z", "noon", "2026-11-24T14:00:00", "1999-01-01T00:00:00Z", ""]),
    st.integers(-10**6, 10**6), st.none())
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=False),
                   st.text(ANY_CHAR, max_size=10))
ANY_JSON = st.recursive(SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)), max_leaves=12)


@st.composite
def hostile_post(draw) -> bytes:
    body = {"id": draw(st.one_of(st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True), HOSTILE_TEXT, SCALAR)),
            "text": draw(st.one_of(st.sampled_from(["good service", "bad delay", "ok", "poison pill"]),
                                   HOSTILE_TEXT, SCALAR)),
            "created_at": draw(HOSTILE_TIME)}
    for field in ("keyword", "lang", "author_id"):
        if draw(st.booleans()):
            body[field] = draw(st.one_of(st.sampled_from(["acme", "globex", "en", "fr", "*"]), HOSTILE_TEXT, SCALAR))
    if draw(st.booleans()):
        body["extra"] = draw(ANY_JSON)
    return json.dumps(body, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")


HOSTILE_BYTES = st.one_of(
    hostile_post(),
    st.binary(max_size=120),
    ANY_JSON.map(lambda v: json.dumps(v).encode()),
    st.integers(1, 20_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(4300, 6000).map(lambda n: b'{"id": "n", "text": "t", "retweets": ' + b"9" * n + b"}"),
    st.sampled_from([b"", b"null", b"NaN", b'{"id": "nan", "text": "t", "x": NaN}', b"\xff\xfe",
                     b'{"id": "a", "text": "' + b"y" * (MAX_TEXT_CHARS + 1) + b'"}']),
)


def assert_storable(row: dict, fields) -> None:
    """The row converts to the table's Arrow schema and to Parquet bytes (what the writer does)."""
    import io

    import pyarrow.parquet as pq
    pq.write_table(to_table([row], fields), io.BytesIO())


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=HOSTILE_BYTES, attributes=st.dictionaries(st.text(max_size=8), st.text(max_size=40), max_size=3))
def test_parse_never_raises_and_returns_only_storable_posts(data, attributes):
    try:
        post = parse_post(data, attributes, publish_time=T0.timestamp())
    except ParseError as e:
        assert e.stage in ("parse", "window")
        assert_storable(dead_letter(e.stage, str(e), data, attributes), DEAD_LETTERS)
        return
    for value in (post.post_id, post.text, post.keyword, post.lang, post.author_id or ""):
        value.encode("utf-8")  # valid Unicode scalar values only
    assert post.keyword != "*" and post.lang != "*"
    assert 0 < len(post.post_id) <= 128 and len(post.text) <= MAX_TEXT_CHARS and post.raw == data
    try:
        cleaned = clean_text(post.text)
    except Exception as e:  # the Clean step turns this into a dead letter; it must not happen silently here
        pytest.fail(f"clean_text raised {type(e).__name__} on {post.text!r}")
    if cleaned:
        row = sentiment_row(post, cleaned)
        assert_storable(row, SCORED_POSTS)


def sentiment_row(post, cleaned):
    from transforms.inference import scored_row
    return scored_row(CleanPost(post, cleaned), RuleModel.infer(cleaned), ModelSpec(version="rule"))


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(HOSTILE_BYTES, max_size=30))
def test_replay_plan_never_raises_and_a_future_post_does_not_move_the_clock(lines):
    future = json.dumps({"id": "f", "text": "t", "created_at": "2062-01-01T00:00:00Z"}).encode()
    ticks = plan_replay(lines + [future], tick_s=5.0)
    messages = [m for tick in ticks for m in tick.messages]
    assert [m.data for m in messages] == lines + [future]
    assert all(m.publish_time is None or m.publish_time < dt.datetime(2030, 1, 1, tzinfo=UTC).timestamp()
               for m in messages)


@settings(max_examples=300, deadline=None)
@given(reason=st.text(ANY_CHAR, max_size=3000), payload=st.one_of(st.none(), st.binary(max_size=50)),
       attributes=st.dictionaries(st.text(ANY_CHAR, max_size=5), st.text(ANY_CHAR, max_size=5), max_size=3))
def test_any_dead_letter_is_storable(reason, payload, attributes):
    row = dead_letter("parse", reason, payload, attributes)
    assert_storable(row, DEAD_LETTERS)
    assert len(row["reason"]) <= 1000 and "\n" not in row["reason"] and row["payload"] == payload


# --- a model that is pure arithmetic on the text, and fails on one kind of post --------------------

class RuleModel(ModelHandler):
    """'bad' words push negative, 'good' positive; a text holding 'poison' makes the batch raise."""

    def load_model(self):
        return None

    @staticmethod
    def infer(text: str) -> dict:
        words = text.lower().split()
        bad, good = sum(w.startswith("bad") for w in words), sum(w.startswith("good") for w in words)
        raw = [1.0 + 2 * bad, 1.0, 1.0 + 2 * good]
        return {"probabilities": [p / sum(raw) for p in raw], "token_count": len(words),
                "oov_count": sum(len(w) > 6 for w in words)}

    def run_inference(self, batch, model, inference_args=None):
        if any("poison" in text for text in batch):
            raise ValueError("poisoned input")
        return [PredictionResult(text, self.infer(text)) for text in batch]

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": 16}


def run_job(lines: list[bytes], tmp_path) -> tuple[dict, str]:
    direct_runner_metrics.install()
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    # (A generated line may hold b"\n" or end in b"\r": the file's messages are its lines as the
    # replay reads them; tests compare with `read_lines`.)
    out = str(tmp_path / "out")
    argv = ["--input", str(path), "--output", out, "--alert_min_posts", "2", "--early_firing", "0"]
    options = PipelineOptions(argv)
    options.view_as(StandardOptions).streaming = True
    options.view_as(StandardOptions).runner = "BundleBasedDirectRunner"
    sentiment = options.view_as(SentimentOptions)
    p = beam.Pipeline(options=options)
    sentiment_pipeline.build_pipeline(p, ReplayPosts(str(path)), WriteParquetTables(out), sentiment,
                                      RuleModel(), ModelSpec(version="rule"))
    result = p.run()
    result.wait_until_finish()
    return sentiment_pipeline.counters(result), out


def sql(out, query):
    """DuckDB over the job's Parquet tables; a table with no file yet is empty, with its contract's columns."""
    import glob

    from models.contracts import TABLES
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    for table in ("scored_posts", "sentiment_windows", "dead_letters"):
        files = f"{out}/{table}/*/*.parquet"
        if glob.glob(files):
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{files}', union_by_name=true)")
        else:
            con.register(table, to_table([], TABLES[table]))
    return con.execute(query).fetchall()


WINDOWS_FROM_PANES = """
    SELECT window_start, keyword, lang, posts, positive, neutral, negative, round(mean_score, 9)
    FROM sentiment_windows
    QUALIFY row_number() OVER (PARTITION BY window_start, keyword, lang ORDER BY pane_index DESC) = 1
    ORDER BY ALL"""
WINDOWS_FROM_POSTS = """
    WITH p AS (SELECT time_bucket(INTERVAL 60 SECOND, created_at) AS w, * FROM scored_posts
               WHERE NOT coalesce(beyond_lateness, false)),
    keyed AS (SELECT w, keyword AS k, lang AS l, label, score FROM p
              UNION ALL SELECT w, keyword, '*', label, score FROM p
              UNION ALL SELECT w, '*', lang, label, score FROM p
              UNION ALL SELECT w, '*', '*', label, score FROM p)
    SELECT w, k, l, count(*), count(*) FILTER (label = 'positive'), count(*) FILTER (label = 'neutral'),
           count(*) FILTER (label = 'negative'), round(avg(score), 9)
    FROM keyed GROUP BY ALL ORDER BY ALL"""


def valid_post(i: int) -> bytes:
    return json.dumps({"id": f"v{i}", "text": ("good trip", "bad delay", "ok")[i % 3],
                       "keyword": ("acme", "globex")[i % 2], "lang": "en",
                       "created_at": (T0 + dt.timedelta(seconds=7 * i)).isoformat()}).encode()


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(hostile=st.lists(HOSTILE_BYTES, min_size=1, max_size=25), repeats=st.lists(st.integers(0, 60), max_size=5),
       seed=st.randoms(use_true_random=False))
def test_the_job_accounts_for_every_message_whatever_arrives(tmp_path_factory, hostile, repeats, seed):
    lines = [valid_post(i) for i in range(60)]
    for line in hostile:
        lines.insert(seed.randrange(len(lines) + 1), line)
    lines += [valid_post(i) for i in repeats]  # redelivered duplicates
    tmp = tmp_path_factory.mktemp("prop")
    counters, out = run_job(lines, tmp)
    messages = read_lines(str(tmp / "in.jsonl"))
    ok, line = sentiment_pipeline.accounting(counters)
    assert ok, line
    assert counters["read"] == len(messages)
    stored_scored = sql(out, "SELECT count(*) FROM scored_posts")[0][0]
    stored_dead = sql(out, "SELECT count(*) FROM dead_letters")[0][0]
    assert stored_scored + counters.get("duplicates", 0) + stored_dead == len(messages)
    assert stored_scored >= 60  # every valid neighbour is scored and stored
    for payload, message_id in sql(out, "SELECT payload, message_id FROM dead_letters"):
        assert payload == messages[int(message_id.split()[1]) - 1]  # byte for byte, traceable to its line
    assert sql(out, WINDOWS_FROM_PANES) == sql(out, WINDOWS_FROM_POSTS)


def test_one_poisoned_post_costs_only_itself(tmp_path):
    lines = [valid_post(i) for i in range(40)]
    lines.insert(17, json.dumps({"id": "poison", "text": "poison pill", "keyword": "acme",
                                 "created_at": (T0 + dt.timedelta(seconds=100)).isoformat()}).encode())
    counters, out = run_job(lines, tmp_path)
    ok, line = sentiment_pipeline.accounting(counters)
    assert ok, line
    assert sql(out, "SELECT count(*) FROM scored_posts")[0][0] == 40
    assert sql(out, "SELECT stage, reason FROM dead_letters") == [("score", "model raised ValueError: poisoned input")]


# --- IsolateFailures, without a pipeline ------------------------------------------------------------

class Flaky(RuleModel):
    """Raises MemoryError on its first `failures` calls, then behaves."""

    def __init__(self, failures):
        super().__init__()
        self.failures, self.calls = failures, 0

    def run_inference(self, batch, model, inference_args=None):
        self.calls += 1
        if self.calls <= self.failures:
            raise MemoryError("out of memory")
        return super().run_inference(batch, model, inference_args)


def test_bisection_finds_each_failing_post_and_keeps_order():
    texts = [f"good {i}" for i in range(32)]
    texts[5], texts[20] = "poison a", "poison b"
    results = IsolateFailures(RuleModel()).run_inference(texts, None)
    assert [r.example for r in results] == texts
    failed = [i for i, r in enumerate(results) if isinstance(r.inference, ModelFailure)]
    assert failed == [5, 20]
    assert results[5].inference.reason == "ValueError: poisoned input"
    assert results[0].inference == RuleModel.infer("good 0")


def test_transient_errors_are_retried_not_dead_lettered():
    flaky = Flaky(failures=2)
    results = IsolateFailures(flaky, retries=3, backoff_s=0).run_inference(["good", "bad"], None)
    assert [r.inference for r in results] == [RuleModel.infer("good"), RuleModel.infer("bad")]
    assert flaky.calls == 3
    with pytest.raises(MemoryError):  # a transient error that outlasts the retries is the runner's to retry
        IsolateFailures(Flaky(failures=10), retries=2, backoff_s=0).run_inference(["good"], None)


def test_a_model_that_returns_too_few_results_is_caught():
    class Short(RuleModel):
        def run_inference(self, batch, model, inference_args=None):
            return super().run_inference(batch, model, inference_args)[:-1]

    results = IsolateFailures(Short()).run_inference(["good", "bad"], None)
    assert all(isinstance(r.inference, ModelFailure) for r in results)
    assert math.isfinite(len(results)) and len(results) == 2


def test_identical_bad_messages_are_each_a_dead_letter(tmp_path):
    """Two messages with the same bad bytes are two messages read: both are stored (named regression:
    files named by row identity once overwrote one with the other)."""
    lines = [valid_post(i) for i in range(30)]
    for at in (3, 12, 25):
        lines.insert(at, b"")
        lines.insert(at + 1, b"NaN")
    counters, out = run_job(lines, tmp_path)
    ok, line = sentiment_pipeline.accounting(counters)
    assert ok, line
    assert sql(out, "SELECT payload, count(*) FROM dead_letters GROUP BY 1 ORDER BY 1") == [(b"", 3), (b"NaN", 3)]
    assert sql(out, "SELECT count(DISTINCT message_id) FROM dead_letters") == [(6,)]
