-- Share of negative posts per keyword per event-time hour, from scored_posts: among the labelled
-- posts (posts is every post; unsupported_language posts have no label).
-- @param since TIMESTAMP = NULL : only hours starting at or after this time
-- @param keyword STRING = NULL : only this keyword
SELECT
  keyword,
  TIMESTAMP_SECONDS(DIV(UNIX_SECONDS(created_at), 3600) * 3600) AS hour_start,
  COUNT(*) AS posts,
  COUNTIF(label = 'negative') AS negative,
  ROUND(SAFE_DIVIDE(COUNTIF(label = 'negative'), COUNT(label)), 4) AS negative_share,
  ROUND(AVG(score), 4) AS mean_score
FROM ${dataset}.scored_posts_unique
WHERE (CAST(@keyword AS STRING) IS NULL OR keyword = @keyword)
GROUP BY keyword, hour_start
HAVING (CAST(@since AS TIMESTAMP) IS NULL OR hour_start >= @since)
ORDER BY hour_start, keyword
