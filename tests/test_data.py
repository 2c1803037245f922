"""models.data: parsing (BOM, cp1252 lines, CRLF), labels, the split rules, on a fake corpus and the real one."""
import collections
import os

import pytest

from models import data

REAL_DATA = "data"
needs_real = pytest.mark.skipif(
    not os.path.isdir(os.path.join(REAL_DATA, data.DATASET)), reason="data/hutto_ICWSM_2014 missing: run `make data`"
)


def write_corpus(root, name, rows, bom=False, crlf=True):
    folder = root / data.DATASET
    folder.mkdir(exist_ok=True)
    sep = b"\r\n" if crlf else b"\n"
    body = sep.join(
        f"{i}\t{r}\t".encode() + (t if isinstance(t, bytes) else t.encode("utf-8")) for i, r, t in rows
    )
    (folder / data.CORPORA[name]).write_bytes((b"\xef\xbb\xbf" if bom else b"") + body + sep)


def fake_tweets(n=200):
    # Ratings cycle through all three labels so every stratum is populated.
    ratings = [-2.0, 0.0, 2.5, 1.0, -0.7]
    return [(i, ratings[i % len(ratings)], f"tweet number {i}") for i in range(1, n + 1)]


def test_label_cut_points_are_exclusive_at_half_a_point():
    assert data.label_of(-0.51) == "negative"
    assert data.label_of(-0.5) == "neutral"
    assert data.label_of(0.0) == "neutral"
    assert data.label_of(0.5) == "neutral"
    assert data.label_of(0.51) == "positive"
    assert data.score_of(4.0) == 1.0 and data.score_of(-2.0) == -0.5
    assert data.LABEL_CUTS == (-0.125, 0.125)


def test_parses_bom_crlf_and_cp1252_lines(tmp_path):
    write_corpus(
        tmp_path, "amazon",
        [("1_1", -0.9, "no picture"), ("1_2", 1.25, b"caf\xe9 was great"), ("2_1", 0.0, "plain \u00e9 utf-8")],
        bom=True,
    )
    rows = data.load_corpus(str(tmp_path), "amazon")
    assert rows[0] == data.Example("1_1", -0.9, "no picture", "amazon")
    assert rows[1].text == "caf\u00e9 was great"  # the cp1252 line, decoded alone
    assert rows[2].text == "plain \u00e9 utf-8"
    assert [r.id for r in rows] == ["1_1", "1_2", "2_1"]
    # Either path to the data works: data/ or data/hutto_ICWSM_2014/.
    assert data.load_corpus(str(tmp_path / data.DATASET), "amazon") == rows


def test_bad_lines_and_missing_files_are_one_line_errors(tmp_path):
    with pytest.raises(data.DataError, match="line 2"):
        data.parse_ground_truth(b"1\t0.5\tok\r\n2\tnot-a-number\tbad\r\n", "tweets")
    with pytest.raises(data.DataError, match="outside"):
        data.parse_ground_truth(b"1\t7.5\ttoo high\n", "tweets")
    with pytest.raises(data.DataError, match="make data"):
        data.load_corpus(str(tmp_path), "nyt")
    with pytest.raises(data.DataError, match="unknown corpus"):
        data.load_corpus(str(tmp_path), "reddit")


def test_split_reserves_tweets_with_ids_divisible_by_five(tmp_path):
    write_corpus(tmp_path, "tweets", fake_tweets(200))
    parts = data.split(data.load_corpus(str(tmp_path), "tweets"), seed=1)
    assert sorted(int(e.id) for e in parts["test"]) == list(range(5, 201, 5))
    rest = parts["train"] + parts["val"]
    assert all(int(e.id) % 5 for e in rest)
    assert len(rest) == 160 and len(parts["val"]) == 16  # 90/10 of the unreserved tweets


def test_other_corpora_split_80_10_10_stratified_and_seeded(tmp_path):
    rows = [(i, [-3.0, 0.2, 3.0][i % 3], f"snippet {i}") for i in range(300)]
    write_corpus(tmp_path, "movies", rows)
    examples = data.load_corpus(str(tmp_path), "movies")
    parts = data.split(examples, seed=7)
    assert {k: len(v) for k, v in parts.items()} == {"train": 240, "val": 30, "test": 30}
    for name in data.SPLITS:  # each label keeps its third in every split
        counts = collections.Counter(data.label_of(e.rating) for e in parts[name])
        assert set(counts.values()) == {len(parts[name]) // 3}
    ids = [{e.id for e in parts[n]} for n in data.SPLITS]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    # The same seed gives the same split whatever order the examples come in.
    reordered = data.split(list(reversed(examples)), seed=7)
    assert {k: {e.id for e in v} for k, v in reordered.items()} == {k: {e.id for e in v} for k, v in parts.items()}
    other = data.split(examples, seed=8)
    assert {e.id for e in other["test"]} != {e.id for e in parts["test"]}


def test_fetch_is_idempotent_and_reports_an_unreachable_registry(tmp_path, capsys):
    write_corpus(tmp_path, "tweets", fake_tweets(5))
    for name in ("movies", "amazon", "nyt"):
        write_corpus(tmp_path, name, [(1, 0.0, "x")])
    # Already present: pip is never called (a command that would fail proves it).
    assert data.fetch(str(tmp_path), pip=["false"]).endswith(data.DATASET)
    with pytest.raises(data.DataError, match="could not download"):
        data.fetch(str(tmp_path / "empty"), pip=["false"])
    assert data.main(["fetch", "--dest", str(tmp_path)]) == 0
    assert "already present" in capsys.readouterr().out


@needs_real
def test_real_corpora_sizes_labels_and_reserved_split():
    sizes = {name: len(data.load_corpus(REAL_DATA, name)) for name in data.CORPORA}
    assert sizes == {"tweets": 4200, "movies": 10605, "amazon": 3708, "nyt": 5190}
    tweets = data.load_corpus(REAL_DATA, "tweets")
    assert not any(t.text.startswith("\ufeff") for t in tweets)
    parts = data.split(data.load_all(REAL_DATA))
    reserved = [e for e in parts["test"] if e.corpus == "tweets"]
    assert len(reserved) == 840 and all(int(e.id) % 5 == 0 for e in reserved)
    train_ids = {(e.corpus, e.id) for e in parts["train"] + parts["val"]}
    assert not train_ids & {(e.corpus, e.id) for e in parts["test"]}
    assert sum(len(v) for v in parts.values()) == sum(sizes.values())
    # Labels from the +/-0.5 cut: every class is present in every corpus's test split.
    for corpus in data.CORPORA:
        labels = {data.label_of(e.rating) for e in parts["test"] if e.corpus == corpus}
        assert labels == set(data.LABELS)
