-- Derived views over the tables of models/contracts.TABLES, created by `connectors/duckdb_sql.connect` locally and
-- by `connectors/bigquery.ensure_tables` in BigQuery. One statement per view, `;`-terminated.
-- `${window_seconds}`, `${window_period_seconds}` and `${review_threshold}` are the settings of
-- the job that wrote the tables (connectors/sqlfiles.ViewSettings; defaults 60, 60, 0.5).
--
-- The tables may hold a row more than once: a retried bundle, or a second run into the same
-- output (`pulse run --append`), writes its rows again with new clock stamps (processed_at,
-- emitted_at, received_at). The *_unique views keep one row per identity, and every query in
-- sql/queries/ reads through them, so a rerun never doubles a figure. The identities are the
-- ones connectors/parquet.py names its files by.

-- One row per scored (post_id, keyword): the latest scored.
CREATE OR REPLACE VIEW ${dataset}.scored_posts_unique AS
SELECT *
FROM ${dataset}.scored_posts
WHERE TRUE
QUALIFY ROW_NUMBER() OVER (
  PARTITION BY post_id, keyword
  ORDER BY processed_at DESC, model_version DESC
) = 1;

-- One row per (post_id, keyword) queued for review: the latest scored.
CREATE OR REPLACE VIEW ${dataset}.review_queue_unique AS
SELECT *
FROM ${dataset}.review_queue
WHERE TRUE
QUALIFY ROW_NUMBER() OVER (
  PARTITION BY post_id, keyword
  ORDER BY processed_at DESC, model_version DESC
) = 1;

-- One row per dead letter (stage, reason, payload, attributes, message_id): the first received.
CREATE OR REPLACE VIEW ${dataset}.dead_letters_unique AS
SELECT *
FROM ${dataset}.dead_letters
WHERE TRUE
QUALIFY ROW_NUMBER() OVER (
  PARTITION BY stage, reason, payload, attributes, message_id
  ORDER BY received_at
) = 1;

-- The latest streaming pane of every (window_start, window_end, keyword, lang) window. Panes
-- accumulate (EARLY ... ON_TIME ... LATE), so the last one emitted holds the window's figures;
-- after a rerun that is the rerun's pane (whose pane_index may be lower: numbering restarts),
-- and pane_index breaks ties between panes emitted at the same instant.
CREATE OR REPLACE VIEW ${dataset}.sentiment_windows_latest AS
SELECT *
FROM ${dataset}.sentiment_windows
WHERE TRUE
QUALIFY ROW_NUMBER() OVER (
  PARTITION BY window_start, window_end, keyword, lang
  ORDER BY emitted_at DESC, pane_index DESC
) = 1;

-- One row per alert (window_start, keyword, kind): the first emitted, which is when an analyst
-- heard of it (a window alerts at most once per kind; a rerun emits it again).
CREATE OR REPLACE VIEW ${dataset}.alerts_unique AS
SELECT *
FROM ${dataset}.alerts
WHERE TRUE
QUALIFY ROW_NUMBER() OVER (
  PARTITION BY window_start, keyword, kind
  ORDER BY emitted_at, window_end
) = 1;

-- Every window computed exactly from scored_posts: the figures of a SentimentWindow row
-- (transforms/aggregate.py), '*' rows for all keywords and all languages, plus
-- posts_beyond_lateness, the posts that arrived after the window's allowed lateness and so
-- are in no streaming pane. Where that is 0 the window equals its latest streaming pane
-- (sql/queries/window_consistency.sql lists the windows where it does not). Windows as Beam
-- assigns them (offset 0): a post belongs to the windows of length ${window_seconds} starting
-- at its event time rounded down to a multiple of ${window_period_seconds}, and to the earlier
-- ones that still cover it when windows slide.
CREATE OR REPLACE VIEW ${dataset}.sentiment_windows_final AS
WITH posts AS (
  SELECT
    UNIX_SECONDS(created_at)
      - MOD(MOD(UNIX_SECONDS(created_at), ${window_period_seconds}) + ${window_period_seconds},
            ${window_period_seconds}) AS last_start,
    keyword,
    lang,
    label,
    score,
    confidence,
    token_count,
    oov_count,
    model_version,
    IFNULL(beyond_lateness, FALSE) AS beyond_lateness
  FROM ${dataset}.scored_posts_unique
),
windowed AS (
  SELECT
    p.last_start - k * ${window_period_seconds} AS start_seconds,
    -- Named apart from the output columns so that GROUP BY cannot resolve to a SELECT alias.
    p.keyword AS post_keyword,
    p.lang AS post_lang,
    p.label,
    p.score,
    p.confidence,
    p.token_count,
    p.oov_count,
    p.model_version,
    p.beyond_lateness
  FROM posts AS p
  CROSS JOIN UNNEST(GENERATE_ARRAY(0, DIV(${window_seconds}, ${window_period_seconds}) - 1)) AS k
)
SELECT
  TIMESTAMP_SECONDS(start_seconds) AS window_start,
  TIMESTAMP_SECONDS(start_seconds + ${window_seconds}) AS window_end,
  IFNULL(post_keyword, '*') AS keyword,
  IFNULL(post_lang, '*') AS lang,
  COUNT(*) AS posts,
  CAST(COUNTIF(label = 'positive') AS INT64) AS positive,
  CAST(COUNTIF(label = 'neutral') AS INT64) AS neutral,
  CAST(COUNTIF(label = 'negative') AS INT64) AS negative,
  AVG(score) AS mean_score,
  AVG(confidence) AS mean_confidence,
  CAST(COUNTIF(confidence < ${review_threshold}) AS INT64) AS low_confidence,
  SAFE_DIVIDE(SUM(IFNULL(oov_count, 0)), SUM(IFNULL(token_count, 0))) AS oov_rate,
  STRING_AGG(DISTINCT model_version, ',' ORDER BY model_version) AS model_version,
  CAST(COUNTIF(beyond_lateness) AS INT64) AS posts_beyond_lateness
