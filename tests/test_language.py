"""Languages: the detector (transforms/language.py), parse's use of it, and the model contract's
`languages` (models.json, ModelSpec, Hugging Face checkpoints)."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.contracts import ModelSpec
from transforms import language
from transforms.language import (UNDETERMINED, UNSUPPORTED_LANGUAGE, X_LANGUAGES, detect, primary,
                                 supports)
from transforms.parse import DEFAULT_LANG, RESERVED, ParseError, _name, _roll_up_safe, parse_post


def test_hindi_english_and_emoji():
    assert detect("बहुत अच्छा")[0] == "hi"  # py3langid alone says Nepali: the prior decides
    assert detect("यह फोन बहुत बढ़िया है")[0] == "hi"
    assert detect("The battery died after two hours and support never answered")[0] == "en"
    for nothing in ("😀🔥🔥", "👍", "!!! ???", "12345", "@acme https://t.co/abc #"):
        lang, p = detect(nothing)
        assert lang in UNDETERMINED and p == 0.0


@pytest.mark.parametrize("text,lang", [
    ("me encanta este producto", "es"), ("je n'aime pas du tout ce produit", "fr"),
    ("Der Kundenservice ist eine Katastrophe", "de"), ("この製品は最高です", "ja"),
    ("Ужасное обслуживание", "ru"), ("هذا المنتج رائع", "ar"), ("meu pedido atrasou de novo", "pt"),
])
def test_other_languages(text, lang):
    assert detect(text)[0] == lang


def test_short_ambiguous_text_is_undetermined_not_guessed():
    # The detector's best guesses here are wrong (Basque, Hungarian, Danish): below the threshold.
    for text in ("terrible", "lol", "Danke!"):
        lang, p = detect(text)
        assert lang == "und" and p < language.MIN_PROBABILITY


def test_links_mentions_and_hashtag_signs_are_not_language():
    assert detect("@acme_support https://t.co/x1 #fail the battery died after two hours")[0] == "en"


def test_deterministic():
    text = "el peor servicio que he tenido"
    assert len({detect(text) for _ in range(5)}) == 1


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=200).map(lambda b: b.decode("utf-8", "replace")))
def test_detect_never_raises_and_answers_a_known_code(text):
    lang, p = detect(text)
    assert lang in X_LANGUAGES or lang == "und"
    assert 0.0 <= p <= 1.0 + 1e-6
    assert lang == "und" or p >= language.MIN_PROBABILITY


def test_detect_takes_anything():
    assert detect(None) == ("und", 0.0) and detect(b"bytes") == ("und", 0.0)
    assert detect("\ud800 lone surrogate and some english words here")[0] in ("en", "und")
    assert detect("a" * 20_000)[0] in X_LANGUAGES + ("und",)


def test_primary_and_supports():
    assert primary("en-GB") == "en" and primary("EN") == "en" and primary("zh_Hant") == "zh"
    assert primary(None) == "und" and primary("") == "und" and primary("iw") == "he"
    assert supports(("en",), "en-GB") and not supports(("en",), "hi") and supports(("en", "hi"), "hi")
    assert supports(None, "hi") and supports(("*",), "hi") and supports(("en", "*"), "ja")
    for code in UNDETERMINED:  # nothing says the post is in another language
        assert supports(("en",), code)
    assert supports(("en",), None)
    assert UNSUPPORTED_LANGUAGE == "unsupported_language"


# ---- parse -------------------------------------------------------------------------------------

def body(**fields):
    base = {"id": "1", "text": "hello", "created_at": "2026-11-24T14:00:00Z"}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def test_parse_detects_a_missing_lang_and_keeps_a_given_one():
    assert parse_post(body(text="बहुत अच्छा"), {}, None).lang == "hi"
    assert parse_post(body(text="the battery died after two hours"), {}, None).lang == "en"
    assert parse_post(body(text="😀😀"), {}, None).lang == DEFAULT_LANG
    # A given lang is kept, even where the text says otherwise (the sender knows better or the
    # routing shows it): body first, then the attribute, lower case as before.
    assert parse_post(body(text="बहुत अच्छा", lang="EN"), {}, None).lang == "en"
    assert parse_post(body(text="बहुत अच्छा"), {"lang": "Ja"}, None).lang == "ja"
    assert parse_post(body(text="the battery died", lang="und"), {}, None).lang == "und"


def test_parse_counts_detected_languages_through_beam_metrics():
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.testing.test_pipeline import TestPipeline

    from models.contracts import RawMessage
    from transforms.parse import NAMESPACE, ParsePosts

    messages = [RawMessage(body(id="1", text="बहुत अच्छा"), {}, 1.7e9),
                RawMessage(body(id="2", text="यह फोन बहुत बढ़िया है"), {}, 1.7e9),
                RawMessage(body(id="3", text="😀"), {}, 1.7e9),
                RawMessage(body(id="4", text="the battery died", lang="en"), {}, 1.7e9)]
    p = TestPipeline()
    _ = p | beam.Create(messages) | ParsePosts()
    result = p.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed
                for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]}
    assert counters["lang_detected"] == 3
    assert counters["lang_detected_hi"] == 2 and counters["lang_detected_und"] == 1
    assert "lang_detected_en" not in counters  # post 4 named its language


@settings(max_examples=150, deadline=None)
@given(st.text(min_size=1, max_size=200).filter(lambda t: t.strip()))
def test_parse_without_lang_gives_a_valid_lang(text):
    post = parse_post(json.dumps({"id": "1", "text": text, "created_at": "2026-11-24T14:00:00Z"}).encode(), {}, None)
    assert post.lang != RESERVED and post.lang == post.lang.lower()
    assert _name(post.lang, "lang", 35) == post.lang and _roll_up_safe(post.lang, "language") == post.lang


def test_a_reserved_lang_is_still_refused():
    with pytest.raises(ParseError, match="reserved"):
        parse_post(body(lang="*"), {}, None)


# ---- the model contract ------------------------------------------------------------------------

def test_model_spec_languages():
    assert ModelSpec().languages is None
    assert ModelSpec.from_dict({"languages": ["EN", "hi"]}).languages == ("en", "hi")
    assert ModelSpec.from_dict({"languages": "*"}).languages == ("*",)
    assert ModelSpec.from_dict({"version": "v"}).languages is None  # absent: any language
    assert ModelSpec.from_dict({"languages": ["en"]}).to_dict()["languages"] == ["en"]
    for bad in ([], [""], [3]):
        with pytest.raises(ValueError, match="languages"):
            ModelSpec.from_dict({"languages": bad})


def test_bundled_model_is_english():
    from models import locations

    assert ModelSpec.load(locations.bundled_dir()).languages == ("en",)


def test_train_writes_languages_into_the_spec():
    import inspect

    from models import train

    assert '"languages": ["en"]' in inspect.getsource(train.run)


def _hf_checkpoint(path, model_json=None):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": 30, "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 1, "intermediate_size": 8, "max_position_embeddings": 64,
        "id2label": {"0": "negative", "1": "neutral", "2": "positive"}}))
    if model_json is not None:
        (path / "model.json").write_text(model_json)
    return str(path)


def test_hugging_face_languages_from_a_model_json_beside_the_checkpoint(tmp_path):
    from models.hf import create_hf_handler

    assert create_hf_handler(_hf_checkpoint(tmp_path / "plain"))[1].languages is None
    spec = create_hf_handler(_hf_checkpoint(tmp_path / "hi", json.dumps({"languages": ["hi", "en"]})))[1]
    assert spec.languages == ("hi", "en") and spec.labels == ("negative", "neutral", "positive")
    assert create_hf_handler(_hf_checkpoint(tmp_path / "none", "{}"))[1].languages is None
    with pytest.raises(ValueError, match="not JSON"):
        create_hf_handler(_hf_checkpoint(tmp_path / "bad", "{nope"))
    with pytest.raises(ValueError, match="languages"):
        create_hf_handler(_hf_checkpoint(tmp_path / "empty", json.dumps({"languages": []})))
