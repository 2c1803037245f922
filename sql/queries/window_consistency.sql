-- Windows whose final pane disagrees with what scored_posts holds for the same window
-- (per keyword, all languages); empty when the streaming figures match the table.
-- @param window_seconds INT64 = 60 : the fixed window length the job ran with
WITH bucketed AS (
  SELECT
    TIMESTAMP_SECONDS(DIV(UNIX_SECONDS(created_at), @window_seconds) * @window_seconds) AS window_start,
    keyword,
    label
  FROM ${dataset}.scored_posts
),
recomputed AS (
  SELECT window_start, keyword, COUNT(*) AS posts, COUNTIF(label = 'negative') AS negative
  FROM bucketed
  GROUP BY window_start, keyword
)
SELECT
  w.window_start,
  w.keyword,
  w.posts AS window_posts,
  r.posts AS table_posts,
  w.negative AS window_negative,
  r.negative AS table_negative
FROM ${dataset}.sentiment_windows_latest AS w
LEFT JOIN recomputed AS r
  ON r.window_start = w.window_start AND r.keyword = w.keyword
WHERE w.lang = '*'
  AND w.keyword != '*'
  AND UNIX_SECONDS(w.window_end) - UNIX_SECONDS(w.window_start) = @window_seconds
  AND (r.posts IS NULL OR r.posts != w.posts OR r.negative != w.negative)
ORDER BY w.window_start, w.keyword
