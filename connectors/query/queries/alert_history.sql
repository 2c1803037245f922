-- Alerts, newest window first, one row per (window, keyword, kind).
-- @param keyword STRING = NULL : only this keyword
-- @param since TIMESTAMP = NULL : only windows starting at or after this time
SELECT
  window_start,
  window_end,
  keyword,
  kind,
  ROUND(value, 4) AS value,
  ROUND(baseline, 4) AS baseline,
  ROUND(zscore, 2) AS zscore,
  ARRAY_LENGTH(sample_post_ids) AS sample_posts,
  emitted_at
FROM ${dataset}.alerts_unique
WHERE (CAST(@keyword AS STRING) IS NULL OR keyword = @keyword)
  AND (CAST(@since AS TIMESTAMP) IS NULL OR window_start >= @since)
ORDER BY window_start DESC, keyword, kind
