"""What the dashboard reads: the same tables and views as `pulse sql`, locally or on BigQuery.

`open_source(output)` gives a Source for a Parquet output directory (DuckDB over the files,
connectors/query/duckdb_sql.py: the file list is taken when the Source opens, so each refresh opens
a new one and sees the files written since; files being written have hidden names and are never
read) or for `PROJECT:DATASET` (BigQuery, through the same views, created by
`make bq-tables`). Every query below is BigQuery SQL over those views, rendered for DuckDB by
the project's one dialect switch (connectors/query/sqlfiles.render), so the dashboard's figures are
the figures `pulse sql` gives.

The page functions in dashboard/app.py call the `*_frame` functions here; they take a Source
and plain values and return pandas DataFrames, so tests call them without Streamlit.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
from typing import Any, Mapping

import pandas as pd

from connectors.monitoring.accuracy_watch import DEFAULT_MIN_LABELS
from connectors.query import sqlfiles
from pipelines.options import output_kind

UTC = dt.timezone.utc
LABEL_CHOICES = ("negative", "neutral", "positive", "skip")


class SourceError(RuntimeError):
    """The output cannot be read (missing directory, unknown dataset), in one sentence."""


class Source:
    """Runs dashboard SQL (BigQuery dialect over `${dataset}.` views) on one output."""

    kind = "?"
    output = ""
    warnings: list[str]

    def frame(self, sql: str, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        raise NotImplementedError

    def has_view(self, name: str) -> bool:
        return True

    def close(self) -> None:
        pass


class ParquetSource(Source):
    kind = "parquet"

    def __init__(self, output: str, settings: sqlfiles.ViewSettings | None = None):
        from connectors.query import duckdb_sql

        self.output = output
        self.settings = settings or sqlfiles.ViewSettings()
        self.warnings = []
        self._open()
        if not any(os.scandir(output)):
            self.warnings.append(f"{output} is empty: no table has been written yet")

    def _open(self) -> None:
        from connectors.query import duckdb_sql

        try:
            self._con, skipped = duckdb_sql.connect_with_warnings(self.output, settings=self.settings)
        except duckdb_sql.OutputNotFound as e:
            raise SourceError(str(e)) from None
        self._note(skipped)

    def _note(self, skipped) -> None:
        for path, reason in skipped:
            line = f"skipped unreadable file {path}: {reason}"
            if line not in self.warnings:
                self.warnings.append(line)

    def frame(self, sql: str, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        """Run a query; a file whose data pages DuckDB cannot read (its footer was fine) is left
        out and the query run again without it (a warning says which)."""
        import duckdb

        from connectors.query import duckdb_sql

        text = sqlfiles.render(sql, "duckdb", variables=self.settings.variables())
        for _ in range(20):
            try:
                cursor = self._con.execute(text, dict(params)) if params else self._con.execute(text)
                return cursor.df()
            except duckdb.Error as e:
                bad = duckdb_sql.note_unreadable(e)
                if bad is None:
                    raise
                self._note([bad])
                self._con.close()
                self._open()
        raise SourceError(f"too many unreadable files under {self.output}")

    def has_view(self, name: str) -> bool:
        found = self._con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = ?", [name]).fetchone()
        return bool(found and found[0])

    def close(self) -> None:
        self._con.close()


class BigQuerySource(Source):
    kind = "bigquery"

    def __init__(self, dataset: str, settings: sqlfiles.ViewSettings | None = None,
                 project: str | None = None, endpoint: str | None = None):
        from connectors.sinks.bigquery import bigquery_client, split_dataset
        from google.api_core import exceptions as gexc

        self.output = dataset
        self.settings = settings or sqlfiles.ViewSettings()
        self.warnings = []
        dataset_project, name = split_dataset(dataset, project)
        self._client = bigquery_client(dataset_project or project, endpoint)
        self._dataset = f"{dataset_project}:{name}" if dataset_project else name
        try:
            self._client.get_dataset(f"{dataset_project}.{name}" if dataset_project else name)
        except gexc.NotFound:
            raise SourceError(f"BigQuery dataset {dataset} does not exist (create it with make bq-tables)") from None
        except gexc.GoogleAPICallError as e:
            raise SourceError(f"cannot read BigQuery dataset {dataset}: {getattr(e, 'message', e)}") from None

    def frame(self, sql: str, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        from google.cloud import bigquery

        text = sqlfiles.render(sql, "bigquery", self._dataset, variables=self.settings.variables())
        config = bigquery.QueryJobConfig(query_parameters=[_bq_param(k, v) for k, v in (params or {}).items()])
        rows = [dict(row) for row in self._client.query(text, job_config=config).result()]
        return pd.DataFrame(rows)


def _bq_param(name: str, value: Any):
    from google.cloud import bigquery

    if isinstance(value, (list, tuple)):
        return bigquery.ArrayQueryParameter(name, "STRING", list(value))
    kind = ("BOOL" if isinstance(value, bool) else "INT64" if isinstance(value, int)
            else "FLOAT64" if isinstance(value, float) else "TIMESTAMP" if isinstance(value, dt.datetime)
            else "STRING")
    return bigquery.ScalarQueryParameter(name, kind, value)


def open_source(output: str, settings: sqlfiles.ViewSettings | None = None, project: str | None = None) -> Source:
    """A Source for a Parquet output directory or a BigQuery PROJECT:DATASET."""
    if output_kind(output) == "bigquery":
        return BigQuerySource(output, settings, project)
    if not os.path.isdir(output):
        raise SourceError(f"no output directory {output!r}: run the job first (pulse run --output {output})")
    return ParquetSource(output, settings)


FINGERPRINT = """
SELECT (SELECT MAX(emitted_at) FROM ${dataset}.sentiment_windows) AS windows,
       (SELECT COUNT(*) FROM ${dataset}.scored_posts) AS posts,
       (SELECT COUNT(*) FROM ${dataset}.dead_letters) AS dead_letters,
       (SELECT COUNT(*) FROM ${dataset}.labels) AS labels
