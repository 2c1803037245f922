"""The accuracy watch: the live model against the review desk's labels, and `model_degraded` alerts.

    pulse accuracy --output OUT|PROJECT:DATASET [--margin 0.05] [--min-labels 50] [--model bundled|DIR]

Reads the view `model_accuracy` (connectors/query/views.sql: macro-F1 over the classes present, per model
version, keyword and language over `labels_resolved`, the reviewers' resolved labels) and
raises one alert row (models/contracts.ALERTS, kind `model_degraded`) for each model version,
and each keyword of it (unless that keyword holds all the version's labels: the same alert
again), whose live figure is below the model's own evaluation by more than `margin`. A figure
is judged on what its labels can measure (`judge`):

- fewer than `min_labels` resolved labels (its own count for a keyword): too few, not judged;
- one class labelled (60 negative labels): accuracy, against model.json's evaluation accuracy
  (evaluation.per_split.tweets.model.accuracy); macro-F1 means nothing over one class;
- a class labelled fewer than MIN_CLASS_SUPPORT times beside others: too one-sided, not judged
  (its F1 would be decided by a handful of posts);
- otherwise macro-F1 over the classes present, against the evaluation's macro-F1.

`pulse accuracy` prints each version's verdict (what it was judged on, or why not) with the
supports, and names the labelled posts that are not in scored_posts (labels for posts this
output never scored: a typo'd id, another job's output), which it flags rather than trusts.

    keyword         '*' for the version over all keywords, else the keyword
    window_start    the first labelled_at of the labels behind the figure (labels_resolved)
    window_end      the last one
    value           the live macro-F1 over the classes present (or the live accuracy, for one class)
    baseline        the model's own evaluation figure: model.json
                    evaluation.per_split.tweets.model.macro_f1 (or .accuracy) (the reserved tweets,
                    the split closest to live posts)
    zscore          (value - baseline) / the standard error of the live figure: a bootstrap
                    over the labelled posts (BOOTSTRAP_RESAMPLES, seeded, posts in a fixed
                    order, so the same labels give the same figure), floored at
                    MIN_STANDARD_ERROR; negative: the model does worse than its evaluation
    sample_post_ids up to 5 posts whose label disagrees with the model, the latest labelled first

Defaults: margin DEFAULT_MARGIN (0.05 macro-F1: the bundled model's evaluation CI is about
+/- 0.04), min_labels DEFAULT_MIN_LABELS (50: fewer labels give a macro-F1 whose bootstrap
spread is itself about 0.07). A version whose expected figure is unknown (`expected` returns
None: a model.json without that evaluation, a version nobody can find) raises nothing.

Writing is idempotent: the same alert (kind, model version, keyword, labels count) written
twice is one row. Parquet: `<output>/alerts/<YYYY-MM-DD of window_start>/accuracy-<digest>.parquet`
(the digest of that identity), written through a temporary name and renamed into place
(connectors/sinks/parquet.write_atomically) and not written again when the file exists, so the
first emitted_at stays; the views read every `alerts/**/*.parquet` as the job's alerts.
BigQuery: a query for the same alert (kind, keyword, window_start, window_end, value) and
then a streaming insert whose insertId is the digest. The `alerts` table has no model-version
column: the version shows in the CLI and the digest, and `alerts_unique` keeps one row per
(window_start, keyword, kind), i.e. the first alert of a run of labels.

The running job calls `AccuracyWatch.check` (pipelines/sentiment_pipeline.CounterSnapshots)
every 60 s and when it ends; a failure is logged once and never stops the job.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import os
import re
import sys
from typing import Any, Callable, Iterable, Mapping, Sequence

from models.contracts import LABELS, UTC, ModelSpec

KIND = "model_degraded"
DEFAULT_MARGIN = 0.05
DEFAULT_MIN_LABELS = 50
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 17
MIN_STANDARD_ERROR = 0.01  # a bootstrap over posts the model gets all right has no spread
MIN_CLASS_SUPPORT = 5  # a class with fewer labels beside others: the figure is too one-sided to judge
SAMPLE_POSTS = 5
ALL = "*"

_LOG = logging.getLogger(__name__)

Expected = Callable[[str], "float | None"]


# ---- expected figures (model.json) --------------------------------------------------------


def expected_f1_of(model_json: Mapping[str, Any]) -> float | None:
    """model.json -> evaluation.per_split.tweets.model.macro_f1, or None when it does not say."""
    try:
        value = model_json["evaluation"]["per_split"]["tweets"]["model"]["macro_f1"]
    except (KeyError, TypeError):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def expected_accuracy_of(model_json: Mapping[str, Any]) -> float | None:
    """model.json -> evaluation.per_split.tweets.model.accuracy, or None when it does not say."""
    try:
        value = model_json["evaluation"]["per_split"]["tweets"]["model"]["accuracy"]
    except (KeyError, TypeError):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def expected_from_spec(spec: ModelSpec | None = None, registry: str | None = None) -> Expected:
    """version -> expected macro-F1 | None: the running model's own model.json (`spec`), and for
    other versions `<registry>/versions/<version>/model.json` when a registry is given (read
    once per version through Beam's FileSystems, so gs:// works too). Its `accuracy` attribute
    is the same for the expected accuracy (a version judged on one labelled class)."""
    known: dict[str, dict | None] = {}
    if spec is not None:
        known[spec.version] = spec.to_dict()

    def model_json(version: str) -> dict | None:
        if version not in known:
            known[version] = _registry_model_json(registry, version) if registry and version and \
                re.fullmatch(r"[\w.+-]+", version) else None
        return known[version]

    def expected(version: str) -> float | None:
        found = model_json(version)
        return None if found is None else expected_f1_of(found)

    def accuracy(version: str) -> float | None:
        found = model_json(version)
        return None if found is None else expected_accuracy_of(found)

    expected.accuracy = accuracy
    return expected


def _registry_model_json(registry: str, version: str) -> dict | None:
    from apache_beam.io.filesystems import FileSystems

    path = f"{registry.rstrip('/')}/versions/{version}/model.json"
    try:
        with FileSystems.open(path) as f:
            body = json.loads(f.read().decode("utf-8"))
        return body if isinstance(body, dict) else None
    except Exception:  # noqa: BLE001  (no such version, unreadable: unknown, no alert)
        return None


# ---- the pure core ------------------------------------------------------------------------


def _utc(value) -> dt.datetime | None:
    if value is None:
        return None
    if hasattr(value, "to_pydatetime"):  # a pandas Timestamp
        value = value.to_pydatetime()
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    raise ValueError(f"expected a timestamp, got {value!r}")


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def standard_error(truth: Sequence[int], predicted: Sequence[int], resamples: int = BOOTSTRAP_RESAMPLES,
                   seed: int = BOOTSTRAP_SEED) -> float:
    """The bootstrap standard error of macro-F1 over the classes present (models.evaluate's
    macro_f1_present) over these posts, floored at MIN_STANDARD_ERROR."""
    import numpy as np

    from models.evaluate import _macro_f1_present_of_counts

    truth, predicted = np.asarray(truth, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    if len(truth) < 2:
        return MIN_STANDARD_ERROR
    n = len(LABELS)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(truth), size=(resamples, len(truth)))
    codes = (truth[idx] * n + predicted[idx] + (np.arange(resamples) * n * n)[:, None]).ravel()
    counts = np.bincount(codes, minlength=resamples * n * n).reshape(resamples, n, n)
    return max(float(np.std(_macro_f1_present_of_counts(counts), ddof=1)), MIN_STANDARD_ERROR)


def accuracy_standard_error(right: int, n: int) -> float:
    """The standard error of an accuracy of right/n (binomial), floored at MIN_STANDARD_ERROR."""
    if n < 2:
        return MIN_STANDARD_ERROR
    p = right / n
    return max(math.sqrt(p * (1 - p) / n), MIN_STANDARD_ERROR)


def judge(row: Mapping[str, Any], min_labels: int) -> tuple[str | None, str]:
    """A model_accuracy row -> (the figure it is judged on: "macro_f1" or "accuracy", or None when its
    labels are too few or too one-sided to judge; and why, with the supports)."""
    labels = int(row.get("labels") or 0)
    supports = {c: int(row.get(f"support_{c}") or 0) for c in LABELS}
    said = ", ".join(f"{c} {n}" for c, n in supports.items())
    if labels < min_labels:
        return None, f"too few labels to judge ({labels} < {min_labels}; {said})"
    present = {c: n for c, n in supports.items() if n > 0}
    if len(present) == 1:
        return "accuracy", f"one class labelled ({said}): judged on accuracy"
    thin = [c for c, n in present.items() if n < MIN_CLASS_SUPPORT]
    if thin:
        return None, (f"too one-sided to judge ({said}; {', '.join(thin)} under {MIN_CLASS_SUPPORT} labels)")
    return "macro_f1", f"judged on macro-F1 over the {len(present)} classes labelled ({said})"


def alert_identity(kind: str, model_version: str, keyword: str, labels: int) -> str:
    """What makes two accuracy alerts the same alert -> a digest (file name, BigQuery insertId)."""
    text = json.dumps([kind, model_version, keyword, int(labels)], ensure_ascii=False)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def degraded_alerts(accuracy_rows: Iterable[Mapping[str, Any]], expected: Expected, margin: float,
                    min_labels: int, now: dt.datetime, *, posts: Iterable[Mapping[str, Any]]) -> list[dict]:
    """model_accuracy rows -> model_degraded ALERTS rows (plus `_model_version`, `_labels`, `_id`).

    `posts`: the labels_resolved rows behind the figures (for the bootstrap and the sample ids).
    Judged: the rows of one model version over all languages, all keywords ('*') or one keyword
    (not a keyword that holds all of the version's labels: that is the '*' alert again).
    """
    if not margin >= 0 or min_labels < 1:
        raise ValueError("margin must be >= 0 and min_labels >= 1")
    index = {c: i for i, c in enumerate(LABELS)}
    by_group: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for p in posts:
        if p.get("contested") or _missing(p.get("model_label")) or p.get("label") not in index \
                or p.get("model_label") not in index:
            continue
        version = p.get("model_version")
        version = "unknown" if _missing(version) else version
        by_group.setdefault((version, ALL), []).append(p)
        by_group.setdefault((version, p["keyword"]), []).append(p)
    accuracy_rows = list(accuracy_rows)
    version_labels = {r["model_version"]: int(r["labels"]) for r in accuracy_rows
                      if r["keyword"] == ALL and r["lang"] == ALL}
    alerts = []
    for row in accuracy_rows:
        version, keyword = row["model_version"], row["keyword"]
        if version == ALL or row["lang"] != ALL or _missing(row.get("macro_f1")):
            continue
        labels = int(row["labels"])
        if keyword != ALL and labels == version_labels.get(version):
            continue  # the version's own figure again (its only labelled keyword)
        metric, _ = judge(row, min_labels)
        if metric is None:
            continue  # too few labels, or too one-sided to say anything
        expected_accuracy = getattr(expected, "accuracy", None)
        baseline = expected(version) if metric == "macro_f1" else (
            expected_accuracy(version) if expected_accuracy is not None else None)
        if baseline is None or _missing(row.get(metric)):
            continue
        value = float(row[metric])
        if not value < baseline - margin:
            continue
        group = sorted(by_group.get((version, keyword), ()), key=lambda p: (p["post_id"], p["keyword"]))
        if metric == "macro_f1":
            se = standard_error([index[p["label"]] for p in group], [index[p["model_label"]] for p in group])
        else:
            se = accuracy_standard_error(sum(p["label"] == p["model_label"] for p in group), len(group))
        wrong = sorted((p for p in group if p["label"] != p["model_label"]),
                       key=lambda p: (_utc(p.get("last_labelled_at")) or now, p["post_id"]), reverse=True)
        alerts.append({
            "window_start": _utc(row.get("first_labelled_at")) or now,
            "window_end": _utc(row.get("last_labelled_at")) or now,
            "keyword": keyword,
            "kind": KIND,
            "value": value,
            "baseline": float(baseline),
            "zscore": (value - baseline) / se,
            "sample_post_ids": [p["post_id"] for p in wrong[:SAMPLE_POSTS]],
            "emitted_at": now,
            "_model_version": version,
            "_labels": labels,
            "_metric": metric,
            "_id": alert_identity(KIND, version, keyword, labels),
        })
    return alerts


def public_row(alert: Mapping[str, Any]) -> dict:
    return {k: v for k, v in alert.items() if not k.startswith("_")}


# ---- reading and writing ------------------------------------------------------------------

ACCURACY_SQL = "SELECT * FROM ${dataset}.model_accuracy ORDER BY model_version, keyword, lang"
POSTS_SQL = ("SELECT post_id, keyword, label, contested, model_label, model_version, last_labelled_at "
             "FROM ${dataset}.labels_resolved WHERE model_label IS NOT NULL")
UNKNOWN_SQL = ("SELECT DISTINCT post_id FROM ${dataset}.labels_resolved WHERE post_id NOT IN "
               "(SELECT post_id FROM ${dataset}.scored_posts) ORDER BY post_id")
UNKNOWN_SHOWN = 10


def is_bigquery(output: str) -> bool:
    """PROJECT:DATASET (or PROJECT.DATASET) rather than a directory (the rule of pipelines/options.output_kind)."""
    if "/" in output or output.startswith(".") or os.path.isdir(output):
        return False
    return bool(re.match(r"^[\w-]+[:.][\w]+$", output))


class AccuracyWatchError(RuntimeError):
    """The output cannot be read or written, in one sentence."""


def _bq_client(output: str, client=None):
    from connectors.sinks.bigquery import bigquery_client, split_dataset

    project, _ = split_dataset(output)
    return client if client is not None else bigquery_client(project)


def read(output: str, client=None) -> tuple[list[dict], list[dict]]:
    """-> (model_accuracy rows, labels_resolved rows whose model label is known)."""
    from connectors.query import sqlfiles

    if is_bigquery(output):
        client = _bq_client(output, client)
        out = []
        for text in (ACCURACY_SQL, POSTS_SQL):
            sql = sqlfiles.render(text, "bigquery", output)
            out.append([dict(r.items()) for r in client.query(sql).result()])
        return out[0], out[1]
    from connectors.query import duckdb_sql

    if not os.path.isdir(output):
        raise AccuracyWatchError(f"no output directory {output!r}: run the job first (pulse run --output {output})")
    out = []
    for text in (ACCURACY_SQL, POSTS_SQL):
        columns, rows = duckdb_sql.query(output, sqlfiles.render(text, "duckdb"))
        out.append([dict(zip(columns, r)) for r in rows])
    return out[0], out[1]


def unknown_posts(output: str, client=None) -> list[str]:
    """The labelled post ids that are not in the output's scored_posts (flagged by `pulse accuracy`)."""
    from connectors.query import sqlfiles

    if is_bigquery(output):
        client = _bq_client(output, client)
        return [r["post_id"] for r in client.query(sqlfiles.render(UNKNOWN_SQL, "bigquery", output)).result()]
    from connectors.query import duckdb_sql

    _, rows = duckdb_sql.query(output, sqlfiles.render(UNKNOWN_SQL, "duckdb"))
    return [r[0] for r in rows]


def verdicts(rows: Sequence[Mapping[str, Any]], min_labels: int) -> list[str]:
    """One line per model version (over all keywords and languages): what it is judged on, or why not."""
    out = []
    for r in rows:
        if r["model_version"] == ALL or r["keyword"] != ALL or r["lang"] != ALL:
            continue
        metric, why = judge(r, min_labels)
        value = "" if metric is None or _missing(r.get(metric)) else f" {metric} {float(r[metric]):.3f}:"
        out.append(f"  {r['model_version']}:{value} {why}")
    return out


def alert_path(output: str, alert: Mapping[str, Any]) -> str:
    return f"{output.rstrip('/')}/alerts/{alert['window_start']:%Y-%m-%d}/accuracy-{alert['_id']}.parquet"


def write(output: str, alerts: Sequence[Mapping[str, Any]], client=None) -> list[dict]:
    """Append `alerts` to the output's alerts table unless there already -> the alerts written now."""
    if not alerts:
        return []
    if is_bigquery(output):
        return _write_bigquery(output, alerts, client)
    from apache_beam.io.filesystems import FileSystems

    from connectors.sinks.parquet import to_table, write_atomically
    from models.contracts import ALERTS

    written = []
    for alert in alerts:
        path = alert_path(output, alert)
        if FileSystems.exists(path):
            continue
        write_atomically(path, to_table([public_row(alert)], ALERTS))
        written.append(dict(alert))
    return written


def _write_bigquery(output: str, alerts, client=None) -> list[dict]:
    from google.cloud import bigquery

    from connectors.query import sqlfiles
    from connectors.sinks.bigquery import to_bq_row

    client = _bq_client(output, client)
    table = sqlfiles.quote_dataset(output) + ".alerts"
    table_id = table.replace("`", "")
    written = []
    for alert in alerts:
        config = bigquery.QueryJobConfig(query_parameters=[
            bigquery.ScalarQueryParameter("kind", "STRING", alert["kind"]),
            bigquery.ScalarQueryParameter("keyword", "STRING", alert["keyword"]),
            bigquery.ScalarQueryParameter("window_start", "TIMESTAMP", alert["window_start"]),
            bigquery.ScalarQueryParameter("window_end", "TIMESTAMP", alert["window_end"]),
            bigquery.ScalarQueryParameter("value", "FLOAT64", alert["value"])])
        held = list(client.query(
            f"SELECT COUNT(*) AS n FROM {table} WHERE kind = @kind AND keyword = @keyword AND "
            "window_start = @window_start AND window_end = @window_end AND value = @value",
            job_config=config).result())
        if held and held[0]["n"]:
            continue
        errors = client.insert_rows_json(table_id, [to_bq_row("alerts", public_row(alert), "STREAMING_INSERTS")],
                                         row_ids=[alert["_id"]])
        if errors:
            raise AccuracyWatchError(f"BigQuery refused the alert: {json.dumps(errors, default=str)[:300]}")
        written.append(dict(alert))
    return written


def check(output: str, expected: Expected, margin: float = DEFAULT_MARGIN, min_labels: int = DEFAULT_MIN_LABELS,
          now: dt.datetime | None = None, client=None) -> tuple[list[dict], list[dict]]:
    """Read the figures, judge them, write the new alerts -> (model_accuracy rows, alerts written now)."""
    now = now or dt.datetime.now(UTC)
    rows, posts = read(output, client)
    alerts = degraded_alerts(rows, expected, margin, min_labels, now, posts=posts)
    return rows, write(output, alerts, client)


@dataclasses.dataclass
class AccuracyWatch:
    """The running job's watch: `check()` at most every `every_s` seconds (`force` for the last one).
    A failure is logged once; it never raises."""

    output: str
    expected: Expected
    margin: float = DEFAULT_MARGIN
    min_labels: int = DEFAULT_MIN_LABELS
    every_s: float = 60.0
    _next: float = 0.0
    _failed: bool = False

    def check(self, force: bool = False) -> list[dict]:
        import time

        if not force and time.monotonic() < self._next:
            return []
        self._next = time.monotonic() + self.every_s
        try:
            _, written = check(self.output, self.expected, self.margin, self.min_labels)
        except Exception as e:  # noqa: BLE001  (a watch; the job goes on)
            if not self._failed:
                _LOG.warning("accuracy watch over %s failed: %s", self.output, str(e).splitlines()[0] if str(e) else e)
            self._failed = True
            return []
        for alert in written:
            _LOG.warning("model_degraded: model %s, keyword %s: live %s %.3f over %d labels, evaluation %.3f",
                         alert["_model_version"], alert["keyword"], alert["_metric"], alert["value"],
                         alert["_labels"], alert["baseline"])
        return written


def watch_for_job(output: str, spec: ModelSpec | None, registry: str | None = None,
                  margin: float = DEFAULT_MARGIN, min_labels: int = DEFAULT_MIN_LABELS) -> AccuracyWatch:
    """The running job's watch (pipelines/sentiment_pipeline.CounterSnapshots.accuracy): expected
    figures from the job's ModelSpec, other versions from `registry` when given."""
    return AccuracyWatch(output, expected_from_spec(spec, registry), margin, min_labels)


# ---- pulse accuracy -----------------------------------------------------------------------

_SHOWN = ("model_version", "keyword", "lang", "labels", "contested", "accuracy", "macro_f1",
          "f1_negative", "f1_neutral", "f1_positive")


def format_table(rows: Sequence[Mapping[str, Any]], expected: Expected) -> str:
    header = [*_SHOWN, "evaluation"]
    lines = [header]
    for r in rows:
        cells = []
        for name in _SHOWN:
            v = r.get(name)
            cells.append("" if _missing(v) else f"{v:.3f}" if isinstance(v, float) else str(v))
        e = expected(r["model_version"]) if r["model_version"] != ALL else None
        cells.append("" if e is None else f"{e:.3f}")
        lines.append(cells)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def _expected_for_model(model: str) -> Expected:
    from models import locations

    directory = locations.bundled_dir() if model == locations.BUNDLED else model
    if not os.path.isfile(os.path.join(directory, "model.json")):
        raise AccuracyWatchError(f"--model {model}: no model.json there (give bundled or a model directory)")
    try:
        spec = ModelSpec.load(directory)
    except (ValueError, OSError, TypeError) as e:
        raise AccuracyWatchError(f"--model {model}: cannot read its model.json: {e}") from None
    if expected_f1_of(spec.to_dict()) is None:
        raise AccuracyWatchError(f"--model {model}: its model.json has no evaluation.per_split.tweets.model.macro_f1")
    return expected_from_spec(spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pulse accuracy",
        description="The live model against the review desk's labels (view model_accuracy); writes a model_degraded "
                    "alert where a model version's macro-F1 falls below its own evaluation.")
    parser.add_argument("--output", required=True, help="the job's output: a directory or PROJECT:DATASET")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                        help=f"alert when live macro-F1 < evaluation - margin (default {DEFAULT_MARGIN})")
    parser.add_argument("--min-labels", type=int, default=DEFAULT_MIN_LABELS,
                        help=f"resolved labels a figure needs before it can alert (default {DEFAULT_MIN_LABELS})")
    parser.add_argument("--model", default="bundled",
                        help="the model whose model.json gives the expected macro-F1: bundled or a directory "
                             "(default bundled)")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.margin) and args.margin >= 0):
        parser.error("--margin must be a number >= 0")
    if args.min_labels < 1:
        parser.error("--min-labels must be at least 1")
    try:
        expected = _expected_for_model(args.model)
        rows, written = check(args.output, expected, args.margin, args.min_labels)
    except AccuracyWatchError as e:
        print(f"pulse accuracy: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001  (one line, no traceback)
        lines = str(getattr(e, "message", None) or e).strip().splitlines()
        print(f"pulse accuracy: error: {type(e).__name__}: {lines[0] if lines else ''}", file=sys.stderr)
        return 1
    if rows:
        print(format_table(rows, expected))
        print()
        print("verdicts (each version over all keywords and languages):")
        print("\n".join(verdicts(rows, args.min_labels)))
        try:
            unknown = unknown_posts(args.output)
        except Exception as e:  # noqa: BLE001  (the flag is extra; the figures stand without it)
            unknown = []
            print(f"could not check the labelled posts against scored_posts: {str(e).splitlines()[0] if str(e) else e}")
        if unknown:
            shown = ", ".join(unknown[:UNKNOWN_SHOWN]) + (", ..." if len(unknown) > UNKNOWN_SHOWN else "")
            print(f"flagged: labels for {len(unknown)} post(s) not in scored_posts (not scored in this output; "
                  f"check them before trusting the figures): {shown}")
    else:
        print("no resolved labels with a known model label yet (label posts at the dashboard's review desk)")
    print()
    if written:
        print(f"{len(written)} new {KIND} alert(s):")
        for a in written:
            figure = "macro-F1" if a["_metric"] == "macro_f1" else "accuracy"
            print(f"  model {a['_model_version']}, keyword {a['keyword']}: {figure} {a['value']:.3f} over "
                  f"{a['_labels']} labels, evaluation {a['baseline']:.3f}, z = {a['zscore']:.1f}, "
                  f"labelled {a['window_start']:%Y-%m-%d %H:%M} .. {a['window_end']:%Y-%m-%d %H:%M} UTC")
    else:
        print(f"no new {KIND} alerts (margin {args.margin:g}, at least {args.min_labels} labels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
