"""The accuracy watch: the live model against the review desk's labels, and `model_degraded` alerts.

    pulse accuracy --output OUT|PROJECT:DATASET [--margin 0.05] [--min-labels 50] [--model bundled|DIR]

Reads the view `model_accuracy` (connectors/query/views.sql: macro-F1 per model version, keyword and
language over `labels_resolved`, the reviewers' resolved labels) and raises one alert row
(models/contracts.ALERTS, kind `model_degraded`) for each model version, and each keyword of
it (unless that keyword holds all the version's labels: the same alert again), whose live
macro-F1 is below the model's own evaluation by more than `margin`, with at least
`min_labels` resolved labels behind it (its own count for a keyword):

    keyword         '*' for the version over all keywords, else the keyword
    window_start    the first labelled_at of the labels behind the figure (labels_resolved)
    window_end      the last one
    value           the live macro-F1
    baseline        the model's own evaluation macro-F1: model.json
                    evaluation.per_split.tweets.model.macro_f1 (the reserved tweets, the split
                    closest to live posts)
    zscore          (value - baseline) / the standard error of the live macro-F1: a bootstrap
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


def expected_from_spec(spec: ModelSpec | None = None, registry: str | None = None) -> Expected:
    """version -> expected macro-F1 | None: the running model's own model.json (`spec`), and for
    other versions `<registry>/versions/<version>/model.json` when a registry is given (read
    once per version through Beam's FileSystems, so gs:// works too)."""
    known: dict[str, float | None] = {}
    if spec is not None:
        known[spec.version] = expected_f1_of(spec.to_dict())

    def expected(version: str) -> float | None:
        if version in known:
            return known[version]
        value = None
        if registry and version and re.fullmatch(r"[\w.+-]+", version):
            value = _registry_expected(registry, version)
        known[version] = value
        return value
    return expected


def _registry_expected(registry: str, version: str) -> float | None:
    from apache_beam.io.filesystems import FileSystems

    path = f"{registry.rstrip('/')}/versions/{version}/model.json"
    try:
        with FileSystems.open(path) as f:
            return expected_f1_of(json.loads(f.read().decode("utf-8")))
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
    """The bootstrap standard error of macro-F1 (models.evaluate's rule) over these posts, floored at
    MIN_STANDARD_ERROR."""
    import numpy as np

    from models.evaluate import _macro_f1_of_counts

    truth, predicted = np.asarray(truth, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    if len(truth) < 2:
        return MIN_STANDARD_ERROR
    n = len(LABELS)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(truth), size=(resamples, len(truth)))
    codes = (truth[idx] * n + predicted[idx] + (np.arange(resamples) * n * n)[:, None]).ravel()
    counts = np.bincount(codes, minlength=resamples * n * n).reshape(resamples, n, n)
    return max(float(np.std(_macro_f1_of_counts(counts), ddof=1)), MIN_STANDARD_ERROR)


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
        if labels < min_labels or (keyword != ALL and labels == version_labels.get(version)):
            continue  # too few, or the version's own figure again (its only labelled keyword)
        baseline = expected(version)
        if baseline is None:
            continue
        value = float(row["macro_f1"])
        if not value < baseline - margin:
            continue
        group = sorted(by_group.get((version, keyword), ()), key=lambda p: (p["post_id"], p["keyword"]))
        se = standard_error([index[p["label"]] for p in group], [index[p["model_label"]] for p in group])
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
            "_id": alert_identity(KIND, version, keyword, labels),
        })
    return alerts


def public_row(alert: Mapping[str, Any]) -> dict:
    return {k: v for k, v in alert.items() if not k.startswith("_")}


# ---- reading and writing ------------------------------------------------------------------

ACCURACY_SQL = "SELECT * FROM ${dataset}.model_accuracy ORDER BY model_version, keyword, lang"
POSTS_SQL = ("SELECT post_id, keyword, label, contested, model_label, model_version, last_labelled_at "
             "FROM ${dataset}.labels_resolved WHERE model_label IS NOT NULL")


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
            _LOG.warning("model_degraded: model %s, keyword %s: live macro-F1 %.3f over %d labels, evaluation %.3f",
                         alert["_model_version"], alert["keyword"], alert["value"], alert["_labels"],
                         alert["baseline"])
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
    else:
        print("no resolved labels with a known model label yet (label posts at the dashboard's review desk)")
    print()
    if written:
        print(f"{len(written)} new {KIND} alert(s):")
        for a in written:
            print(f"  model {a['_model_version']}, keyword {a['keyword']}: macro-F1 {a['value']:.3f} over "
                  f"{a['_labels']} labels, evaluation {a['baseline']:.3f}, z = {a['zscore']:.1f}, "
                  f"labelled {a['window_start']:%Y-%m-%d %H:%M} .. {a['window_end']:%Y-%m-%d %H:%M} UTC")
    else:
        print(f"no new {KIND} alerts (margin {args.margin:g}, at least {args.min_labels} labels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