"""


def fingerprint(output: str, project: str | None = None) -> str:
    """What changes when the job or a reviewer writes: for a Parquet output the names, sizes and
    modification times of its visible files; for BigQuery the latest pane and the row counts of
    the tables that grow. The page re-reads its tables only when this changes."""
    if output_kind(output) == "bigquery":
        try:
            source = open_source(output, project=project)
            return repr(source.frame(FINGERPRINT).to_dict("records"))
        except Exception as e:  # noqa: BLE001  (the page itself says why it cannot read)
            return f"error: {type(e).__name__}"
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(output):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue  # being written
            path = os.path.join(root, name)
            try:
                info = os.stat(path)
            except FileNotFoundError:
                continue
            digest.update(f"{os.path.relpath(path, output)}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


# ---- the queries (BigQuery SQL over the views of connectors/query/views.sql) ---------------------------

KEYWORDS = """
SELECT DISTINCT keyword FROM ${dataset}.sentiment_windows_latest WHERE keyword != '*' ORDER BY keyword
"""

LANGS = """
SELECT DISTINCT lang FROM ${dataset}.sentiment_windows_latest WHERE lang != '*' ORDER BY lang
"""

TIME_RANGE = """
SELECT MIN(window_start) AS first_start, MAX(window_end) AS last_end FROM ${dataset}.sentiment_windows_latest
"""

WINDOWS = """
SELECT window_start, window_end, keyword, lang, posts, IFNULL(unsupported, 0) AS unsupported,
       positive, neutral, negative,
       SAFE_DIVIDE(negative, posts - IFNULL(unsupported, 0)) AS negative_share, mean_score, mean_confidence,
       low_confidence, oov_rate, pane_index, pane_timing, model_version, emitted_at
