"""The embedded default stream: real tweets as an hour of posts about five brands.

    python -m connectors.sources.sample_stream --data data --out data/sample_stream.jsonl

Built by `make data` from the 4,200 human-rated tweets of Hutto & Gilbert (ICWSM 2014,
MIT licence, shipped in the vaderSentiment 3.3.2 sdist), so no copy is committed:

- each tweet becomes a Post (`id` "t<n>", `lang` "en", since the corpus is English) for one
  of five made-up brands, with an event time spread over one hour (Poisson arrivals
  with a gentle mid-hour rise, seeded);
- a complaint surge with a theme, from real tweets: for 3 minutes from minute 40, one
  brand ("acme-air") receives every negative tweet of the corpus (mean rating < 0) that
  holds a delay-or-outage word (THEME_TERMS: "late", "delayed", "power", "outage",
  "cancelled", ...: 39 tweets such as "Damn, running late sucks." and "Crazy power
  outage!"), about doubling its usual rate, so a first run shows a negative_surge alert
  whose drivers (Alerts page, `pulse summary`) are "late", "damn" (the corpus's
  graded variants of two tweets swear) and "power". The corpus has no larger topic (no
  airline one: "flight" is in 13 tweets, 2 of them negative), hence everyday delays and
  outages, packed into 3 minutes (not 5) to keep the windows' negative share high.
  Every tweet is used once and none is synthetic; the brands are invented and the
  tweets were not about them;
- late data: a few posts arrive 2 to 6 minutes after their event time (late panes),
  and two arrive 20 minutes late, beyond the 10-minute allowed lateness (scored and
  stored, in no streaming pane: `late_beyond_lateness`, `sentiment_windows_final`);
- duplicates: 25 posts are delivered twice;
- 16 malformed or hostile messages covering each dead-letter reason (bad UTF-8, not
  JSON, a JSON array, missing id or text, blank text, a bad created_at, wrong types,
  control characters only, an empty line, a post dated 2062, the reserved keyword `*`,
  10,000-deep JSON, a 5,000-digit number).

The file is written in arrival order, which the replay source plays as the stream.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import random
import re
import sys

START = dt.datetime(2026, 11, 24, 14, 0, tzinfo=dt.timezone.utc)
BRANDS = ("acme-air", "nimbus-phone", "brightbank", "zephyr-cola", "orbit-tv")
SURGE_BRAND = "acme-air"
SURGE_START_S, SURGE_LEN_S = 40 * 60, 3 * 60
# The surge's theme: a negative tweet holding one of these words goes to the surge.
THEME_TERMS = ("late", "delayed", "delay", "power", "outage", "cancelled", "waiting", "hold")
SEED = 20141


def read_tweets(data_dir: str) -> list[tuple[str, float, str]]:
    """(id, mean rating in [-4, 4], text) of the corpus's tweets."""
    from models.data import load_corpus
    return [(ex.id, ex.rating, ex.text) for ex in load_corpus(data_dir, "tweets")]


def words_of(text: str) -> set[str]:
    """The lower-cased words of `text`, links left out (as the post_terms view splits them)."""
    return set(re.findall(r"[#@]?\w+", re.sub(r"https?://\S+", " ", text).lower()))


def is_theme_tweet(rating: float, text: str) -> bool:
    """Whether a corpus tweet belongs to the complaint surge: negative and on its theme."""
    return rating < 0 and not words_of(text).isdisjoint(THEME_TERMS)


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def malformed_messages(at: dt.datetime) -> list[bytes]:
    t = _iso(at)
    return [
        b'{"id": "bad-utf8", "text": "caf\xe9 \xff\xfe"}',
        b'{"id": "not-json", "text": "unterminated',
        b'["a", "json", "array"]',
        json.dumps({"text": "no id here", "created_at": t}).encode(),
        json.dumps({"id": "no-text", "created_at": t}).encode(),
        json.dumps({"id": "blank-text", "text": "   ", "created_at": t}).encode(),
        json.dumps({"id": "bad-time", "text": "when?", "created_at": "yesterday at noon"}).encode(),
        json.dumps({"id": 12345, "text": "numeric id", "created_at": t}).encode(),
        json.dumps({"id": "wrong-type", "text": ["not", "a", "string"], "created_at": t}).encode(),
        json.dumps({"id": "controls-only", "text": "\u200b\u200b\x07", "created_at": t}).encode(),
        b"",
        b"null",
        # Hostile values that once cost valid neighbours their place in the tables.
        json.dumps({"id": "from-2062", "text": "hello from the future", "created_at": "2062-01-01T00:00:00Z"}).encode(),
        json.dumps({"id": "star-keyword", "text": "counted twice?", "keyword": "*", "created_at": t}).encode(),
        b"[" * 10_000 + b"]" * 10_000,
        b'{"id": "huge-number", "text": "t", "retweets": ' + b"9" * 5000 + b"}",
    ]