FROM windowed
GROUP BY GROUPING SETS (
  (start_seconds, post_keyword, post_lang),
  (start_seconds, post_keyword),
  (start_seconds, post_lang),
  (start_seconds)
);

-- ---- the review desk (table labels, written by connectors/labels.py) ----------------------
--
-- labels is append-only: a reviewer's first label of a post is written at most once, and a
-- correction is a new row (corrects = the label_id it replaces), written later.

-- The label each reviewer holds now for each post: one row per (post_id, keyword, reviewer),
-- the latest labelled_at (ties broken by the greater label_id). Skips included.
CREATE OR REPLACE VIEW ${dataset}.labels_latest AS
SELECT *
FROM ${dataset}.labels
WHERE TRUE
QUALIFY ROW_NUMBER() OVER (
  PARTITION BY post_id, keyword, reviewer
  ORDER BY labelled_at DESC, label_id DESC
) = 1;

-- Agreement of reviewers with the model and with each other, over labels_latest. One row per
-- (reviewer, model_version), per reviewer (model_version '*'), per model version
-- (reviewer '*') and for everything (reviewer '*', model_version '*'); model_version is the
-- version that scored the post ('unknown' where the label does not say).
--   labels                 labels other than skip
--   skipped                skips
--   agree_with_model       labels equal to the model's label
--   model_agreement        agree_with_model / the labels whose model label is known (NULL if none)
--   shared_posts           posts among this row's labels (skips aside) that at least two reviewers
--                          labelled (skips aside), counted once each
--   shared_posts_agreeing  those where every reviewer's label is the same
--   reviewer_agreement     shared_posts_agreeing / shared_posts (NULL if none)
-- No labels, no rows.
CREATE OR REPLACE VIEW ${dataset}.label_agreement AS
WITH latest AS (
  SELECT post_id, keyword, reviewer, label, model_label, IFNULL(model_version, 'unknown') AS version
  FROM ${dataset}.labels_latest
),
shared AS (
  SELECT post_id AS shared_post_id, keyword AS shared_keyword, COUNT(DISTINCT label) = 1 AS all_agree
  FROM latest
  WHERE label != 'skip'
  GROUP BY post_id, keyword
  HAVING COUNT(*) >= 2
),
rows_ AS (
  SELECT
    -- Named apart from the output columns so that GROUP BY cannot resolve to a SELECT alias.
    l.reviewer AS label_reviewer,
    l.version AS label_version,
    l.label,
    l.model_label,
    -- (post_id, keyword) as one value; the length prefix keeps ('ab', 'c') apart from ('a', 'bc').
    IF(l.label != 'skip' AND s.shared_post_id IS NOT NULL,
       CONCAT(CAST(LENGTH(l.post_id) AS STRING), ':', l.post_id, l.keyword), NULL) AS shared_key,
    s.all_agree
  FROM latest AS l
  LEFT JOIN shared AS s ON s.shared_post_id = l.post_id AND s.shared_keyword = l.keyword
)
SELECT
  IFNULL(label_reviewer, '*') AS reviewer,
  IFNULL(label_version, '*') AS model_version,
  CAST(COUNTIF(label != 'skip') AS INT64) AS labels,
  CAST(COUNTIF(label = 'skip') AS INT64) AS skipped,
  -- IFNULL: DuckDB's COUNTIF gives NULL, not BigQuery's 0, when every value is NULL.
  CAST(COUNTIF(IFNULL(label = model_label, FALSE)) AS INT64) AS agree_with_model,
  SAFE_DIVIDE(COUNTIF(IFNULL(label = model_label, FALSE)), COUNTIF(label != 'skip' AND model_label IS NOT NULL))
    AS model_agreement,
  COUNT(DISTINCT shared_key) AS shared_posts,
  COUNT(DISTINCT IF(all_agree, shared_key, NULL)) AS shared_posts_agreeing,
  SAFE_DIVIDE(COUNT(DISTINCT IF(all_agree, shared_key, NULL)), COUNT(DISTINCT shared_key)) AS reviewer_agreement
FROM rows_
GROUP BY GROUPING SETS (
  (label_reviewer, label_version),
  (label_reviewer),
  (label_version),
  ()
)
HAVING COUNT(*) > 0;

-- ---- the job's counters (table job_metrics, written by connectors/job_metrics.py) ---------

-- The latest snapshot of each run's Beam counters and its balance: every message read ends
-- scored, as a duplicate or as a dead letter. While a run is RUNNING, messages in flight
-- make it read unbalanced; judge a run by its last snapshot. unaccounted = read - scored -
-- duplicates - dead_letters. stored_balanced: the Parquet writer stored exactly the scored
-- posts and dead letters counted (NULL where the sink reports no row counts: BigQuery).
CREATE OR REPLACE VIEW ${dataset}.job_balance AS
SELECT
  run_id,
  started_at,
  updated_at,
  state,
  input,
  read,
  scored,
  duplicates,
  dead_letters,
  read - scored - duplicates - dead_letters AS unaccounted,
  read = scored + duplicates + dead_letters AS balanced,
  stored_scored,
  stored_dead_letters,
  IF(stored_scored IS NULL AND stored_dead_letters IS NULL, NULL,
     IFNULL(stored_scored, 0) = scored AND IFNULL(stored_dead_letters, 0) = dead_letters) AS stored_balanced
FROM ${dataset}.job_metrics
WHERE TRUE
QUALIFY ROW_NUMBER() OVER (
  PARTITION BY run_id
  ORDER BY updated_at DESC, read DESC
) = 1;
