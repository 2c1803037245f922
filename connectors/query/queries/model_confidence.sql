-- Model confidence and vocabulary drift per model version per event-time hour.
-- @param low_confidence FLOAT64 = 0.6 : confidence below this counts as low
SELECT
  model_version,
  TIMESTAMP_SECONDS(DIV(UNIX_SECONDS(created_at), 3600) * 3600) AS hour_start,
  COUNT(*) AS posts,
  ROUND(AVG(confidence), 4) AS mean_confidence,
  ROUND(SAFE_DIVIDE(COUNTIF(confidence < @low_confidence), COUNT(*)), 4) AS low_confidence_share,
  ROUND(SAFE_DIVIDE(SUM(oov_count), SUM(token_count)), 4) AS oov_rate
FROM ${dataset}.scored_posts_unique
WHERE label IS NOT NULL  -- the posts a model labelled (not unsupported_language ones)
GROUP BY model_version, hour_start
ORDER BY hour_start, model_version