FROM ${dataset}.sentiment_windows_latest
WHERE keyword = @keyword AND lang = @lang AND window_start >= @start AND window_start < @end
ORDER BY window_start
"""

# Late panes shown as corrections: the window's on-time figures beside its latest (late) ones.
CORRECTIONS = """
WITH on_time AS (
  SELECT window_start, keyword, lang, posts, negative, IFNULL(unsupported, 0) AS unsupported
  FROM ${dataset}.sentiment_windows
  WHERE pane_timing = 'ON_TIME' AND keyword = @keyword AND lang = @lang
  QUALIFY ROW_NUMBER() OVER (PARTITION BY window_start, keyword, lang ORDER BY emitted_at DESC) = 1
)
SELECT l.window_start, o.posts AS on_time_posts, l.posts AS corrected_posts,
       SAFE_DIVIDE(o.negative, o.posts - o.unsupported) AS on_time_negative_share,
       SAFE_DIVIDE(l.negative, l.posts - IFNULL(l.unsupported, 0)) AS corrected_negative_share,
       l.pane_index, l.emitted_at
FROM ${dataset}.sentiment_windows_latest AS l
LEFT JOIN on_time AS o USING (window_start, keyword, lang)
WHERE l.pane_timing = 'LATE' AND l.keyword = @keyword AND l.lang = @lang
  AND l.window_start >= @start AND l.window_start < @end
ORDER BY l.window_start
"""

ALERTS = """
SELECT window_start, window_end, keyword, kind, value, baseline, zscore, sample_post_ids, emitted_at
FROM ${dataset}.alerts_unique
WHERE (@keyword = '*' OR keyword = @keyword) AND window_start >= @start AND window_start < @end
ORDER BY window_start DESC, keyword, kind
"""

INCIDENTS = """
SELECT incident_id, keyword, started_at, ended_at, peak_at, peak_kind, peak_zscore, kinds, alerts, echoes, status
FROM ${dataset}.incidents
WHERE (@keyword = '*' OR keyword = @keyword) AND ended_at > @start AND started_at < @end
ORDER BY started_at DESC, keyword
"""

INCIDENT_ALERTS = """
SELECT incident_id, window_start, window_end, keyword, kind, value, baseline, zscore, sample_post_ids, emitted_at
FROM ${dataset}.incident_alerts
WHERE incident_id IN (SELECT id FROM UNNEST(@incident_ids) AS id)
ORDER BY incident_id, window_start, keyword, kind
"""

# Up to `per_term` posts of the window holding each driver term, the most negative first.
DRIVER_EXAMPLES = """
SELECT term, post_id, keyword, created_at, label, score, text
FROM (
  SELECT t.term, p.post_id, p.keyword, p.created_at, p.label, p.score, p.text,
    ROW_NUMBER() OVER (PARTITION BY t.term ORDER BY p.score, p.created_at, p.post_id) AS n
  FROM ${dataset}.post_terms AS t
  JOIN ${dataset}.scored_posts_unique AS p ON p.post_id = t.post_id AND p.keyword = t.keyword
  WHERE (@keyword = '*' OR t.keyword = @keyword) AND t.created_at >= @start AND t.created_at < @end
    AND t.term IN (SELECT x FROM UNNEST(@terms) AS x)
)
WHERE n <= @per_term
ORDER BY term, n
"""

POSTS_BY_ID = """
SELECT post_id, keyword, text, label, score, confidence
FROM ${dataset}.scored_posts_unique
WHERE post_id IN (SELECT id FROM UNNEST(@post_ids) AS id)
ORDER BY post_id
"""

# The Posts page: newest first, filtered, one page at a time; each post with the labels its
# reviewers hold now (labels_latest, skips included) beside the model's.
_POSTS_FROM = """
FROM ${dataset}.scored_posts_unique AS p
LEFT JOIN (
  SELECT post_id, keyword, STRING_AGG(CONCAT(reviewer, ': ', label), '; ' ORDER BY reviewer) AS reviewer_labels
  FROM ${dataset}.labels_latest
  GROUP BY post_id, keyword
) AS r ON r.post_id = p.post_id AND r.keyword = p.keyword
WHERE (@keyword = '*' OR p.keyword = @keyword) AND (@lang = '*' OR p.lang = @lang)
  AND p.created_at >= @start AND p.created_at < @end
  AND (@search = '' OR STRPOS(LOWER(p.text), LOWER(@search)) > 0)
  AND (@label = '*' OR IFNULL(p.label, 'none') = @label)
  AND ((@min_confidence <= 0.0 AND @max_confidence >= 1.0)
       OR p.confidence BETWEEN @min_confidence AND @max_confidence)
  AND ((@min_score <= -1.0 AND @max_score >= 1.0) OR p.score BETWEEN @min_score AND @max_score)
  AND (@reviewed = '*' OR (@reviewed = 'yes') = (r.post_id IS NOT NULL))
