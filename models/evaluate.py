"""Scoring a model against the test splits, beside the VADER lexicon on the same posts.

    python -m models.evaluate --data data --model models/bundled                # prints the table
    python -m models.evaluate --data data --model models/bundled --throughput   # posts/s, 1 CPU thread

The baseline is the `vaderSentiment` package's SentimentIntensityAnalyzer: compound
score with the usual cuts (>= 0.05 positive, <= -0.05 negative, neutral between).
Both sides see the same text (the raw snippet); the bundled model is served the
text after `models.textnorm.normalize`, exactly as the pipeline's Clean step does.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

import numpy as np

from models import data as data_lib

VADER_CUT = 0.05
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 5


def confusion(truth: Sequence[int], predicted: Sequence[int], n: int = 3) -> np.ndarray:
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (np.asarray(truth, dtype=int), np.asarray(predicted, dtype=int)), 1)
    return m


def macro_f1(truth: Sequence[int], predicted: Sequence[int], n: int = 3) -> float:
    """Unweighted mean of per-class F1 (a class absent from both truth and prediction scores 0)."""
    m = confusion(truth, predicted, n)
    tp = np.diag(m).astype(float)
    precision = np.divide(tp, m.sum(0), out=np.zeros(n), where=m.sum(0) > 0)
    recall = np.divide(tp, m.sum(1), out=np.zeros(n), where=m.sum(1) > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n), where=denom > 0)
    return float(f1.mean())


def macro_f1_present(truth: Sequence[int], predicted: Sequence[int], n: int = 3) -> float | None:
    """Mean per-class F1 over the classes present (labelled or predicted); None for no posts. A class
    nobody labelled and the model never said is no evidence either way (the live accuracy watch:
    60 negative labels the model got all right give 1.0, where `macro_f1` gives 0.333)."""
    m = confusion(truth, predicted, n)
    present = (m.sum(0) + m.sum(1)) > 0
    if not present.any():
        return None
    tp = np.diag(m).astype(float)
    precision = np.divide(tp, m.sum(0), out=np.zeros(n), where=m.sum(0) > 0)
    recall = np.divide(tp, m.sum(1), out=np.zeros(n), where=m.sum(1) > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n), where=denom > 0)
    return float(f1[present].sum() / present.sum())


def _f1_of_counts(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Confusion matrices `[..., n, n]` -> (F1 per class, predicted, actual), each `[..., n]`."""
    tp = np.diagonal(m, axis1=-2, axis2=-1).astype(float)
    predicted, actual = m.sum(-2), m.sum(-1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return f1, predicted, actual


def _macro_f1_of_counts(m: np.ndarray) -> np.ndarray:
    """Confusion matrices `[..., n, n]` -> macro-F1 `[...]` (the same rule as `macro_f1`)."""
    return _f1_of_counts(m)[0].mean(-1)


def _macro_f1_present_of_counts(m: np.ndarray) -> np.ndarray:
    """Confusion matrices `[..., n, n]` -> macro-F1 over the classes present `[...]` (`macro_f1_present`;
    0 where no class is present)."""
    f1, predicted, actual = _f1_of_counts(m)
    present = (predicted + actual) > 0
    count = present.sum(-1)
    return np.divide((f1 * present).sum(-1), count, out=np.zeros(count.shape), where=count > 0)


def paired_bootstrap_f1_gain(truth: Sequence[int], a: Sequence[int], b: Sequence[int], n: int = 3,
                             resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    """How sure is "a beats b on macro-F1"? Paired bootstrap over the same posts.

    Returns {'gain': F1(a) - F1(b), 'ci95': [2.5th, 97.5th percentile of the resampled gain],
    'share_a_better': the share of resamples in which a scores higher}. A CI that excludes 0
    means the gain is not an accident of which posts landed in the test split.
    """
    truth, a, b = (np.asarray(x, dtype=np.int64) for x in (truth, a, b))
    gain = macro_f1(truth, a, n) - macro_f1(truth, b, n)
    if len(truth) == 0:
        return {"gain": 0.0, "ci95": [0.0, 0.0], "share_a_better": 0.0}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(truth), size=(resamples, len(truth)))
    offsets = (np.arange(resamples) * n * n)[:, None]

    def resampled_f1(predicted):
        codes = (truth[idx] * n + predicted[idx] + offsets).ravel()
        counts = np.bincount(codes, minlength=resamples * n * n).reshape(resamples, n, n)
        return _macro_f1_of_counts(counts)

    gains = resampled_f1(a) - resampled_f1(b)
    low, high = np.percentile(gains, [2.5, 97.5])
    return {"gain": round(float(gain), 4), "ci95": [round(float(low), 4), round(float(high), 4)],
            "share_a_better": round(float((gains > 0).mean()), 4)}


def accuracy(truth: Sequence[int], predicted: Sequence[int]) -> float:
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    return float((truth == predicted).mean()) if len(truth) else 0.0


def vader_predict(texts: Sequence[str]) -> np.ndarray:
    """Texts -> class indices (0 negative, 1 neutral, 2 positive) from VADER's compound score."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    out = np.ones(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        compound = analyzer.polarity_scores(text)["compound"]
        out[i] = 2 if compound >= VADER_CUT else 0 if compound <= -VADER_CUT else 1
    return out


def evaluation_table(
    test: Sequence[data_lib.Example],
    predict: Callable[[list[str]], np.ndarray],
    vader: Callable[[list[str]], np.ndarray] = vader_predict,
) -> dict:
    """Test examples (any corpora) -> {'tweets': {'support': n, 'model': {...}, 'vader': {...}}, ...}.

    `predict` maps raw texts to class indices. Corpora appear in data.CORPORA order;
    `support` counts examples per label too; `model_vs_vader` is the paired bootstrap of the
    macro-F1 gain (see paired_bootstrap_f1_gain).
    """
    table = {}
    for corpus in data_lib.CORPORA:
        rows = [e for e in test if e.corpus == corpus]
        if not rows:
            continue
        texts = [e.text for e in rows]
        truth = [data_lib.label_index(e.rating) for e in rows]
        entry = {"support": len(rows)}
        entry["support_per_label"] = {
            lab: int(sum(1 for t in truth if t == i)) for i, lab in enumerate(data_lib.LABELS)
        }
        predictions = {}
        for name, fn in (("model", predict), ("vader", vader)):
            predicted = predictions[name] = fn(texts)
            entry[name] = {
                "accuracy": round(accuracy(truth, predicted), 4),
                "macro_f1": round(macro_f1(truth, predicted), 4),
            }
        entry["model_vs_vader"] = paired_bootstrap_f1_gain(truth, predictions["model"], predictions["vader"])
        table[corpus] = entry
    return table


def format_table(table: dict) -> str:
    lines = [f"{'split':8} {'n':>5}  {'model acc':>9} {'model F1':>8}  {'VADER acc':>9} {'VADER F1':>8}"
             f"  {'F1 gain [95% CI]':>22} {'P(better)':>9}"]
    for corpus, e in table.items():
        m, v = e["model"], e["vader"]
        line = (f"{corpus:8} {e['support']:>5}  {m['accuracy']:>9.3f} {m['macro_f1']:>8.3f}"
                f"  {v['accuracy']:>9.3f} {v['macro_f1']:>8.3f}")
        if "model_vs_vader" in e:
            g = e["model_vs_vader"]
            ci = f"{g['gain']:+.3f} [{g['ci95'][0]:+.3f}, {g['ci95'][1]:+.3f}]"
            line += f"  {ci:>22} {g['share_a_better']:>9.3f}"
        lines.append(line)
    return "\n".join(lines)


def saved_model_predictor(model_dir: str, batch_size: int = 512) -> Callable[[list[str]], np.ndarray]:
    """A SavedModel directory -> fn(raw texts) -> class indices, normalising text as the pipeline does."""
    import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
    import tensorflow as tf

    from models.textnorm import normalize

    serve = tf.saved_model.load(model_dir).signatures["serving_default"]

    def predict(texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            batch = tf.constant([normalize(t) for t in texts[start : start + batch_size]])
            out.append(serve(text=batch)["probabilities"].numpy().argmax(-1))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    return predict


def throughput(model_dir: str, texts: Sequence[str], batch_size: int = 256, repeats: int = 5) -> dict:
    """Posts per second of the serving signature on one CPU thread (call in a fresh process).

    Texts are normalised once up front: this times the model, not the Clean step.
    Best of `repeats` passes over all texts, after one warm-up pass.
    """
    import time

    import models  # noqa: F401
    import tensorflow as tf

    from models.textnorm import normalize

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    serve = tf.saved_model.load(model_dir).signatures["serving_default"]
    batches = [tf.constant([normalize(t) for t in texts[i : i + batch_size]]) for i in range(0, len(texts), batch_size)]
    for b in batches:
        serve(text=b)["probabilities"].numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for b in batches:
            serve(text=b)["probabilities"].numpy()
        best = min(best, time.perf_counter() - start)
    return {"posts_per_second": round(len(texts) / best), "ms_per_batch": round(1000 * best / len(batches), 2),
            "batch_size": batch_size, "posts": len(texts), "threads": 1,
            "texts": "all 4,200 tweets of the Hutto & Gilbert corpus"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="data")
    parser.add_argument("--model", default="models/bundled")
    parser.add_argument("--seed", type=int, default=data_lib.DEFAULT_SEED)
    parser.add_argument("--throughput", action="store_true", help="print posts/s on one CPU thread as JSON")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    import os

    if not os.path.exists(os.path.join(args.model, "saved_model.pb")):
        print(f"error: {args.model} holds no SavedModel; run `make train`", file=sys.stderr)
        return 2
    try:
        if args.throughput:
            import json

            texts = [e.text for e in data_lib.load_corpus(args.data, "tweets")]
            print(json.dumps(throughput(args.model, texts, args.batch_size)))
            return 0
        test = data_lib.split(data_lib.load_all(args.data), args.seed)["test"]
    except data_lib.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(evaluation_table(test, saved_model_predictor(args.model))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
