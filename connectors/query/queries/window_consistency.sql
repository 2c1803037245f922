-- Windows whose latest streaming pane disagrees with the window computed exactly from
-- scored_posts (sentiment_windows_final); `differs` names the figures that disagree, or says
-- no_pane / no_posts for a window only one of them has. Windows holding a post that arrived
-- after the allowed lateness are left out (no streaming pane counts such a post). Empty when
-- the streaming figures match the table.
WITH compared AS (
  SELECT
    COALESCE(s.window_start, f.window_start) AS window_start,
    COALESCE(s.window_end, f.window_end) AS window_end,
    COALESCE(s.keyword, f.keyword) AS keyword,
    COALESCE(s.lang, f.lang) AS lang,
    s.posts AS window_posts,
    f.posts AS final_posts,
    s.negative AS window_negative,
    f.negative AS final_negative,
    CASE
      WHEN s.posts IS NULL THEN 'no_pane'
      WHEN f.posts IS NULL THEN 'no_posts'
      ELSE CONCAT(
        IF(s.posts != f.posts, 'posts ', ''),
        IF(IFNULL(s.unsupported, 0) != f.unsupported, 'unsupported ', ''),
        IF(s.positive != f.positive, 'positive ', ''),
        IF(s.neutral != f.neutral, 'neutral ', ''),
        IF(s.negative != f.negative, 'negative ', ''),
        IF(ABS(s.mean_score - f.mean_score) > 1e-9
           OR (s.mean_score IS NULL) != (f.mean_score IS NULL), 'mean_score ', ''),
        IF(ABS(s.mean_confidence - f.mean_confidence) > 1e-9
           OR (s.mean_confidence IS NULL) != (f.mean_confidence IS NULL), 'mean_confidence ', ''),
        IF(s.low_confidence != f.low_confidence, 'low_confidence ', ''),
        IF(ABS(s.oov_rate - f.oov_rate) > 1e-9
           OR (s.oov_rate IS NULL) != (f.oov_rate IS NULL), 'oov_rate ', ''),
        IF(IFNULL(s.model_version, '') != IFNULL(f.model_version, ''), 'model_version ', ''))
    END AS differs,
    IFNULL(f.posts_beyond_lateness, 0) AS posts_beyond_lateness
  FROM ${dataset}.sentiment_windows_latest AS s
  FULL OUTER JOIN ${dataset}.sentiment_windows_final AS f
    ON f.window_start = s.window_start
    AND f.window_end = s.window_end
    AND f.keyword = s.keyword
    AND f.lang = s.lang
)
SELECT
  window_start,
  window_end,
  keyword,
  lang,
  window_posts,
  final_posts,
  window_negative,
  final_negative,
  RTRIM(differs) AS differs
FROM compared
WHERE differs != ''
  AND posts_beyond_lateness = 0
ORDER BY window_start, window_end, keyword, lang