"""

POSTS = """
SELECT p.created_at, p.keyword, p.lang, p.text, p.label, r.reviewer_labels, p.score, p.confidence, p.skip_reason,
       p.model_version, p.post_id, p.beyond_lateness
""" + _POSTS_FROM + """
ORDER BY p.created_at DESC, p.post_id, p.keyword
LIMIT @limit OFFSET @offset
"""

POSTS_COUNT = "SELECT COUNT(*) AS posts" + _POSTS_FROM

DEAD_LETTERS = """
SELECT TIMESTAMP_SECONDS(UNIX_SECONDS(received_at) - MOD(UNIX_SECONDS(received_at), 60)) AS minute,
       stage, reason, COUNT(*) AS dead_letters
FROM ${dataset}.dead_letters_unique
GROUP BY minute, stage, reason
ORDER BY minute, stage, reason
"""

# corrected_windows: windows (keyword, language, window_start) whose latest pane is late, each
# counted once: the roll-up rows of the same posts (keyword '*', language '*') are not windows.
STORED = """
SELECT (SELECT COUNT(*) FROM ${dataset}.scored_posts_unique) AS scored_posts,
       (SELECT COUNT(*) FROM ${dataset}.dead_letters_unique) AS dead_letters,
       (SELECT IFNULL(COUNTIF(IFNULL(beyond_lateness, FALSE)), 0) FROM ${dataset}.scored_posts_unique)
         AS beyond_lateness,
       (SELECT COUNT(*) FROM (
          SELECT DISTINCT keyword, lang, window_start FROM ${dataset}.sentiment_windows_latest
          WHERE pane_timing = 'LATE' AND keyword != '*' AND lang != '*')) AS corrected_windows,
       (SELECT COUNT(*) FROM ${dataset}.scored_posts_unique WHERE skip_reason IS NOT NULL) AS unsupported
"""

# Posts stored but in no window: they arrived after their window had closed for good.
BEYOND_LATENESS = """
SELECT COUNT(*) AS posts
FROM ${dataset}.scored_posts_unique
WHERE IFNULL(beyond_lateness, FALSE) AND (@keyword = '*' OR keyword = @keyword) AND (@lang = '*' OR lang = @lang)
  AND created_at >= @start AND created_at < @end
"""

# Posts no model labelled (skip_reason, e.g. unsupported_language), per language and reason.
UNSUPPORTED_BY_LANG = """
SELECT lang, skip_reason, COUNT(*) AS posts, MIN(created_at) AS first_post, MAX(created_at) AS last_post
FROM ${dataset}.scored_posts_unique
WHERE skip_reason IS NOT NULL AND created_at >= @start AND created_at < @end
GROUP BY lang, skip_reason
ORDER BY posts DESC, lang, skip_reason
"""

DRIFT = """
SELECT window_start, posts, IFNULL(unsupported, 0) AS unsupported, oov_rate, mean_confidence,
       SAFE_DIVIDE(positive, posts - IFNULL(unsupported, 0)) AS positive_share,
       SAFE_DIVIDE(neutral, posts - IFNULL(unsupported, 0)) AS neutral_share,
       SAFE_DIVIDE(negative, posts - IFNULL(unsupported, 0)) AS negative_share
