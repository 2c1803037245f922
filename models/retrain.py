"""`pulse retrain`: train a challenger on the corpora plus the review desk's labels, and promote it
only when it is measurably better than the current model (the champion).

    pulse retrain --output out --registry registry          # `make retrain`
    pulse retrain --output my-proj:pulse --registry gs://bucket/registry --epochs 12

Steps:

1. The champion is the registry's current model (models/registry.py); an empty registry is
   first initialised with the bundled model.
2. Labels: `labels_latest` of the output (Parquet through DuckDB, or BigQuery), resolved per
   post by THE RULE (`resolve_labels`, the same rule as the SQL view `labels_resolved`):
   per (post_id, keyword), each reviewer's latest label (latest labelled_at, ties broken by the
   greater label_id; a correction is later than what it corrects); skips are dropped; the class
   with strictly the most votes is the post's label; a tie between classes makes the post
   *contested*: it is left out of training and evaluation, and counted. A resolved label is a
   training example with the rating of its class on the corpora's [-4, 4] scale (negative
   -2.0, neutral 0.0, positive +2.0: `data.label_of` maps them back to the same class),
   corpus "labels".
3. Held-out labels (`split_labels`): a stable share (`--label-holdout`, default 0.2) chosen by
   crc32 of (post_id, keyword) is never trained on; it is a test split beside the corpora's.
   Leakage guard: a labelled post whose normalised text (models.textnorm.normalize, case and
   white space folded) equals the text of any corpus test example (the reserved tweets among
   them: the sample stream is built from the same tweets) or validation example (early
   stopping and calibration read those) is put in the held-out share, never trained on. It
   stays a fair test: neither model trained on that text.
4. The challenger is trained with models.train's own machinery (`train.fit`: the champion's
   variant, the same seed handling, the corpora's train split plus the training labels, the
   same validation split for early stopping and calibration) and exported under the model
   contract (models/export.py) with the champion's model.json fields, its own version (hash of
   its weights), `evaluation` as `make train` writes it plus the labels split, and a
   `retraining` block (parent version, labels used / held out / contested, decision and why).
5. Both models are scored on the SAME held-out posts: each corpus test split (the reserved
   tweets among them) and the held-out labels; macro-F1 each, and the paired bootstrap
   (models.evaluate.paired_bootstrap_f1_gain, challenger vs champion) per split and pooled
   over all of them.

Promotion rule (`decide`): promote only if the pooled gain's CI95 lower bound is above 0 AND
no split is significantly worse (no split's CI95 upper bound below 0). The challenger is always
added to the registry (inspect it, or `pulse registry promote VERSION` by hand); only the rule
promotes; a challenger with the champion's weights (the same version) is never promoted. Both outcomes exit 0; missing data, a missing output or an unreadable registry are
one-line errors (exit 2).
"""
from __future__ import annotations

import argparse
import collections
import copy
import datetime as dt
import json
import os
import sys
import tempfile
import time
import zlib
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

from models import data as data_lib
from models import registry as registry_lib
from models.textnorm import normalize

CLASSES = data_lib.LABELS
LABEL_RATINGS = {"negative": -2.0, "neutral": 0.0, "positive": 2.0}  # on the corpora's [-4, 4] scale
LABELS_CORPUS = "labels"
SKIP = "skip"
DEFAULT_HOLDOUT = 0.2
POOLED = "pooled"


class RetrainError(Exception):
    """Retraining cannot go on (labels unreadable, a champion the trainer cannot challenge): one sentence."""


# ---- THE RULE -----------------------------------------------------------------------------------


class ResolvedLabel(NamedTuple):
    """One post's resolved human label. `label` None when contested (a tie between classes)."""

    post_id: str
    keyword: str
    lang: str | None
    text: str | None
    label: str | None
    votes: int  # reviewers whose latest label is not a skip
    contested: bool
    model_label: str | None
    model_version: str | None


class Resolution(NamedTuple):
    resolved: list[ResolvedLabel]  # one per (post_id, keyword) with at least one vote, sorted
    skipped_only: int  # posts every reviewer skipped
    invalid: list[str]  # rows that could not be read, why (never silently dropped)

    @property
    def labelled(self) -> list[ResolvedLabel]:
        return [r for r in self.resolved if not r.contested]

    @property
    def contested(self) -> list[ResolvedLabel]:
        return [r for r in self.resolved if r.contested]


