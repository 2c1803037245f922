"""Languages: what language a post is in, and whether a model may judge it.

Pure functions, no Beam: `transforms/parse.py` calls `detect` for a post that came without a
`lang`, and the routing (transforms/inference.py) calls `supports` to send each post to a
model trained for its language, or to mark it `unsupported_language` (label NULL).

    >>> detect("यह फोन बहुत बढ़िया है")[0], detect("the battery died after two hours")[0]
    ('hi', 'en')
    >>> detect("😀🔥🔥")
    ('und', 0.0)
    >>> primary("en-GB"), supports(("en",), "hi"), supports(("en",), "und"), supports(None, "hi")
    ('en', False, True, True)

The detector is py3langid (BSD-3-Clause; a 4.6 MB pure-Python wheel whose naive Bayes model
ships inside the package, numpy its only dependency; deterministic: the same text always gives
the same answer, there is no sampling to seed). About 50 microseconds a post on one core after
a 0.7 s load per process (measured on short posts; `bench`-free figures, see the report of
issue 13). Two changes to its raw answer, both measured on short customer posts:

- Its candidates are the languages X tags posts with (`X_LANGUAGES`, the code space of the
  `lang` a post arrives with), so a detected language and a given one mean the same thing to
  `--model LANG=...`, and rare look-alikes the API never emits (Extremaduran for Spanish,
  Nigerian Pidgin for English) cannot win.
- A prior: the languages most posts on X are written in (`COMMON`) weigh `COMMON_WEIGHT` times
  the others. Where two related languages fit a short text about equally well (Hindi and
  Nepali for "बहुत अच्छा"), the one far more posts are written in wins: Bayes with base rates,
  where py3langid alone assumes every language equally likely.

Below `MIN_PROBABILITY` (after the prior) the language is `und`: on short posts ("great",
"lol", "Danke!") the detector guesses, and a guess must not take a post from the model that
would have scored it. Text with no letters once links, @mentions and the '#' of hashtags are
gone (emoji, numbers, punctuation) is `und` without asking the model.
"""
from __future__ import annotations

import functools
import re
import threading

UNSUPPORTED_LANGUAGE = "unsupported_language"  # ScoredPost.skip_reason of a post no model may judge

# X API codes that name no language: undetermined, no linguistic content, and X's own codes
# for posts that are only media links, @mentions, cashtags, hashtags or a URL.
UNDETERMINED = frozenset({"und", "zxx", "qme", "qam", "qct", "qht", "qst"})

ANY_LANGUAGE = "*"  # in ModelSpec.languages: the model takes posts in any language

# The languages X tags posts with (developer docs, "supported languages"), as BCP 47 primary
# subtags, less the few py3langid has no model for (bo, ckb, dv, sd).
X_LANGUAGES = tuple(sorted(
    "am ar bg bn ca cs cy da de el en es et eu fa fi fr gu he hi ht hu hy id is it ja ka km kn ko "
    "lo lt lv ml mr my ne nl no or pa pl ps pt ro ru si sk sl sr sv ta te th tl tr ug uk ur vi "
    "zh".split()))
# The languages most posts on X are written in (by volume, the usual public estimates).
COMMON = frozenset("en ja es pt ar ko tr fr id th ru hi de it tl fa ur zh nl pl".split())
COMMON_WEIGHT = 3.0
MIN_PROBABILITY = 0.5
MAX_DETECT_CHARS = 1000  # the first 1,000 characters say as much as a 10,000-character post

_NOISE = re.compile(r"https?://\S+|www\.\S+|[@$][\w.]+|#", re.IGNORECASE)
# X's legacy codes beside the BCP 47 ones it uses today.
_ALIASES = {"iw": "he", "in": "id", "ji": "yi", "jw": "jv"}


def primary(lang: str | None) -> str:
    """A language tag -> its primary subtag, lower case ('en-GB' -> 'en', 'zh_Hant' -> 'zh');
    'und' for None or an empty tag."""
    if not lang:
        return "und"
    head = re.split(r"[-_]", lang.strip().lower(), maxsplit=1)[0]
    return _ALIASES.get(head, head) or "und"


def is_undetermined(lang: str | None) -> bool:
    return primary(lang) in UNDETERMINED


def supports(languages: tuple | list | None, lang: str | None) -> bool:
    """May a model trained for `languages` (ModelSpec.languages) judge a post in `lang`?

    None, or '*' among them: the model takes any language. An undetermined language ('und',
    'zxx', X's 'qme' ...) is supported by every model: nothing says the post is in another
    language (most are emoji, links, or too short to tell), and refusing them would take from
    the model the posts it has always scored. Otherwise the post's primary subtag must be one
    of the model's ('en-GB' is judged by an 'en' model).
    """
    if languages is None or ANY_LANGUAGE in languages:
        return True
    wanted = primary(lang)
    if wanted in UNDETERMINED:
        return True
    return wanted in {primary(code) for code in languages}


@functools.lru_cache(maxsize=1)
def _detector():
    import numpy as np
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    ident.set_languages([code for code in X_LANGUAGES if code in set(ident.labels)])
    classes = list(ident.nb_classes)
    prior = np.array([COMMON_WEIGHT if code in COMMON else 1.0 for code in classes], dtype=np.float64)
    return ident, classes, prior


_LOCK = threading.Lock()


def detector():
    """(py3langid identifier, its class codes, the prior per class), loaded once per process
    (0.7 s, 70 MB; never pickled with a DoFn)."""
    with _LOCK:
        return _detector()


def posterior(text: str) -> dict[str, float]:
    """Every candidate language's probability for `text` after the prior (they sum to 1)."""
    ident, classes, prior = detector()
    # _decide: the per-class probabilities `rank` sorts (py3langid is pinned exactly); taken
    # unsorted, the prior is one vector product.
    weighted = ident._decide(text).astype("float64") * prior
    total = weighted.sum()
    if not total > 0:
        return {}
    return {code: float(p) for code, p in zip(classes, weighted / total) if p > 0}


def _letters(text: str) -> str:
    return _NOISE.sub(" ", text[:MAX_DETECT_CHARS])


def detect(text) -> tuple[str, float]:
    """A post's text -> (language, probability): an X_LANGUAGES code with its posterior
    probability, or ('und', p) when no language reaches MIN_PROBABILITY, ('und', 0.0) when the
    text holds no letters. Never raises; the same text always gives the same answer."""
    if not isinstance(text, str):
        return "und", 0.0
    cleaned = _letters(text)
    if not any(ch.isalpha() for ch in cleaned):
        return "und", 0.0
    try:
        probabilities = posterior(cleaned)
    except (ValueError, UnicodeError, OverflowError, FloatingPointError):
        return "und", 0.0
    if not probabilities:
        return "und", 0.0
    lang, best = max(probabilities.items(), key=lambda pair: (pair[1], pair[0]))
    probability = round(best, 6)
    return (lang if probability >= MIN_PROBABILITY else "und"), probability