FROM ${dataset}.sentiment_windows_latest
WHERE keyword = '*' AND lang = '*' AND window_start >= @start AND window_start < @end
ORDER BY window_start
"""

REVIEW_QUEUE = """
SELECT created_at, post_id, keyword, lang, text, label AS model_label, confidence, score, model_version
FROM ${dataset}.review_queue_unique
ORDER BY created_at, post_id, keyword
"""


def frame_or_empty(source: Source, sql: str, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
    return source.frame(sql, params)


def keywords(source: Source) -> list[str]:
    return source.frame(KEYWORDS)["keyword"].tolist()


def langs(source: Source) -> list[str]:
    return source.frame(LANGS)["lang"].tolist()


def time_range(source: Source) -> tuple[dt.datetime, dt.datetime] | None:
    row = source.frame(TIME_RANGE)
    if row.empty or pd.isna(row.iloc[0]["first_start"]):
        return None
    return _utc(row.iloc[0]["first_start"]), _utc(row.iloc[0]["last_end"])


def _utc(value) -> dt.datetime:
    ts = pd.Timestamp(value)
    ts = ts.tz_localize(UTC) if ts.tzinfo is None else ts.tz_convert(UTC)
    return ts.to_pydatetime()


def windows(source: Source, keyword: str, lang: str, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    return source.frame(WINDOWS, {"keyword": keyword, "lang": lang, "start": start, "end": end})


def corrections(source: Source, keyword: str, lang: str, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    return source.frame(CORRECTIONS, {"keyword": keyword, "lang": lang, "start": start, "end": end})


def alerts(source: Source, keyword: str, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    return source.frame(ALERTS, {"keyword": keyword, "start": start, "end": end})


def incidents(source: Source, keyword: str, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    """The incidents view (consecutive alerts of a keyword and their '*' echoes) overlapping [start, end)."""
    return source.frame(INCIDENTS, {"keyword": keyword, "start": start, "end": end})


def incident_alerts(source: Source, incident_ids: list[str]) -> pd.DataFrame:
    if not incident_ids:
        return pd.DataFrame(columns=["incident_id", "window_start", "window_end", "keyword", "kind", "value",
                                     "baseline", "zscore", "sample_post_ids", "emitted_at"])
    return source.frame(INCIDENT_ALERTS, {"incident_ids": list(incident_ids)})


# The job's default --alert_baseline_windows: drivers compare a window with the baseline the
# alert was judged against.
BASELINE_WINDOWS = 30


def drivers(source: Source, keyword: str, start: dt.datetime, end: dt.datetime, limit: int = 10) -> pd.DataFrame:
    """connectors/query/queries/drivers.sql: the terms that set [start, end) of `keyword` apart from its baseline
    (the BASELINE_WINDOWS windows before), by log-odds with an informative Dirichlet prior."""
    query = sqlfiles.load_query("drivers")
    params = query.bind({"keyword": keyword, "window_start": start, "window_end": end, "limit": limit,
                         "baseline_seconds": BASELINE_WINDOWS * source.settings.window_size})
    return source.frame(query.text, params)


def driver_examples(source: Source, keyword: str, start: dt.datetime, end: dt.datetime, terms: list[str],
                    per_term: int = 2) -> pd.DataFrame:
    if not terms:
        return pd.DataFrame(columns=["term", "post_id", "keyword", "created_at", "label", "score", "text"])
    return source.frame(DRIVER_EXAMPLES, {"keyword": keyword, "start": start, "end": end, "terms": list(terms),
                                          "per_term": per_term})


# The Compare page: each keyword in [start, end) ('now') and in the period of the same length
# before it ('before'), from the latest pane of each window (lang '*').
COMPARE = """
WITH periods AS (
  SELECT keyword, IF(window_start >= @start, 'now', 'before') AS period,
    SUM(posts) AS posts, SUM(negative) AS negative, SUM(positive) AS positive,
    SUM(posts - IFNULL(unsupported, 0)) AS labelled
  FROM ${dataset}.sentiment_windows_latest
  WHERE keyword != '*' AND lang = '*' AND window_start >= @previous_start AND window_start < @end
  GROUP BY keyword, period
),
totals AS (
  SELECT period, SUM(posts) AS all_posts FROM periods GROUP BY period
)
SELECT p.keyword, p.period, p.posts, p.labelled, SAFE_DIVIDE(p.posts, t.all_posts) AS share_of_voice,
  SAFE_DIVIDE(p.negative, p.labelled) AS negative_share,
  SAFE_DIVIDE(p.positive - p.negative, p.labelled) AS net_sentiment
