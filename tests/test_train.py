"""models.train / models.export: a small training run gives a loadable model that honours the contract."""
import json
import os

import pytest

import models  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import tensorflow as tf
import tf_keras

from models import data as data_lib
from models import train
from models.contracts import ModelSpec

REAL_DATA = "data"


def serve(model_dir, texts):
    fn = tf.saved_model.load(model_dir).signatures["serving_default"]
    return {k: v.numpy() for k, v in fn(text=tf.constant(texts)).items()}


def test_standardize_splits_punctuation_but_keeps_contractions():
    out = train.Standardize()(tf.constant(["I DON'T like it!!! :) 'quoted' Café…", ""])).numpy()
    assert out[0].decode() == "i don't like it ! ! ! :) quoted café …"
    assert out[1].decode() == ""


def test_lexicon_features_apply_vader_negation_and_boosters():
    vocab = ["", "[UNK]", "good", "not", "very", "but", "bad", "!"]
    lexicon = {"good": 1.9, "bad": -2.5}
    layer = train.LexiconFeatures(len(vocab))
    layer.build((None, None))
    layer.set_tables(train.lexicon_tables(vocab, lexicon))
    ids = tf.constant([[2, 0, 0, 0], [3, 2, 0, 0], [4, 2, 0, 0], [2, 5, 6, 0], [2, 7, 0, 0]], tf.int64)
    features, negated = layer(ids)
    compound = features.numpy()[:, 0]
    assert negated.numpy()[1].tolist() == [0, 1, 1, 1]  # three tokens after 'not' (pads included)
    good = 1.9 / np.sqrt(1.9**2 + 15)
    assert compound[0] == pytest.approx(good, rel=1e-5)
    assert compound[1] == pytest.approx(-0.74 * 1.9 / np.sqrt((0.74 * 1.9) ** 2 + 15), rel=1e-5)  # "not good"
    assert compound[2] > compound[0]  # "very good"
    assert compound[3] < 0  # "good but bad": after 'but' weighs 1.5x, before 0.5x
    assert compound[4] > compound[0]  # "good !"


def test_vocabulary_keeps_lexicon_words_unseen_in_training():
    vocab = train.build_vocabulary(["the phone is ok", "the phone"], {"wonderful": 2.7, "ok": 0.9}, max_tokens=400)
    assert "wonderful" in vocab and "ok" in vocab and "not" in vocab
    assert "is" not in vocab  # seen once, not in the lexicon
    assert len(vocab) <= 398 and len(set(vocab)) == len(vocab)


def test_tiny_model_honours_the_contract(tiny_bundled_model):
    spec = ModelSpec.load(tiny_bundled_model)
    assert spec.classes == data_lib.LABELS and spec.class_scores == (-1.0, 0.0, 1.0)
    assert spec.vocab_size == train.MAX_TOKENS and spec.max_length == train.MAX_LENGTH
    meta = json.load(open(os.path.join(tiny_bundled_model, "model.json")))
    for key in ("evaluation", "label_rule", "training", "ablation"):
        assert key in meta
    out = serve(tiny_bundled_model, ["I love this phone", "I hate the service, worst ever", "", "qqq " * 300])
    assert out["probabilities"].shape == (4, 3)
    np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, rtol=1e-5)
    assert out["token_count"].tolist() == [4, 7, 0, 256]
    assert out["oov_count"].tolist() == [0, 0, 0, 256]
    labels = [spec.predict(p).label for p in out["probabilities"][:2]]
    assert labels == ["positive", "negative"]
    keras_model = tf_keras.models.load_model(tiny_bundled_model)
    direct = keras_model(tf.constant(["I love this phone"])).numpy()
    np.testing.assert_allclose(direct, out["probabilities"][:1], rtol=1e-5)


@pytest.mark.skipif(not os.path.isdir(os.path.join(REAL_DATA, data_lib.DATASET)),
                    reason="data/hutto_ICWSM_2014 missing: run `make data`")
def test_cli_trains_a_subset_reproducibly(tmp_path):
    # What `make train` runs, on 400 real examples for two epochs, twice: same seed, same model.
    outs = []
    for name in ("a", "b"):
        argv = ["--data", REAL_DATA, "--out", str(tmp_path / name), "--subset", "400", "--epochs", "2",
                "--no-ablation", "--version", "subset-test"]
        assert train.main(argv) == 0
        outs.append(serve(str(tmp_path / name), ["great movie", "awful, boring plot", "it rained"]))
    np.testing.assert_array_equal(outs[0]["probabilities"], outs[1]["probabilities"])
    meta = json.load(open(tmp_path / "a" / "model.json"))
    assert meta["training"]["subset"] == 400
    assert set(meta["evaluation"]["per_split"]) == set(data_lib.CORPORA)


def test_cli_reports_missing_data_in_one_line(tmp_path, capsys):
    assert train.main(["--data", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "make data" in err and "\n" not in err


def test_macro_f1_and_accuracy_match_hand_counts():
    from models import evaluate

    truth, predicted = [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0]
    # per class F1: neg 2*.5*.5/1 = .5, neu 2*.5*1/1.5 = .667, pos 2*1*.667/1.667 = .8
    assert evaluate.macro_f1(truth, predicted) == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)
    assert evaluate.accuracy(truth, predicted) == pytest.approx(4 / 6)
    assert evaluate.vader_predict(["I love it", "It is a table", "I hate it"]).tolist() == [2, 1, 0]


def test_calibration_moves_thresholds_only_on_the_given_split():
    examples = [data_lib.Example(str(i), r, "x", "amazon") for i, r in enumerate([-2.0, 0.0, 0.0, 2.0])]
    # The model under-predicts neutral: a positive offset on the neutral class fixes it.
    probs = np.array([[0.8, 0.15, 0.05], [0.5, 0.4, 0.1], [0.1, 0.4, 0.5], [0.05, 0.15, 0.8]])
    bias = train.calibrate_bias(probs, examples)
    predicted = (np.log(probs) + bias).argmax(-1)
    assert predicted.tolist() == [0, 1, 1, 2]


def test_paired_bootstrap_of_the_f1_gain():
    from models import evaluate

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 600)
    noisy = np.where(rng.random(600) < 0.5, truth, rng.integers(0, 3, 600))  # about 2/3 right
    same = evaluate.paired_bootstrap_f1_gain(truth, noisy, noisy)
    assert same == {"gain": 0.0, "ci95": [0.0, 0.0], "share_a_better": 0.0}
    better = evaluate.paired_bootstrap_f1_gain(truth, truth, noisy)
    assert better["gain"] == pytest.approx(1 - evaluate.macro_f1(truth, noisy), abs=1e-4)
    assert 0 < better["ci95"][0] <= better["gain"] <= better["ci95"][1] and better["share_a_better"] == 1.0
    # Two predictors of the same quality: the interval straddles zero.
    other = np.where(rng.random(600) < 0.5, truth, rng.integers(0, 3, 600))
    tie = evaluate.paired_bootstrap_f1_gain(truth, noisy, other)
    assert tie["ci95"][0] < 0 < tie["ci95"][1]
    # The vectorised resampled F1 agrees with macro_f1 on a single confusion matrix.
    m = evaluate.confusion(truth, noisy)
    assert evaluate._macro_f1_of_counts(m) == pytest.approx(evaluate.macro_f1(truth, noisy))