def _order_key(row: Mapping[str, Any]):
    at = row.get("labelled_at")
    if isinstance(at, str):
        try:
            at = dt.datetime.fromisoformat(at.replace("Z", "+00:00"))
        except ValueError:
            pass
    if hasattr(at, "to_pydatetime"):
        at = at.to_pydatetime()
    if isinstance(at, dt.datetime):
        if at.tzinfo is None:
            at = at.replace(tzinfo=dt.timezone.utc)
        at = at.timestamp()
    return (at if isinstance(at, (int, float)) else float("-inf"), str(row.get("label_id") or ""))


def _text(value) -> str | None:
    return value if isinstance(value, str) and value != "" else None


def resolve_labels(rows: Iterable[Mapping[str, Any]]) -> Resolution:
    """Label rows (the `labels` table or `labels_latest`, any order) -> one ResolvedLabel per post.

    THE RULE (the SQL view `labels_resolved` applies the same): per (post_id, keyword), each
    reviewer's latest label (greatest (labelled_at, label_id)); skips dropped; the class with
    strictly the most votes wins; a tie between classes = contested (label None). lang, text,
    model_label and model_version come from the post's most recent vote. A post whose
    every reviewer skipped is counted in `skipped_only`. Rows without post_id, keyword or
    reviewer, or with a label outside negative/neutral/positive/skip, are listed in `invalid`.
    """
    latest: dict[tuple[str, str], dict[str, Mapping[str, Any]]] = collections.defaultdict(dict)
    invalid = []
    for row in rows:
        post_id, keyword, reviewer, label = (row.get(k) for k in ("post_id", "keyword", "reviewer", "label"))
        if not all(isinstance(v, str) and v for v in (post_id, keyword, reviewer)) \
                or label not in (*CLASSES, SKIP):
            invalid.append(f"label {row.get('label_id')!s:.40}: needs post_id, keyword, reviewer and a label "
                           f"of {', '.join((*CLASSES, SKIP))} (got {str(label)[:20]!r})")
            continue
        held = latest[(post_id, keyword)].get(reviewer)
        if held is None or _order_key(row) > _order_key(held):
            latest[(post_id, keyword)][reviewer] = row
    resolved, skipped_only = [], 0
    for (post_id, keyword), by_reviewer in sorted(latest.items()):
        votes = collections.Counter(r["label"] for r in by_reviewer.values() if r["label"] != SKIP)
        if not votes:
            skipped_only += 1
            continue
        top = max(votes.values())
        winners = sorted(c for c, n in votes.items() if n == top)
        # The post's fields from its most recent vote (as labels_resolved takes them).
        last = max((r for r in by_reviewer.values() if r["label"] != SKIP), key=_order_key)
        resolved.append(ResolvedLabel(
            post_id, keyword, _text(last.get("lang")), _text(last.get("text")),
            winners[0] if len(winners) == 1 else None, sum(votes.values()), len(winners) > 1,
            _text(last.get("model_label")), _text(last.get("model_version"))))
    return Resolution(resolved, skipped_only, invalid)


# ---- held-out share and the leakage guard ------------------------------------------------------


def holdout_fraction(post_id: str, keyword: str) -> float:
    """A stable number in [0, 1) for a post: crc32 of (post_id, keyword), the same on every machine."""
    return zlib.crc32(json.dumps([post_id, keyword], ensure_ascii=False).encode("utf-8")) / 2**32


def text_key(text: str) -> str:
    """The text as the model sees it (textnorm.normalize), case and white space folded: equal keys,
    equal posts for the leakage guard."""
    return " ".join(normalize(text).casefold().split())


class LabelSplit(NamedTuple):
    train: list[ResolvedLabel]
    held_out: list[ResolvedLabel]
    leaked: int  # labels moved to the held-out share because a corpus test or validation example has their text
    no_text: int  # labels without the post's text: neither trained on nor scored (counted)


def split_labels(labels: Sequence[ResolvedLabel], share: float, test_texts: Iterable[str]) -> LabelSplit:
    """Resolved, uncontested labels -> (train, held_out): held out when holdout_fraction < share,
    or when the text matches a corpus test or validation example (leakage guard: never trained on)."""
    guarded = {text_key(t) for t in test_texts}
    train, held_out, leaked, no_text = [], [], 0, 0
    for label in labels:
        if label.contested or label.label is None:
            continue
        if label.text is None or not text_key(label.text):
            no_text += 1
        elif holdout_fraction(label.post_id, label.keyword) < share:
            held_out.append(label)
        elif text_key(label.text) in guarded:
            held_out.append(label)
            leaked += 1
        else:
            train.append(label)
    return LabelSplit(train, held_out, leaked, no_text)


