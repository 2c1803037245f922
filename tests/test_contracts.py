"""The model contract's output mapping: softmax probabilities -> label, score, stars, confidence."""
import json

import pytest

from models.contracts import ModelSpec, label_for_score, parse_rfc3339


def test_three_class_mapping():
    spec = ModelSpec(version="v1")
    p = spec.predict([0.7, 0.2, 0.1])
    assert p.label == "negative" and p.score == pytest.approx(-0.6) and p.stars is None
    assert p.confidence == pytest.approx(0.7)


def test_five_star_mapping_uses_expected_stars():
    spec = ModelSpec.for_stars(5, version="nlptown")
    assert spec.class_scores == (-1.0, -0.5, 0.0, 0.5, 1.0)
    p = spec.predict([0.0, 0.1, 0.2, 0.3, 0.4])  # E[stars] = 4.0 -> score 0.5
    assert (p.label, p.stars) == ("positive", 5)
    assert p.score == pytest.approx(0.5) and p.confidence == pytest.approx(0.4)
    # argmax says 1 star, but the expectation is neutral: the label follows the score.
    p = spec.predict([0.4, 0.0, 0.0, 0.3, 0.3])
    assert p.stars == 1 and p.score == pytest.approx(0.05) and p.label == "neutral"


def test_probabilities_are_renormalised_and_validated():
    spec = ModelSpec()
    assert spec.predict([2.0, 2.0, 4.0]).confidence == pytest.approx(0.5)
    for bad in ([0.5, 0.5], [float("nan"), 0.5, 0.5], [0.0, 0.0, 0.0], [-1.0, 1.0, 1.0]):
        with pytest.raises(ValueError):
            spec.predict(bad)


def test_binary_model_via_class_labels():
    spec = ModelSpec(classes=("NEG", "POS"), class_scores=(-1.0, 1.0), class_labels=("negative", "positive"))
    assert spec.predict([0.2, 0.8]).label == "positive"
    with pytest.raises(ValueError):
        ModelSpec(classes=("a", "b"), class_scores=(-1.0, 1.0))  # names that are not labels, no mapping


def test_model_json_round_trip(tmp_path):
    spec = ModelSpec(version="2026.11", vocab_size=10_000, max_length=256, extra={"evaluation": {"f1": 0.7}})
    (tmp_path / "model.json").write_text(json.dumps(spec.to_dict()))
    loaded = ModelSpec.load(str(tmp_path))
    assert loaded == spec and loaded.extra["evaluation"] == {"f1": 0.7}


@pytest.mark.parametrize("score,label", [(-0.26, "negative"), (-0.25, "neutral"), (0.25, "neutral"), (0.2501, "positive")])
def test_label_for_score(score, label):
    assert label_for_score(score) == label


def test_parse_rfc3339():
    assert parse_rfc3339("2026-11-24T14:00:00Z").isoformat() == "2026-11-24T14:00:00+00:00"
    with pytest.raises(ValueError, match="time zone"):
        parse_rfc3339("2026-11-24T14:00:00")
