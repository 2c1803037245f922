"""The embedded default stream: every kind of message a first run should show."""
import datetime as dt
import json

from connectors.sources.sample_stream import (SURGE_BRAND, SURGE_LEN_S, SURGE_START_S, START, build, is_theme_tweet,
                                             malformed_messages)
from transforms.parse import ParseError, parse_post


def corpus(n=600):
    """(id, rating, text): every tenth tweet is on the surge's theme (27 of them negative)."""
    return [(str(i), (i % 9) - 4 + 0.1, f"tweet number {i}" + (" running LATE again" if i % 10 == 0 else ""))
            for i in range(1, n + 1)]


def test_sample_has_posts_duplicates_late_and_malformed_lines():
    lines = build(corpus())
    assert len(lines) == 600 + 25 + len(malformed_messages(dt.datetime.now()))
    assert build(corpus()) == lines  # seeded
    bad = []
    posts = []
    for line in lines:
        try:
            posts.append(parse_post(line, {}, None))
        except ParseError as e:
            bad.append(str(e))
    # The control-characters-only post parses (Clean dead-letters it), and so does the post
    # dated 2062 (WindowPosts dead-letters it).
    assert len(bad) == 14
    future = [p for p in posts if p.created_at.year > 2030]
    assert [p.post_id for p in future] == ["from-2062"]
    posts = [p for p in posts if p not in future]
    ids = [p.post_id for p in posts]
    assert len(ids) - len(set(ids)) == 25
    newest, late, very_late = None, 0, 0
    for post in posts:
        if newest is not None:
            behind = (newest - post.created_at).total_seconds()
            late += 120 <= behind < 600
            very_late += behind >= 1100
        newest = post.created_at if newest is None else max(newest, post.created_at)
    assert late >= 6 and very_late == 2, (late, very_late)
    start, end = START + dt.timedelta(seconds=SURGE_START_S), START + dt.timedelta(seconds=SURGE_START_S + SURGE_LEN_S)
    surge = {p.post_id for p in posts if p.keyword == SURGE_BRAND and start <= p.created_at < end}
    themed = {f"t{tid}" for tid, rating, text in corpus() if is_theme_tweet(rating, text)}
    assert len(themed) == 27 and themed <= surge  # every negative theme tweet, in the surge
    assert {i for i in ids if i.startswith("t")} == {f"t{n}" for n in range(1, 601)}  # each tweet, once or twice
    assert all(json.loads(l)["lang"] == "en" for l in lines[:50] if l.startswith(b'{"id": "t'))


def test_the_surge_theme_is_negative_tweets_holding_a_theme_word():
    assert is_theme_tweet(-1.4, "Damn, running LATE sucks.") and is_theme_tweet(-1.1, "Crazy power outage!")
    assert not is_theme_tweet(0.5, "Not late at all, lovely")  # not negative
    assert not is_theme_tweet(-2.0, "latest news: plated and powerless")  # whole words only
    assert not is_theme_tweet(-2.0, "awful http://late.example/power")  # links left out