def _time_before(lines: list[bytes], index: int) -> dt.datetime:
    """The created_at of the nearest valid post before `index`."""
    for line in reversed(lines[:index]):
        try:
            return dt.datetime.fromisoformat(json.loads(line)["created_at"].replace("Z", "+00:00"))
        except (ValueError, KeyError, TypeError):
            continue
    return START


def build(tweets: list[tuple[str, float, str]], seed: int = SEED) -> list[bytes]:
    """The sample stream's lines, in arrival order."""
    rng = random.Random(seed)
    tweets = sorted(tweets, key=lambda t: int(t[0]) if t[0].isdigit() else t[0])
    surge_ids = {tid for tid, rating, text in tweets if is_theme_tweet(rating, text)}
    hour = 3600.0
    posts = []  # (arrival_s, event_s, body)
    others = [t for t in tweets if t[0] not in surge_ids]
    for tid, _rating, text in others:
        # A gentle rise and fall over the hour: density ~ 1 + 0.5 sin(pi t / hour).
        while True:
            s = rng.uniform(0, hour)
            if rng.random() < (1 + 0.5 * math.sin(math.pi * s / hour)) / 1.5:
                break
        posts.append([s, s, {"id": f"t{tid}", "text": text, "lang": "en",
                             "keyword": rng.choice(BRANDS), "author_id": f"u{rng.randrange(10**6)}"}])
    for tid, _rating, text in (t for t in tweets if t[0] in surge_ids):
        s = SURGE_START_S + rng.uniform(0, SURGE_LEN_S)
        posts.append([s, s, {"id": f"t{tid}", "text": text, "lang": "en", "keyword": SURGE_BRAND,
                             "author_id": f"u{rng.randrange(10**6)}"}])
    for post in posts:
        post[2]["created_at"] = _iso(START + dt.timedelta(seconds=post[1]))
    posts.sort(key=lambda p: p[1])
    # Late arrivals: within allowed lateness (late panes) and beyond it (dead letters).
    candidates = [p for p in posts if 600 < p[1] < hour - 1500 and p[2]["keyword"] != SURGE_BRAND]
    for p in rng.sample(candidates, 8):
        p[0] = p[1] + rng.uniform(120, 360)
    for p in rng.sample([c for c in candidates if c[0] == c[1]], 2):
        p[0] = p[1] + 1200
    posts.sort(key=lambda p: p[0])
    lines = [json.dumps(p[2], ensure_ascii=False).encode("utf-8") for p in posts]
    # Duplicates: redelivered a few messages after the original.
    for i in sorted(rng.sample(range(len(lines) - 20), 25), reverse=True):
        lines.insert(i + rng.randint(1, 10), lines[i])
    # Malformed messages, spread through the hour, each stamped with its neighbour's time.
    for i in range(len(malformed_messages(START))):
        at = rng.randrange(100, len(lines) - 100)
        lines.insert(at, malformed_messages(_time_before(lines, at))[i])
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sample_stream", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data", help="folder that `models.data fetch` filled")
    parser.add_argument("--out", default="data/sample_stream.jsonl")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    try:
        tweets = read_tweets(args.data)
    except FileNotFoundError as e:
        print(f"sample_stream: error: {e} (run `make data` first)", file=sys.stderr)
        return 2
    lines = build(tweets, args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    os.replace(tmp, args.out)
    print(f"sample_stream: wrote {len(lines)} messages to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