FROM periods AS p JOIN totals AS t ON t.period = p.period
ORDER BY p.keyword, p.period
"""

COMPARE_OVER_TIME = """
SELECT window_start, keyword, posts, SAFE_DIVIDE(negative, posts - IFNULL(unsupported, 0)) AS negative_share,
  SAFE_DIVIDE(positive - negative, posts - IFNULL(unsupported, 0)) AS net_sentiment,
  SAFE_DIVIDE(posts, SUM(posts) OVER (PARTITION BY window_start)) AS share_of_voice
FROM ${dataset}.sentiment_windows_latest
WHERE keyword != '*' AND lang = '*' AND window_start >= @start AND window_start < @end
ORDER BY window_start, keyword
"""

COMPARED = ("share_of_voice", "negative_share", "net_sentiment")


def compare(source: Source, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    """One row per keyword: posts, share of voice, negative share and net sentiment
    ((positive - negative) / labelled) in [start, end) and in the period of the same length before,
    with the changes; ranked by net sentiment now (best first; ties by share of voice)."""
    previous_start = start - (end - start)
    rows = source.frame(COMPARE, {"start": start, "end": end, "previous_start": previous_start})
    columns = ["rank", "keyword", "posts", "labelled"] + [f"{m}{s}" for m in COMPARED
                                                         for s in ("", "_before", "_change")]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    now = rows[rows["period"] == "now"].set_index("keyword")
    before = rows[rows["period"] == "before"].set_index("keyword")
    out = pd.DataFrame(index=sorted(set(now.index) | set(before.index)))
    out["posts"] = now["posts"].reindex(out.index).fillna(0).astype(int)
    out["labelled"] = now["labelled"].reindex(out.index).fillna(0).astype(int)
    for metric in COMPARED:
        out[metric] = now[metric].reindex(out.index).astype(float)
        out[f"{metric}_before"] = before[metric].reindex(out.index).astype(float)
        out[f"{metric}_change"] = out[metric] - out[f"{metric}_before"]
    out = out.rename_axis("keyword").reset_index()
    out = out.sort_values(["net_sentiment", "share_of_voice", "keyword"], ascending=[False, False, True],
                          na_position="last").reset_index(drop=True)
    out.insert(0, "rank", range(1, len(out) + 1))
    return out[columns]


def compare_over_time(source: Source, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    return source.frame(COMPARE_OVER_TIME, {"start": start, "end": end})


def posts_by_id(source: Source, post_ids: list[str]) -> pd.DataFrame:
    if not post_ids:
        return pd.DataFrame(columns=["post_id", "keyword", "text", "label", "score", "confidence"])
    return source.frame(POSTS_BY_ID, {"post_ids": list(post_ids)})


POST_FILTERS = {"search": "", "label": "*", "min_confidence": 0.0, "max_confidence": 1.0, "min_score": -1.0,
                "max_score": 1.0, "reviewed": "*"}


def posts(source: Source, keyword: str, lang: str, start: dt.datetime, end: dt.datetime,
          search: str = "", limit: int = 1000, offset: int = 0, **filters) -> pd.DataFrame:
    """The posts of [start, end), newest first, `limit` from `offset`, narrowed by POST_FILTERS
    (label '*' = any, 'none' = no label; reviewed '*', 'yes' or 'no')."""
    params = {**POST_FILTERS, **filters, "keyword": keyword, "lang": lang, "start": start, "end": end,
              "search": search or "", "limit": int(limit), "offset": int(offset)}
    return source.frame(POSTS, params)


def posts_count(source: Source, keyword: str, lang: str, start: dt.datetime, end: dt.datetime,
                search: str = "", **filters) -> int:
    params = {**POST_FILTERS, **filters, "keyword": keyword, "lang": lang, "start": start, "end": end,
              "search": search or ""}
    return int(source.frame(POSTS_COUNT, params).iloc[0]["posts"])


def dead_letters(source: Source) -> pd.DataFrame:
    return source.frame(DEAD_LETTERS)


def stored(source: Source) -> dict:
    row = source.frame(STORED)
    return {k: 0 if pd.isna(v) else int(v) for k, v in row.iloc[0].items()}


BALANCE = """
SELECT * FROM ${dataset}.job_balance ORDER BY started_at DESC
"""


def balance(source: Source) -> pd.DataFrame | None:
    """The job's counters per run (read = scored + duplicates + dead letters), where `pulse run` wrote them."""
    if not source.has_view("job_balance"):
        return None
    return source.frame(BALANCE)