def as_example(label: ResolvedLabel) -> data_lib.Example:
    """A resolved label -> a corpus Example (rating of its class, corpus 'labels')."""
    return data_lib.Example(f"{label.post_id}/{label.keyword}", LABEL_RATINGS[label.label], label.text,
                            LABELS_CORPUS)


# ---- comparison and the promotion rule ---------------------------------------------------------


def compare(splits: Mapping[str, tuple[Sequence[int], Sequence[int], Sequence[int]]],
            resamples: int = 2000) -> dict:
    """{split: (truth, challenger, champion) class indices} -> per split and `pooled` (all splits
    together): support, both macro-F1s and paired_bootstrap_f1_gain(challenger, champion)."""
    import numpy as np

    from models import evaluate as eval_lib

    out = {}
    pooled = ([], [], [])
    for name, (truth, challenger, champion) in splits.items():
        if len(truth) == 0:
            continue
        for acc, values in zip(pooled, (truth, challenger, champion)):
            acc.extend(int(v) for v in values)
        out[name] = _row(truth, challenger, champion, resamples, eval_lib)
    if out:
        out[POOLED] = _row(*(np.asarray(p) for p in pooled), resamples, eval_lib)
    return out


def _row(truth, challenger, champion, resamples, eval_lib) -> dict:
    return {"support": len(truth),
            "champion_macro_f1": round(eval_lib.macro_f1(truth, champion), 4),
            "challenger_macro_f1": round(eval_lib.macro_f1(truth, challenger), 4),
            "challenger_vs_champion": eval_lib.paired_bootstrap_f1_gain(truth, challenger, champion,
                                                                        resamples=resamples)}


def decide(comparison: Mapping[str, dict]) -> tuple[bool, str]:
    """The promotion rule -> (promote, why): the pooled gain's CI95 lower bound > 0 and no split's
    CI95 upper bound < 0."""
    if POOLED not in comparison:
        return False, "keep: no held-out posts to compare on"
    worse = [name for name, row in comparison.items()
             if name != POOLED and row["challenger_vs_champion"]["ci95"][1] < 0]
    pooled = comparison[POOLED]["challenger_vs_champion"]
    if worse:
        return False, (f"keep: the challenger is significantly worse on {', '.join(worse)} "
                       f"(CI95 upper bound < 0), whatever the pooled gain ({pooled['gain']:+.4f})")
    if pooled["ci95"][0] > 0:
        return True, (f"promote: pooled macro-F1 gain {pooled['gain']:+.4f}, CI95 "
                      f"[{pooled['ci95'][0]:+.4f}, {pooled['ci95'][1]:+.4f}] above 0, no split significantly worse")
    return False, (f"keep: pooled macro-F1 gain {pooled['gain']:+.4f}, CI95 "
                   f"[{pooled['ci95'][0]:+.4f}, {pooled['ci95'][1]:+.4f}] does not exclude 0")


def format_comparison(comparison: Mapping[str, dict]) -> str:
    """The comparison as a table (like models.evaluate.format_table)."""
    lines = [f"{'split':8} {'n':>5}  {'champion F1':>11} {'challenger F1':>13}  {'F1 gain [95% CI]':>22} "
             f"{'P(better)':>9}"]
    for name, row in comparison.items():
        g = row["challenger_vs_champion"]
        ci = f"{g['gain']:+.3f} [{g['ci95'][0]:+.3f}, {g['ci95'][1]:+.3f}]"
        lines.append(f"{name:8} {row['support']:>5}  {row['champion_macro_f1']:>11.3f} "
                     f"{row['challenger_macro_f1']:>13.3f}  {ci:>22} {g['share_a_better']:>9.3f}")
    return "\n".join(lines)


# ---- retraining ---------------------------------------------------------------------------------


class Outcome(NamedTuple):
    promoted: bool
    why: str
    champion: str
    challenger: str
    location: str  # the challenger's directory in the registry
    comparison: dict
    retraining: dict


def _label_entry(examples, predict, eval_lib) -> dict:
    """The `evaluation.per_split` entry for the held-out labels (as evaluation_table makes them)."""
    texts = [e.text for e in examples]
    truth = [data_lib.label_index(e.rating) for e in examples]
    entry = {"support": len(examples),
             "support_per_label": {lab: int(sum(1 for t in truth if t == i)) for i, lab in enumerate(CLASSES)}}
    predictions = {}
    for name, fn in (("model", predict), ("vader", eval_lib.vader_predict)):
        predicted = predictions[name] = fn(texts)
        entry[name] = {"accuracy": round(eval_lib.accuracy(truth, predicted), 4),
                       "macro_f1": round(eval_lib.macro_f1(truth, predicted), 4)}
    entry["model_vs_vader"] = eval_lib.paired_bootstrap_f1_gain(truth, predictions["model"], predictions["vader"])
    return entry


