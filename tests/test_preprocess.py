"""clean_text / models.textnorm.normalize on the social-text cases the model meets."""
import pytest

from transforms.preprocess import clean_text


@pytest.mark.parametrize("raw,clean", [
    ("Check https://t.co/abc and www.example.com now", "Check url and url now"),
    ("@AcmeAir @bob_99 my bag is lost", "@user @user my bag is lost"),
    ("#NeverAgain #fail #NASA", "Never Again fail NASA"),
    ("Fish &amp; chips &lt;3", "Fish & chips <3"),
    ("Soooooo goooood!!!", "Soo good!!!"),
    ("ｆｕｌｌ ｗｉｄｔｈ", "full width"),
    ("tab\tbell\x07zero\u200bwidth", "tab bell zero width"),
    ("I love it 😍", "I love it smiling face with heart-eyes"),
    ("cafÃ© is great", "café is great"),
    ("   spaced    out   ", "spaced out"),
])
def test_clean_text(raw, clean):
    assert clean_text(raw) == clean


def test_only_control_characters_clean_to_nothing():
    assert clean_text("\u200b\x07\u200e") == ""
