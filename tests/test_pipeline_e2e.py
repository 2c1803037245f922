"""The whole job on a messy file: every line accounted for, every window equal to SQL.

Runs `pulse run`'s own entry point on the DirectRunner with a small model trained and
exported by the real training code (fixture `tiny_bundled_model`), Parquet output read
back with DuckDB.
"""
import datetime as dt
import json

import duckdb
import pytest

from pipelines import sentiment_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 24, 14, 0, tzinfo=UTC)
TEXTS = ["I love this, best service ever", "worst delay, I hate this airline", "the flight is at noon",
         "great crew and great food", "terrible, my bag is lost again", "ok I guess"]


def iso(seconds):
    return (T0 + dt.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def messy_lines():
    lines, n = [], 0
    for second in range(0, 300, 4):  # 75 posts over five minutes, two keywords, two languages
        n += 1
        lines.append(json.dumps({"id": f"p{n}", "text": TEXTS[n % len(TEXTS)], "created_at": iso(second),
                                 "keyword": ("acme", "nimbus")[n % 2], "lang": ("en", "fr")[n % 3 == 0]}))
        if n % 10 == 0:
            lines.append(lines[-1])  # redelivered duplicate
    lines.insert(60, json.dumps({"id": "late-ok", "text": "late but fine", "created_at": iso(130),
                                 "keyword": "acme", "lang": "en"}))  # ~2 min late, inside 10 min lateness
    lines.append(json.dumps({"id": "far-past", "text": "way too late", "created_at": iso(-1200),
                             "keyword": "acme", "lang": "en"}))  # beyond allowed lateness
    lines += ['{"id": "x", "text": ', "[1, 2]", json.dumps({"id": "no-text"}), "",
              json.dumps({"id": "bad-time", "text": "t", "created_at": "noon"})]
    lines += HOSTILE_PARSE + HOSTILE_WINDOW
    lines.insert(40, HALF_EMOJI)  # valid once repaired: scored
    return [line.encode() if isinstance(line, str) else line for line in lines] + [b"\xff\xfe not utf-8"]


# The hostile messages of the issue that found them (named regression cases).
HALF_EMOJI = '{"id": "half-emoji", "text": "hi \\ud83d", "created_at": "%s", "keyword": "acme"}' % iso(150)
HOSTILE_PARSE = [
    "[" * 10_000 + "]" * 10_000,  # 10,000-deep JSON
    '{"id": "big", "text": "t", "retweets": %s, "created_at": "%s"}' % ("9" * 5000, iso(20)),
    '{"id": "kw-surrogate", "text": "t", "keyword": "\\udc00", "created_at": "%s"}' % iso(20),
    json.dumps({"id": "star-kw", "text": "t", "keyword": "*", "created_at": iso(20)}),
    json.dumps({"id": "star-lang", "text": "t", "lang": " * ", "created_at": iso(20)}),
]
HOSTILE_WINDOW = [
    json.dumps({"id": "year-1", "text": "t", "created_at": "0001-01-01T00:00:00+05:30"}),
    json.dumps({"id": "year-9999", "text": "t", "created_at": "9999-12-31T23:59:59-05:00"}),
    json.dumps({"id": "end-of-time", "text": "t", "created_at": "9999-12-31T23:59:59Z"}),
    json.dumps({"id": "2062", "text": "from the future", "created_at": "2062-01-01T00:00:00Z"}),
]


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_bundled_model):
    tmp = tmp_path_factory.mktemp("e2e")
    lines = messy_lines()
    (tmp / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    result = sentiment_pipeline.run([
        "--input", str(tmp / "in.jsonl"), "--output", str(tmp / "out"), "--model", str(tiny_bundled_model),
        "--review_threshold", "0.6", "--alert_min_posts", "3"])
    return result, lines, str(tmp / "out")


def sql(out, query):
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    for table in ("scored_posts", "sentiment_windows", "dead_letters", "review_queue"):
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{out}/{table}/*/*.parquet', union_by_name=true)")
    return con.execute(query).fetchall()


def test_every_input_line_is_accounted_for(job):
    result, lines, out = job
    counters = sentiment_pipeline.counters(result)
    ok, line = sentiment_pipeline.accounting(counters)
    assert ok, line
    assert counters["read"] == len(lines)
    assert counters["duplicates"] == 7
    assert counters["late_beyond_lateness"] == 1
    scored = sql(out, "SELECT count(*), count(DISTINCT post_id) FROM scored_posts")[0]
    dead = sql(out, "SELECT stage, count(*) FROM dead_letters GROUP BY stage ORDER BY stage")
    assert scored == (counters["scored"], counters["scored"]) == (78, 78)
    assert dict(dead) == {"parse": 6 + len(HOSTILE_PARSE), "window": len(HOSTILE_WINDOW)}
    assert scored[0] + counters["duplicates"] + sum(n for _, n in dead) == len(lines)


def test_dead_letters_keep_the_payload_byte_for_byte(job):
    _, lines, out = job
    payloads = {p for (p,) in sql(out, "SELECT payload FROM dead_letters")}
    assert b"\xff\xfe not utf-8" in payloads and b"" in payloads and b"[1, 2]" in payloads
    assert {line.encode() for line in HOSTILE_PARSE + HOSTILE_WINDOW} <= payloads
    reasons = dict(sql(out, "SELECT payload, reason FROM dead_letters WHERE stage = 'window'"))
    assert reasons[HOSTILE_WINDOW[-1].encode()].startswith("in the future")
    assert reasons[HOSTILE_WINDOW[-2].encode()].startswith("in the future")
    assert reasons[HOSTILE_WINDOW[0].encode()].startswith("out of range")
    assert reasons[HOSTILE_WINDOW[1].encode()].startswith("out of range")


def test_a_post_past_the_allowed_lateness_is_scored_and_stored_in_no_pane(job):
    _, _, out = job
    row = sql(out, "SELECT beyond_lateness, label IS NOT NULL FROM scored_posts WHERE post_id = 'far-past'")
    assert row == [(True, True)]
    assert sql(out, "SELECT count(*) FROM scored_posts WHERE beyond_lateness")[0][0] == 1
    # Its window (14:40 the day before... -20 min) has no streaming pane at all.
    assert sql(out, """SELECT count(*) FROM sentiment_windows
                       WHERE window_start = TIMESTAMPTZ '2026-11-24 13:40:00+00'""")[0][0] == 0


def test_a_half_emoji_is_repaired_and_scored(job):
    _, _, out = job
    assert sql(out, "SELECT text FROM scored_posts WHERE post_id = 'half-emoji'") == [("hi \ufffd",)]


def test_every_window_equals_sql_over_scored_posts(job):
    _, _, out = job
    latest = sql(out, """
        SELECT window_start, keyword, lang, posts, positive, neutral, negative, mean_score, mean_confidence,
               low_confidence, oov_rate, coalesce(unsupported, 0)
        FROM sentiment_windows
        QUALIFY row_number() OVER (PARTITION BY window_start, keyword, lang ORDER BY pane_index DESC) = 1
        ORDER BY ALL""")
    expected = sql(out, """
        WITH p AS (SELECT time_bucket(INTERVAL 60 SECOND, created_at) AS window_start, * FROM scored_posts
                   WHERE NOT coalesce(beyond_lateness, false)),
        keyed AS (
          SELECT window_start, keyword, lang, * EXCLUDE (window_start, keyword, lang) FROM p
          UNION ALL SELECT window_start, keyword, '*', * EXCLUDE (window_start, keyword, lang) FROM p
          UNION ALL SELECT window_start, '*', lang, * EXCLUDE (window_start, keyword, lang) FROM p
          UNION ALL SELECT window_start, '*', '*', * EXCLUDE (window_start, keyword, lang) FROM p)
        SELECT window_start, keyword, lang, count(*), count(*) FILTER (label = 'positive'),
               count(*) FILTER (label = 'neutral'), count(*) FILTER (label = 'negative'), avg(score),
               avg(confidence), count(*) FILTER (confidence < 0.6),
               sum(oov_count)::DOUBLE / nullif(sum(token_count), 0), count(*) FILTER (skip_reason IS NOT NULL)
        FROM keyed GROUP BY ALL ORDER BY ALL""")
    assert len(latest) == len(expected) > 20
    for got, want in zip(latest, expected):
        assert got[:7] == want[:7] and got[9] == want[9] and got[11] == want[11]
        for a, b in ((got[7], want[7]), (got[8], want[8]), (got[10], want[10])):
            assert (a is None and b is None) or a == pytest.approx(b, rel=1e-9, abs=1e-12)
    # The French posts (English texts, but tagged fr) are not for the English-only model.
    assert any(row[11] > 0 for row in latest) and any(row[11] == 0 for row in latest)


def test_posts_in_a_language_the_model_was_not_trained_for_are_stored_unscored(job):
    _, _, out = job
    by_lang = dict(sql(out, """SELECT lang, list(DISTINCT coalesce(skip_reason, 'scored') ORDER BY 1)
                              FROM scored_posts GROUP BY lang"""))
    assert by_lang["fr"] == ["unsupported_language"]
    assert by_lang["en"] == ["scored"]
    assert sql(out, "SELECT count(*) FROM scored_posts WHERE skip_reason IS NOT NULL AND "
                    "(label IS NOT NULL OR confidence IS NOT NULL OR model_version IS NOT NULL)") == [(0,)]
    assert sql(out, "SELECT count(*) FROM review_queue WHERE lang = 'fr'") == [(0,)]


def test_panes_are_numbered_and_timed(job):
    _, _, out = job
    timings = dict(sql(out, "SELECT pane_timing, count(*) FROM sentiment_windows GROUP BY 1"))
    assert timings.get("ON_TIME", 0) > 0 and timings.get("LATE", 0) > 0
    # The late post's window has a LATE pane that counts it.
    late = sql(out, """SELECT max(posts) FILTER (pane_timing = 'LATE'), max(posts) FILTER (pane_timing = 'ON_TIME')
                       FROM sentiment_windows WHERE keyword = '*' AND lang = '*'
                       AND window_start = TIMESTAMPTZ '2026-11-24 14:02:00+00'""")[0]
    assert late[0] == late[1] + 1


def test_review_queue_holds_exactly_the_low_confidence_posts(job):
    _, _, out = job
    review = sql(out, "SELECT post_id FROM review_queue ORDER BY 1")
    low = sql(out, "SELECT post_id FROM scored_posts WHERE confidence < 0.6 ORDER BY 1")
    assert review == low


def test_scored_rows_are_the_models_own_probabilities(job, tiny_bundled_model):
    """Pins the Score step: label, score, confidence and token counts against the SavedModel itself.

    A Score step that flipped the sign of score, inverted confidence, labelled every post
    neutral or zeroed oov_count would fail here (the other tests compare tables with each other).
    """
    import tensorflow as tf

    from models.contracts import ModelSpec
    _, _, out = job
    rows = sql(out, """SELECT clean_text, label, score, confidence, token_count, oov_count, model_version
                       FROM scored_posts WHERE skip_reason IS NULL ORDER BY post_id""")
    texts = sorted({r[0] for r in rows})
    outputs = tf.saved_model.load(tiny_bundled_model).signatures["serving_default"](text=tf.constant(texts))
    probabilities = dict(zip(texts, outputs["probabilities"].numpy().tolist()))
    tokens = dict(zip(texts, outputs["token_count"].numpy().tolist()))
    oov = dict(zip(texts, outputs["oov_count"].numpy().tolist()))
    spec = ModelSpec.load(tiny_bundled_model)
    labels = spec.labels
    for clean, label, score, confidence, token_count, oov_count, version in rows:
        p = probabilities[clean]
        best = max(range(len(p)), key=p.__getitem__)
        assert label == labels[best], clean
        assert confidence == pytest.approx(max(p) / sum(p), abs=1e-5)
        assert score == pytest.approx(sum(pi * s for pi, s in zip(p, spec.class_scores)) / sum(p), abs=1e-5)
        assert (token_count, oov_count, version) == (tokens[clean], oov[clean], spec.version)
    # The posts are not all alike: the pins above are not vacuous.
    assert {r[1] for r in rows} >= {"negative", "positive"}
    assert any(r[5] > 0 for r in rows) and any(r[3] < 0.9 for r in rows)
