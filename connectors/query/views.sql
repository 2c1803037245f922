-- Derived views over the tables of models/contracts.TABLES, created by `connectors/query/duckdb_sql.connect` locally and
-- by `connectors/sinks/bigquery.ensure_tables` in BigQuery. One statement per view, `;`-terminated.
-- `${window_seconds}`, `${window_period_seconds}` and `${review_threshold}` are the settings of
-- the job that wrote the tables (connectors/query/sqlfiles.ViewSettings; defaults 60, 60, 0.5).
--
-- The tables may hold a row more than once: a retried bundle, or a second run into the same
-- output (`pulse run --append`), writes its rows again with new clock stamps (processed_at,
-- emitted_at, received_at). The *_unique views keep one row per identity, and every query in
-- connectors/query/queries/ reads through them, so a rerun never doubles a figure. The identities are the
-- ones connectors/sinks/parquet.py names its files by.

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

-- The latest streaming pane of every (window_start, window_end, keyword, lang) window: the last
-- pane of the last run. Panes accumulate (EARLY ... ON_TIME ... LATE), so within a run the pane
-- with the highest pane_index holds the window's figures. emitted_at is a worker's clock, so two
-- panes of one run may share it or even disagree with pane_index (a parallel runner builds them
-- in different bundles): it only tells runs apart. A rerun (--append) numbers its panes from 0
-- again; each row belongs to the run of the latest pane 0 emitted at or before it (a pane stamped
-- before every pane 0 of its window, to the first run), and the last run's highest pane wins.
CREATE OR REPLACE VIEW ${dataset}.sentiment_windows_latest AS
WITH runs AS (
  SELECT
    *,
    MAX(IF(pane_index = 0, emitted_at, NULL)) OVER (
      PARTITION BY window_start, window_end, keyword, lang
      ORDER BY emitted_at, pane_index
      ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
    ) AS run_started,
    MIN(IF(pane_index = 0, emitted_at, NULL)) OVER (
      PARTITION BY window_start, window_end, keyword, lang
    ) AS first_run_started
  FROM ${dataset}.sentiment_windows
)
SELECT * EXCEPT (run_started, first_run_started)
FROM runs
WHERE TRUE
QUALIFY ROW_NUMBER() OVER (
  PARTITION BY window_start, window_end, keyword, lang
  ORDER BY COALESCE(run_started, first_run_started) DESC, pane_index DESC, emitted_at DESC
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
-- are in no streaming pane. Posts no model labelled (skip_reason, e.g. unsupported_language)
-- count in posts and unsupported only: positive + neutral + negative = posts - unsupported, and
-- the means, low_confidence and oov_rate are over labelled posts (COUNTIF's IFNULL: DuckDB's
-- COUNTIF of only NULLs is NULL, BigQuery's 0). Where that is 0 the window equals its latest streaming pane
-- (connectors/query/queries/window_consistency.sql lists the windows where it does not). Windows as Beam
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
    IFNULL(beyond_lateness, FALSE) AS beyond_lateness,
    skip_reason IS NOT NULL OR label IS NULL AS unlabelled
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
    p.beyond_lateness,
    p.unlabelled
  FROM posts AS p
  CROSS JOIN UNNEST(GENERATE_ARRAY(0, DIV(${window_seconds}, ${window_period_seconds}) - 1)) AS k
)
SELECT
  TIMESTAMP_SECONDS(start_seconds) AS window_start,
  TIMESTAMP_SECONDS(start_seconds + ${window_seconds}) AS window_end,
  IFNULL(post_keyword, '*') AS keyword,
  IFNULL(post_lang, '*') AS lang,
  COUNT(*) AS posts,
  CAST(COUNTIF(IFNULL(NOT unlabelled AND label = 'positive', FALSE)) AS INT64) AS positive,
  CAST(COUNTIF(IFNULL(NOT unlabelled AND label = 'neutral', FALSE)) AS INT64) AS neutral,
  CAST(COUNTIF(IFNULL(NOT unlabelled AND label = 'negative', FALSE)) AS INT64) AS negative,
  AVG(IF(unlabelled, NULL, score)) AS mean_score,
  AVG(IF(unlabelled, NULL, confidence)) AS mean_confidence,
  CAST(COUNTIF(IFNULL(NOT unlabelled AND confidence < ${review_threshold}, FALSE)) AS INT64) AS low_confidence,
  SAFE_DIVIDE(SUM(IF(unlabelled, 0, IFNULL(oov_count, 0))), SUM(IF(unlabelled, 0, IFNULL(token_count, 0))))
    AS oov_rate,
  CAST(COUNTIF(unlabelled) AS INT64) AS unsupported,
  STRING_AGG(DISTINCT model_version, ',' ORDER BY model_version) AS model_version,
  CAST(COUNTIF(beyond_lateness) AS INT64) AS posts_beyond_lateness
FROM windowed
GROUP BY GROUPING SETS (
  (start_seconds, post_keyword, post_lang),
  (start_seconds, post_keyword),
  (start_seconds, post_lang),
  (start_seconds)
);

-- ---- the review desk (table labels, written by connectors/sinks/labels.py) ----------------------
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

-- ---- the job's counters (table job_metrics, written by connectors/sinks/job_metrics.py) ---------

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

-- ---- the accuracy watch (connectors/monitoring/accuracy_watch.py, `pulse accuracy`) ------------------

-- One row per labelled (post_id, keyword): the human label the reviewers agree on. THE RULE
-- (models/retrain.py resolve_labels applies the same one in Python; keep them equal): each
-- reviewer's latest label of the post counts (labels_latest), skips are dropped; the class with
-- strictly the most votes is the post's label; a tie between classes makes the post contested
-- (label NULL). Posts with nothing but skips have no row.
--   votes                        reviewers whose latest label is not a skip
--   lang, text, model_label,     from the post's most recent label (latest labelled_at, then the
--   model_version                greatest label_id)
--   first/last_labelled_at       the earliest and latest of the votes' labelled_at
CREATE OR REPLACE VIEW ${dataset}.labels_resolved AS
WITH latest AS (
  -- labels_latest, less rows whose label is none of the four answers (the store writes none;
  -- resolve_labels lists them as invalid rather than letting them hide a reviewer's label).
  SELECT *
  FROM ${dataset}.labels
  WHERE label IN ('negative', 'neutral', 'positive', 'skip')
  QUALIFY ROW_NUMBER() OVER (
    PARTITION BY post_id, keyword, reviewer
    ORDER BY labelled_at DESC, label_id DESC
  ) = 1
),
voted AS (
  SELECT *
  FROM latest
  WHERE label != 'skip'
),
tally AS (
  SELECT post_id AS tally_post_id, keyword AS tally_keyword, label AS tally_label, COUNT(*) AS n
  FROM voted
  GROUP BY post_id, keyword, label
),
ranked AS (
  SELECT
    tally_post_id,
    tally_keyword,
    tally_label,
    n,
    MAX(n) OVER (PARTITION BY tally_post_id, tally_keyword) AS top
  FROM tally
),
verdict AS (
  SELECT
    tally_post_id,
    tally_keyword,
    SUM(n) AS votes,
    COUNTIF(n = top) > 1 AS contested,
    IF(COUNTIF(n = top) = 1, MAX(IF(n = top, tally_label, NULL)), NULL) AS resolved_label
  FROM ranked
  GROUP BY tally_post_id, tally_keyword
),
recent AS (
  SELECT
    post_id,
    keyword,
    lang,
    text,
    model_label,
    model_version,
    MIN(labelled_at) OVER (PARTITION BY post_id, keyword) AS first_labelled_at,
    MAX(labelled_at) OVER (PARTITION BY post_id, keyword) AS last_labelled_at
  FROM voted
  WHERE TRUE
  QUALIFY ROW_NUMBER() OVER (PARTITION BY post_id, keyword ORDER BY labelled_at DESC, label_id DESC) = 1
)
SELECT
  r.post_id,
  r.keyword,
  r.lang,
  r.text,
  v.resolved_label AS label,
  v.votes,
  v.contested,
  r.model_label,
  r.model_version,
  r.first_labelled_at,
  r.last_labelled_at
FROM recent AS r
JOIN verdict AS v ON v.tally_post_id = r.post_id AND v.tally_keyword = r.keyword;

-- The live model against the resolved human labels (labels_resolved), over the posts whose
-- model label is known. One row per (model_version, keyword, lang), per (model_version,
-- keyword), per (model_version, lang), per model_version, and for everything (model_version
-- '*'); '*' = all keywords / languages / versions, model_version 'unknown' where the label does
-- not say which version scored the post.
--   labels                       non-contested posts behind the figures
--   contested                    contested posts (a tie between classes: in no figure)
--   accuracy                     share of labels the model got right
--   support_C                    labels of class C; precision_C, recall_C: NULL where undefined
--                                (the model never said C / no label is C)
--   f1_C                         2PR / (P + R), 0 where P or R is 0 or undefined
--   macro_f1                     mean of f1_C over the classes present (labelled or predicted):
--                                exactly models/evaluate.py macro_f1_present (a class neither
--                                labelled nor predicted is no evidence: 60 negative labels the
--                                model all got right give 1.0, not 0.333)
--   classes_labelled             how many classes have support > 0 (1: judged on accuracy alone,
--                                connectors/accuracy_watch.judge)
--   first/last_labelled_at       the span of the labels behind the figures (labels_resolved)
-- accuracy and macro_f1 are NULL where labels = 0 (a group of contested posts only). No labels, no rows.
CREATE OR REPLACE VIEW ${dataset}.model_accuracy AS
WITH posts AS (
  SELECT
    -- Named apart from the output columns so that GROUP BY cannot resolve to a SELECT alias.
    IFNULL(model_version, 'unknown') AS post_version,
    keyword AS post_keyword,
    lang AS post_lang,
    IF(contested, NULL, label) AS label,
    model_label,
    contested,
    first_labelled_at,
    last_labelled_at
  FROM ${dataset}.labels_resolved
  WHERE model_label IS NOT NULL
),
counts AS (
  SELECT
    IFNULL(post_version, '*') AS model_version,
    IFNULL(post_keyword, '*') AS keyword,
    IFNULL(post_lang, '*') AS lang,
    -- IFNULL: DuckDB's COUNTIF gives NULL, not BigQuery's 0, when every value is NULL.
    CAST(IFNULL(COUNTIF(NOT contested), 0) AS INT64) AS labels,
    CAST(IFNULL(COUNTIF(contested), 0) AS INT64) AS contested,
    MIN(IF(contested, NULL, first_labelled_at)) AS first_labelled_at,
    MAX(IF(contested, NULL, last_labelled_at)) AS last_labelled_at,
    CAST(IFNULL(COUNTIF(IFNULL(label = model_label, FALSE)), 0) AS INT64) AS correct,
    CAST(IFNULL(COUNTIF(IFNULL(label = 'negative', FALSE)), 0) AS INT64) AS support_negative,
    CAST(IFNULL(COUNTIF(IFNULL(label = 'neutral', FALSE)), 0) AS INT64) AS support_neutral,
    CAST(IFNULL(COUNTIF(IFNULL(label = 'positive', FALSE)), 0) AS INT64) AS support_positive,
    CAST(IFNULL(COUNTIF(NOT contested AND model_label = 'negative'), 0) AS INT64) AS predicted_negative,
    CAST(IFNULL(COUNTIF(NOT contested AND model_label = 'neutral'), 0) AS INT64) AS predicted_neutral,
    CAST(IFNULL(COUNTIF(NOT contested AND model_label = 'positive'), 0) AS INT64) AS predicted_positive,
    CAST(IFNULL(COUNTIF(IFNULL(label = 'negative' AND model_label = 'negative', FALSE)), 0) AS INT64) AS tp_negative,
    CAST(IFNULL(COUNTIF(IFNULL(label = 'neutral' AND model_label = 'neutral', FALSE)), 0) AS INT64) AS tp_neutral,
    IFNULL(COUNTIF(IFNULL(label = 'positive' AND model_label = 'positive', FALSE)), 0) AS tp_positive
  FROM posts
  GROUP BY GROUPING SETS (
    (post_version, post_keyword, post_lang),
    (post_version, post_keyword),
    (post_version, post_lang),
    (post_version),
    ()
  )
  HAVING COUNT(*) > 0
),
rates AS (
  SELECT
    *,
    SAFE_DIVIDE(tp_negative, predicted_negative) AS precision_negative,
    SAFE_DIVIDE(tp_neutral, predicted_neutral) AS precision_neutral,
    SAFE_DIVIDE(tp_positive, predicted_positive) AS precision_positive,
    SAFE_DIVIDE(tp_negative, support_negative) AS recall_negative,
    SAFE_DIVIDE(tp_neutral, support_neutral) AS recall_neutral,
    SAFE_DIVIDE(tp_positive, support_positive) AS recall_positive
  FROM counts
),
scores AS (
  SELECT
    *,
    -- tp > 0 makes P and R both defined and positive; otherwise F1 is 0, as in evaluate.macro_f1.
    IF(tp_negative > 0, 2 * precision_negative * recall_negative / (precision_negative + recall_negative), 0.0)
      AS f1_negative,
    IF(tp_neutral > 0, 2 * precision_neutral * recall_neutral / (precision_neutral + recall_neutral), 0.0)
      AS f1_neutral,
    IF(tp_positive > 0, 2 * precision_positive * recall_positive / (precision_positive + recall_positive), 0.0)
      AS f1_positive
  FROM rates
)
SELECT
  model_version,
  keyword,
  lang,
  labels,
  contested,
  SAFE_DIVIDE(correct, labels) AS accuracy,
  IF(labels > 0,
     (IF(support_negative + predicted_negative > 0, f1_negative, 0.0)
      + IF(support_neutral + predicted_neutral > 0, f1_neutral, 0.0)
      + IF(support_positive + predicted_positive > 0, f1_positive, 0.0))
     / (IF(support_negative + predicted_negative > 0, 1, 0) + IF(support_neutral + predicted_neutral > 0, 1, 0)
        + IF(support_positive + predicted_positive > 0, 1, 0)),
     NULL) AS macro_f1,
  IF(support_negative > 0, 1, 0) + IF(support_neutral > 0, 1, 0) + IF(support_positive > 0, 1, 0)
    AS classes_labelled,
  support_negative,
  precision_negative,
  recall_negative,
  f1_negative,
  support_neutral,
  precision_neutral,
  recall_neutral,
  f1_neutral,
  support_positive,
  precision_positive,
  recall_positive,
  f1_positive,
  first_labelled_at,
  last_labelled_at
FROM scores;

-- ---- drivers: what sets a window apart (connectors/query/queries/drivers.sql) ---------------------------
--
-- The terms of every stored post, once per post (a post repeating a word counts once):
-- words of three or more letters (lower case; stop words, URLs and the names of HTML
-- entities such as &amp; left out),
-- hashtags ('#' + word), mentions ('@' + name) and emoji (symbol characters, one each).
-- term_kind is word|hashtag|mention|emoji.
CREATE OR REPLACE VIEW ${dataset}.post_terms AS
WITH tokens AS (
  SELECT p.post_id, p.keyword, p.created_at, p.label, tok AS term
  FROM ${dataset}.scored_posts_unique AS p
  CROSS JOIN UNNEST(REGEXP_EXTRACT_ALL(
    LOWER(REGEXP_REPLACE(p.text, r'https?://[^\s]+', ' ')),
    r'[#@]?[\pL\pN_]+|\p{So}')) AS tok
)
SELECT DISTINCT post_id, keyword, created_at, label, term,
  CASE WHEN STARTS_WITH(term, '#') THEN 'hashtag' WHEN STARTS_WITH(term, '@') THEN 'mention'
       WHEN REGEXP_CONTAINS(term, r'^\p{So}') THEN 'emoji' ELSE 'word' END AS term_kind
FROM tokens
WHERE (STARTS_WITH(term, '#') OR STARTS_WITH(term, '@') OR REGEXP_CONTAINS(term, r'^\p{So}')
       OR (CHAR_LENGTH(term) >= 3 AND REGEXP_CONTAINS(term, r'^\pL')))
  AND term NOT IN (
    'the', 'and', 'for', 'you', 'your', 'are', 'was', 'were', 'but', 'not', 'this', 'that', 'with', 'have',
    'has', 'had', 'from', 'they', 'them', 'their', 'there', 'what', 'when', 'where', 'who', 'why', 'how',
    'all', 'any', 'can', 'could', 'would', 'should', 'will', 'just', 'our', 'out', 'about', 'into', 'than',
    'then', 'too', 'very', 'its', 'don', 'didn', 'doesn', 'isn', 'wasn', 'won', 'im', 'dont', 'cant', 'get', 'got',
    'one', 'now', 'like', 'some', 'more', 'been', 'being', 'his', 'her', 'she', 'him', 'out', 'off', 'again',
    'also', 'only', 'over', 'because', 'did', 'does', 'doing', 'which', 'while', 'these', 'those', 'here',
    'amp', 'quot', 'http', 'https', 'www')
;

-- ---- incidents: one surge, however many alert rows --------------------------------------
--
-- Every alert of alerts_unique with the incident it belongs to. A keyword's alerts form one
-- incident while each starts at most one window (${window_seconds} s) after the latest end of
-- the ones before it (one quiet window does not split a surge). An alert of the roll-up
-- keyword '*' whose window lies within a keyword's incident (one window's slack either side)
-- is that incident's echo and belongs to it (to each, where incidents of two keywords
-- overlap); the other '*' alerts form incidents of their own (incident_keyword '*') by the
-- same rule. incident_id = incident_keyword || '/' || the start's Unix seconds.
CREATE OR REPLACE VIEW ${dataset}.incident_alerts AS
WITH alerts AS (
  SELECT window_start, window_end, keyword, kind, value, baseline, zscore, sample_post_ids, emitted_at,
    UNIX_SECONDS(window_start) AS start_s, UNIX_SECONDS(window_end) AS end_s
  FROM ${dataset}.alerts_unique
),
own AS (
  SELECT *, MAX(end_s) OVER (PARTITION BY keyword ORDER BY start_s, kind
                             ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS previous_end_s
  FROM alerts WHERE keyword != '*'
),
own_numbered AS (
  SELECT *, SUM(CASE WHEN previous_end_s IS NULL OR start_s > previous_end_s + ${window_seconds} THEN 1 ELSE 0 END)
              OVER (PARTITION BY keyword ORDER BY start_s, kind ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS n
  FROM own
),
own_spans AS (
  SELECT keyword, n, MIN(start_s) AS first_s, MAX(end_s) AS last_s FROM own_numbered GROUP BY keyword, n
),
echoes AS (
  SELECT s.keyword AS incident_keyword, s.first_s, a.*
  FROM alerts AS a
  JOIN own_spans AS s
    ON a.keyword = '*' AND a.start_s <= s.last_s + ${window_seconds} AND a.end_s + ${window_seconds} >= s.first_s
),
echoed AS (
  SELECT DISTINCT start_s, kind FROM echoes
),
roll_up AS (
  SELECT a.*, MAX(a.end_s) OVER (ORDER BY a.start_s, a.kind
                                 ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS previous_end_s
  FROM alerts AS a
  LEFT JOIN echoed AS e ON a.start_s = e.start_s AND a.kind = e.kind
  WHERE a.keyword = '*' AND e.start_s IS NULL
),
roll_up_numbered AS (
  SELECT *, SUM(CASE WHEN previous_end_s IS NULL OR start_s > previous_end_s + ${window_seconds} THEN 1 ELSE 0 END)
              OVER (ORDER BY start_s, kind ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS n
  FROM roll_up
),
incident_of AS (
  SELECT o.keyword AS incident_keyword, s.first_s, o.window_start, o.window_end, o.keyword, o.kind, o.value,
    o.baseline, o.zscore, o.sample_post_ids, o.emitted_at
  FROM own_numbered AS o JOIN own_spans AS s ON o.keyword = s.keyword AND o.n = s.n
  UNION ALL
  SELECT incident_keyword, first_s, window_start, window_end, keyword, kind, value, baseline, zscore,
    sample_post_ids, emitted_at
  FROM echoes
  UNION ALL
  SELECT '*' AS incident_keyword, MIN(start_s) OVER (PARTITION BY n) AS first_s, window_start, window_end, keyword,
    kind, value, baseline, zscore, sample_post_ids, emitted_at
  FROM roll_up_numbered
)
SELECT CONCAT(incident_keyword, '/', CAST(first_s AS STRING)) AS incident_id, incident_keyword,
  window_start, window_end, keyword, kind, value, baseline, zscore, sample_post_ids, emitted_at
FROM incident_of;

-- One row per incident: its keyword, when it started and ended (the first window's start, the
-- last window's end), its peak (the alert with the greatest zscore: window and kind), the
-- kinds it raised, its size (alerts, of which echoes: '*' alerts), and status: 'closed'
-- once the job has written a window ending more than one window after the incident's end
-- (it went a quiet window without alerting: a later alert starts a new incident), else 'open'.
CREATE OR REPLACE VIEW ${dataset}.incidents AS
WITH ranked AS (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY incident_id ORDER BY zscore DESC, window_start, kind) AS r
  FROM ${dataset}.incident_alerts
),
latest AS (
  SELECT MAX(window_end) AS last_end FROM ${dataset}.sentiment_windows_latest
)
SELECT incident_id, incident_keyword AS keyword, MIN(window_start) AS started_at, MAX(window_end) AS ended_at,
  MAX(CASE WHEN r = 1 THEN window_start END) AS peak_at, MAX(CASE WHEN r = 1 THEN kind END) AS peak_kind,
  MAX(zscore) AS peak_zscore, STRING_AGG(DISTINCT kind, ', ' ORDER BY kind) AS kinds,
  COUNT(*) AS alerts, COUNTIF(keyword = '*' AND incident_keyword != '*') AS echoes,
  CASE WHEN UNIX_SECONDS(MAX(latest.last_end)) > UNIX_SECONDS(MAX(window_end)) + ${window_seconds}
       THEN 'closed' ELSE 'open' END AS status
FROM ranked CROSS JOIN latest
GROUP BY incident_id, incident_keyword;