def beyond_lateness(source: Source, keyword: str, lang: str, start: dt.datetime, end: dt.datetime) -> int:
    """How many posts of [start, end) arrived past the allowed lateness: stored, counted in no window."""
    params = {"keyword": keyword, "lang": lang, "start": start, "end": end}
    return int(source.frame(BEYOND_LATENESS, params).iloc[0]["posts"])


def unsupported_by_lang(source: Source, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    """Posts stored without a label (unsupported_language ...) per language, in [start, end)."""
    return source.frame(UNSUPPORTED_BY_LANG, {"start": start, "end": end})


def drift(source: Source, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    return source.frame(DRIFT, {"start": start, "end": end})


def review_queue(source: Source, done: set[tuple[str, str]] | frozenset = frozenset()) -> pd.DataFrame:
    """The low-confidence posts, oldest first, less those (post_id, keyword) already labelled."""
    queue = source.frame(REVIEW_QUEUE)
    if done and not queue.empty:
        keep = [(p, k) not in done for p, k in zip(queue["post_id"], queue["keyword"])]
        queue = queue[keep]
    return queue.reset_index(drop=True)


# ---- the review desk ----------------------------------------------------------------------

RECENT_LABELS = """
SELECT labelled_at, post_id, keyword, lang, label, model_label, text, model_version, label_id
FROM ${dataset}.labels_latest
WHERE reviewer = @reviewer
ORDER BY labelled_at DESC, label_id
LIMIT 20
"""


AGREEMENT = """
SELECT * FROM ${dataset}.label_agreement ORDER BY reviewer = '*' DESC, reviewer, model_version
"""


def agreement(source: Source) -> pd.DataFrame:
    """The label_agreement view: each reviewer (and '*', everyone) against the model and each other."""
    return source.frame(AGREEMENT)


class ReviewDesk:
    """The review desk's reads and writes: connectors/sinks/labels.py's store for this output.

    A first label of (post, keyword, reviewer) is written once, whatever the number of tabs
    (the store's atomic create); a correction names the label it corrects; the views keep the
    latest per (post, keyword, reviewer).
    """

    def __init__(self, source: Source, project: str | None = None):
        from connectors.sinks import labels

        self.source = source
        if source.kind == "bigquery":
            self.store = labels.BigQueryLabelStore(source.output, project=project)
        else:
            self.store = labels.ParquetLabelStore(source.output)

    def labelled(self, reviewer: str) -> set[tuple[str, str]]:
        return self.store.labelled(reviewer)

    @staticmethod
    def _post(row: Mapping[str, Any]) -> dict:
        post = dict(row)
        post["label"] = row.get("model_label")  # the store's `label` of a post is the model's
        return post

    def record(self, row: Mapping[str, Any], label: str, reviewer: str) -> tuple[bool, str]:
        result = self.store.record(self._post(row), label, reviewer)
        if result.written:
            return True, f"{row['post_id']} ({row['keyword']}): {label}"
        return False, (f"{row['post_id']} ({row['keyword']}) was already labelled {result.label} by {reviewer} "
                       "(another tab?); nothing written")

    def recent(self, reviewer: str, limit: int = 10) -> pd.DataFrame:
        return self.source.frame(RECENT_LABELS, {"reviewer": reviewer}).head(limit)

    def correct(self, old: Mapping[str, Any], label: str, reviewer: str) -> tuple[bool, str]:
        result = self.store.record(self._post(old), label, reviewer, correcting=old["label_id"])
        if result.written:
            return True, f"{old['post_id']} ({old['keyword']}) is now {label}"
        return False, (f"{old['post_id']} ({old['keyword']}) was corrected elsewhere meanwhile: it is "
                       f"{result.label}; nothing written")


def label_store(source: Source, project: str | None = None) -> ReviewDesk:
    return ReviewDesk(source, project)


def save_list(desk, rows: list[dict], edits: Mapping[Any, Mapping[str, Any]], reviewer: str) -> tuple[int, int]:
    """The list view's labels: `edits` is Streamlit's data_editor state ({row index: {"label": ...}})
    over `rows`, the queue rows as they were shown. Returns (written, already labelled elsewhere)."""
    written = already = 0
    for index, change in sorted(edits.items(), key=lambda kv: int(kv[0])):
        label = change.get("label")
        if label and 0 <= int(index) < len(rows):
            ok, _ = desk.record(rows[int(index)], label, reviewer)
            written, already = written + ok, already + (not ok)
    return written, already


# ---- the accuracy watch (views labels_resolved, model_accuracy; connectors/monitoring/accuracy_watch.py) ----

ACCURACY = """
SELECT * FROM ${dataset}.model_accuracy
ORDER BY model_version = '*' DESC, model_version, keyword = '*' DESC, keyword, lang = '*' DESC, lang
"""

QUALITY_ALERTS = """
SELECT window_start, window_end, keyword, kind, value, baseline, zscore, sample_post_ids
FROM ${dataset}.alerts_unique
WHERE kind IN (SELECT k FROM UNNEST(@kinds) AS k)
ORDER BY window_start DESC, keyword, kind
"""

# Below this many resolved labels a figure is too rough to compare with the evaluation: the
# accuracy watch's own minimum (`pulse accuracy --min-labels`, default), not a second number.
MIN_LABELS = DEFAULT_MIN_LABELS

QUALITY_KINDS = ("model_degraded", "oov_drift", "confidence_drift", "class_mix_drift")


def accuracy(source: Source) -> pd.DataFrame:
    """The model_accuracy view: the live model against the resolved labels, per version, keyword, language."""
    if not source.has_view("model_accuracy"):
        return pd.DataFrame()
    return source.frame(ACCURACY)


def quality_alerts(source: Source) -> pd.DataFrame:
    """The model_degraded and drift alerts (alerts_unique), the latest first."""
    return source.frame(QUALITY_ALERTS, {"kinds": list(QUALITY_KINDS)})


def expected_figures(model: str):
    """version -> the model's own evaluation macro-F1 (model.json of `model`: bundled or a directory),
    and a note; (None-returning, the reason) when it cannot be read."""
    from connectors.monitoring import accuracy_watch

    try:
        return accuracy_watch._expected_for_model(model), f"model.json of {model}"
    except accuracy_watch.AccuracyWatchError as e:
        return (lambda version: None), str(e)