def _variant_of(spec: dict) -> str:
    from models import train

    name = str(spec.get("architecture", "")).split(":", 1)[0].strip()
    return name if name in train.VARIANTS else train.FINAL_VARIANT


def retrain(label_rows: Iterable[Mapping[str, Any]], registry: str, data_dir: str = "data", *,
            epochs: int | None = None, subset: int | None = None, seed: int = data_lib.DEFAULT_SEED,
            holdout: float = DEFAULT_HOLDOUT, resamples: int = 2000, progress: bool = True,
            log: Callable[[str], None] = print) -> Outcome:
    """Train, compare, add the challenger to the registry and promote it by the rule (module docstring)."""
    import models  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
    import tensorflow as tf
    import tf_keras as keras

    from models import evaluate as eval_lib
    from models import export as export_lib
    from models import locations
    from models import train

    started = time.perf_counter()
    epochs = epochs or train.DEFAULT_EPOCHS
    corpora = data_lib.load_all(data_dir)  # DataError first: nothing is written without the data
    champion = registry_lib.init(registry)
    champion_dir = locations.local_dir(champion.location)
    champion_spec = registry_lib.read_spec(champion_dir)
    if list(champion_spec.get("classes", [])) != list(CLASSES):
        raise RetrainError(f"the champion {champion.version} has classes {champion_spec.get('classes')}, "
                           f"not {list(CLASSES)}: the bundled trainer cannot challenge it")

    resolution = resolve_labels(label_rows)
    for problem in resolution.invalid[:5]:
        log(f"warning: {problem}")
    parts = data_lib.split(corpora, seed)
    # The full test and validation splits, whatever --subset keeps.
    guard_texts = [e.text for e in parts["test"]] + [e.text for e in parts["val"]]
    if subset:
        parts = train.subsample(parts, subset, seed)
    labels = split_labels(resolution.labelled, holdout, guard_texts)
    counts = {"resolved": len(resolution.labelled), "trained_on": len(labels.train),
              "held_out": len(labels.held_out), "held_out_by_leakage_guard": labels.leaked,
              "contested": len(resolution.contested), "all_skipped": resolution.skipped_only,
              "without_text": labels.no_text, "invalid_rows": len(resolution.invalid)}
    log("labels: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()))

    train_parts = dict(parts, train=list(parts["train"]) + [as_example(x) for x in labels.train])
    clean = {name: [normalize(e.text) for e in rows] for name, rows in train_parts.items()}
    variant = _variant_of(champion_spec)
    model, _, epochs_run, bias = train.fit(train_parts, clean, train.load_lexicon(), train.VARIANTS[variant],
                                           seed, epochs, progress, desc=f"challenger ({variant})")
    version = train.weights_version(model)
    held_out = [as_example(x) for x in labels.held_out]

    with tempfile.TemporaryDirectory(prefix="pulse-retrain-") as tmp:
        staging = os.path.join(tmp, version)
        spec = copy.deepcopy(champion_spec)
        for stale in ("ablation", "throughput"):
            spec.pop(stale, None)  # measured for the champion, not for this model
        spec["version"] = version
        export_lib.export(model, staging, spec)
        challenger_predict = eval_lib.saved_model_predictor(staging)
        champion_predict = eval_lib.saved_model_predictor(champion_dir)

        splits = {}
        test = parts["test"]
        for corpus in data_lib.CORPORA:
            rows = [e for e in test if e.corpus == corpus]
            if rows:
                texts = [e.text for e in rows]
                splits[corpus] = ([data_lib.label_index(e.rating) for e in rows],
                                  challenger_predict(texts), champion_predict(texts))
        if held_out:
            texts = [e.text for e in held_out]
            splits[LABELS_CORPUS] = ([data_lib.label_index(e.rating) for e in held_out],
                                     challenger_predict(texts), champion_predict(texts))
        comparison = compare(splits, resamples)
        promote, why = decide(comparison)
        if version == champion.version:
            promote, why = False, "keep: the challenger is the champion (the same weights)"
        log(format_comparison(comparison))
        log(why)

        evaluation = copy.deepcopy(champion_spec.get("evaluation") or {})
        per_split = eval_lib.evaluation_table(test, challenger_predict)
        if held_out:
            per_split[LABELS_CORPUS] = _label_entry(held_out, challenger_predict, eval_lib)
        evaluation["per_split"] = per_split
        evaluation["test_splits"] = (str(evaluation.get("test_splits") or "corpus test splits")
                                     + f"; labels: the held-out share ({holdout:g} by crc32 of post_id and "
                                       "keyword, plus posts whose text is a corpus test or validation example)")
        spec["evaluation"] = evaluation
        old_training = champion_spec.get("training") or {}
        spec["training"] = {
            "data": f"{old_training.get('data', data_lib.SDIST)} + {len(labels.train)} review-desk labels",
            "lexicon": old_training.get("lexicon"),
            "variant": variant, "seed": seed, "epochs_max": epochs, "epochs_run": epochs_run, "subset": subset,
            "split_sizes": {k: len(v) for k, v in train_parts.items()},
            "calibration_bias": [round(float(b), 2) for b in bias],
            "seconds": round(time.perf_counter() - started, 1),
            "tensorflow": tf.__version__, "keras": keras.__version__,
        }
        retraining = {
            "parent": champion.version, "labels": counts, "label_holdout": holdout,
            "label_rule": "per (post_id, keyword) each reviewer's latest label; skips dropped; strictly the "
                          "most votes wins; a tie is contested (left out)",
            "promotion_rule": "pooled CI95 lower bound > 0 and no split's CI95 upper bound < 0",
            "comparison": comparison, "decision": "promote" if promote else "keep", "why": why,
            "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        }
        spec["retraining"] = retraining
        export_lib.write_spec(staging, spec)
        location = registry_lib.add_version(registry, staging)
    if promote:
        pooled = comparison[POOLED]["challenger_vs_champion"]
        registry_lib.promote(registry, version, {"action": "retrain", "decision": "promote", "why": why,
                                                 "parent": champion.version, "pooled_gain": pooled["gain"],
                                                 "pooled_ci95": pooled["ci95"], "labels": counts})
    return Outcome(promote, why, champion.version, version, location, comparison, retraining)


# ---- CLI ----------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    from models import train

    p = argparse.ArgumentParser(prog="pulse retrain", description=__doc__.split("\n")[0])
    p.add_argument("--output", required=True, help="the job's output holding the labels (DIR or PROJECT:DATASET)")
    p.add_argument("--registry", required=True, help="model registry directory or URI (gs://...)")
    p.add_argument("--data", default="data", help="folder holding hutto_ICWSM_2014/ (make data)")
    p.add_argument("--epochs", type=int, default=train.DEFAULT_EPOCHS)
    p.add_argument("--subset", type=int, default=None, help="train on at most N corpus examples (tests)")
    p.add_argument("--seed", type=int, default=data_lib.DEFAULT_SEED)
    p.add_argument("--label-holdout", type=float, default=DEFAULT_HOLDOUT,
                   help="share of the labelled posts never trained on, scored beside the test splits")
    p.add_argument("--resamples", type=int, default=2000, help="paired bootstrap resamples")
    p.add_argument("--project", default=None, help="BigQuery project (for a DATASET output)")
    return p


def main(argv: Sequence[str] | None = None,
         read_labels: Callable[[str, str | None], list[dict]] | None = None) -> int:
    """`pulse retrain`; `read_labels(output, project)` -> labels_latest rows (pipelines/cli/__init__.py passes
    the connector's; it raises RetrainError when the output cannot be read)."""
    p = parser()
    args = p.parse_args(argv)
    if args.epochs < 1 or (args.subset is not None and args.subset < 10) or not 0 <= args.label_holdout < 1 \
            or args.resamples < 100:
        p.error("--epochs must be >= 1, --subset >= 10, --label-holdout in [0, 1), --resamples >= 100")
    try:
        if read_labels is None:
            raise RetrainError("no label reader: run retraining through `pulse retrain`")
        if not os.path.isdir(data_lib.corpus_dir(args.data)):
            raise data_lib.DataError(f"no corpora under {args.data}: run `make data`")
        rows = read_labels(args.output, args.project)
        outcome = retrain(rows, args.registry, args.data, epochs=args.epochs, subset=args.subset, seed=args.seed,
                          holdout=args.label_holdout, resamples=args.resamples)
    except (data_lib.DataError, registry_lib.RegistryError, RetrainError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    state = "promoted" if outcome.promoted else "kept"
    current = outcome.challenger if outcome.promoted else outcome.champion
    print(f"challenger {outcome.challenger} added to {args.registry} ({outcome.location}); "
          f"{state}: the current model is {current}")
    return 0
