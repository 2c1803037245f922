"""A file's answer depends neither on its order nor on the runner.

The same 400 valid posts over 20 minutes (plus hostile lines and duplicates) are played
shuffled on the DirectRunner (an unbounded TestStream replay, where the shuffle makes
many posts late, some past the allowed lateness) and in order through the PortableRunner
(Beam's local job service, a bounded read). Both must store the same scored_posts and
give the same final windows (`sentiment_windows_final`, SQL over scored_posts); on the
DirectRunner the streaming panes also equal the final windows wherever no post came past
the allowed lateness (`window_consistency` reports nothing).
"""
import datetime as dt
import json
import random

import pytest

from connectors.query import duckdb_sql
from pipelines import sentiment_pipeline
from tests.test_portable_runner import job_service  # noqa: F401  (module fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T0 = dt.datetime(2026, 11, 24, 14, 0, tzinfo=dt.timezone.utc)
TEXTS = ["I love this, best service ever", "worst delay, I hate this airline", "the flight is at noon",
         "great crew and great food", "terrible, my bag is lost again"]
HOSTILE = [b"[" * 5000 + b"]" * 5000, b'{"id": "n", "text": "t", "x": ' + b"7" * 5000 + b"}",
           json.dumps({"id": "future", "text": "t", "created_at": "2062-01-01T00:00:00Z"}).encode(),
           json.dumps({"id": "star", "text": "t", "keyword": "*", "created_at": T0.isoformat()}).encode(),
           b"\xff not utf-8"]


def lines_in_order() -> list[bytes]:
    rng = random.Random(7)
    posts = []
    for i in range(400):
        at = T0 + dt.timedelta(seconds=rng.uniform(0, 1200))
        posts.append((at, json.dumps({"id": f"p{i}", "text": TEXTS[i % len(TEXTS)], "lang": ("en", "fr")[i % 4 == 0],
                                      "keyword": ("acme", "nimbus", "globex")[i % 3],
                                      "created_at": at.isoformat().replace("+00:00", "Z")}).encode()))
    for i in range(60):  # a complaint surge: acme, minute 15
        at = T0 + dt.timedelta(seconds=900 + rng.uniform(0, 59))
        posts.append((at, json.dumps({"id": f"s{i}", "text": TEXTS[(1, 4)[i % 2]], "lang": "en", "keyword": "acme",
                                      "created_at": at.isoformat().replace("+00:00", "Z")}).encode()))
    posts.sort()
    lines = [line for _, line in posts]
    # The same post collected for a second keyword counts for both.
    lines.append(json.dumps({**json.loads(lines[5]), "keyword": "second-keyword"}).encode())
    return lines + HOSTILE + lines[:3]  # three redelivered duplicates


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, job_service, tiny_bundled_model):  # noqa: F811
    tmp = tmp_path_factory.mktemp("equivalence")
    ordered = lines_in_order()
    shuffled = ordered[:]
    random.Random(11).shuffle(shuffled)
    (tmp / "ordered.jsonl").write_bytes(b"\n".join(ordered) + b"\n")
    (tmp / "shuffled.jsonl").write_bytes(b"\n".join(shuffled) + b"\n")
    direct = sentiment_pipeline.run(["--input", str(tmp / "shuffled.jsonl"), "--output", str(tmp / "direct"),
                                     "--model", tiny_bundled_model])
    portable = sentiment_pipeline.run([
        "--runner", "PortableRunner", "--job_endpoint", job_service, "--environment_type", "LOOPBACK",
        "--input", str(tmp / "ordered.jsonl"), "--output", str(tmp / "portable"), "--model", tiny_bundled_model,
        "--early_firing", "0"])
    return direct, str(tmp / "direct"), str(tmp / "portable")


def rows(out, sql):
    return duckdb_sql.query(out, sql)[1]


POSTS = ("SELECT post_id, keyword, lang, created_at, label, round(score, 6), round(confidence, 6) "
         "FROM scored_posts_unique ORDER BY ALL")
FINAL = """SELECT window_start, keyword, lang, posts, positive, neutral, negative, round(mean_score, 9)
           FROM sentiment_windows_final ORDER BY ALL"""


def test_every_valid_post_is_scored_whatever_the_order_and_runner(outputs):
    direct, direct_out, portable_out = outputs
    ok, line = sentiment_pipeline.accounting(sentiment_pipeline.counters(direct))
    assert ok, line
    assert rows(direct_out, "SELECT count(*) FROM scored_posts_unique") == [(461,)]
    assert rows(direct_out, POSTS) == rows(portable_out, POSTS)
    # A redelivered duplicate that arrives past its window's allowed lateness is stamped at its
    # arrival, so the per-window dedup state no longer holds its first copy: it can be stored a
    # second time (the views keep one). Nothing else may be.
    doubled = rows(direct_out, "SELECT post_id FROM scored_posts GROUP BY post_id, keyword HAVING count(*) > 1")
    assert {p for (p,) in doubled} <= {json.loads(line)["id"] for line in lines_in_order()[:3]}
    # The shuffle really made posts late, some past the allowed lateness: they are scored all the same.
    counters = sentiment_pipeline.counters(direct)
    assert counters["late_beyond_lateness"] > 0
    # (The counter counts messages, redelivered duplicates included; the table, unique posts.)
    stored_beyond = rows(direct_out, "SELECT count(*) FROM scored_posts WHERE beyond_lateness")[0][0]
    assert 0 < stored_beyond <= counters["late_beyond_lateness"] <= stored_beyond + 3
    assert rows(direct_out, "SELECT stage, count(*) FROM dead_letters GROUP BY 1 ORDER BY 1") == \
        rows(portable_out, "SELECT stage, count(*) FROM dead_letters GROUP BY 1 ORDER BY 1") == [
            ("parse", 4), ("window", 1)]


def test_final_windows_are_the_same_on_both_runners(outputs):
    _, direct_out, portable_out = outputs
    final = rows(direct_out, FINAL)
    assert final == rows(portable_out, FINAL) and len(final) > 40
    assert rows(direct_out, "SELECT sum(posts) FROM sentiment_windows_final WHERE keyword = '*' AND lang = '*'") == [
        (461,)]


def test_the_same_posts_in_another_order_on_another_runner_give_the_same_alerts(outputs):
    _, direct_out, portable_out = outputs
    query = "SELECT window_start, keyword, kind FROM alerts_unique ORDER BY ALL"
    alerts = rows(direct_out, query)
    assert alerts == rows(portable_out, query)
    assert ("acme", "volume_spike") in {(k, kind) for _, k, kind in alerts}


def test_streaming_panes_equal_the_final_windows_where_no_post_was_too_late(outputs):
    _, direct_out, portable_out = outputs
    assert duckdb_sql.run_query(direct_out, "window_consistency")[1] == []
    assert duckdb_sql.run_query(portable_out, "window_consistency")[1] == []
