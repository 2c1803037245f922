-- The most negative posts whose event time falls in [window_start, window_end).
-- @param window_start TIMESTAMP : start of the window (inclusive)
-- @param window_end TIMESTAMP : end of the window (exclusive)
-- @param keyword STRING = NULL : only this keyword
-- @param limit INT64 = 10 : how many posts
SELECT
  post_id,
  keyword,
  lang,
  created_at,
  score,
  confidence,
  text
FROM ${dataset}.scored_posts_unique
WHERE label = 'negative'
  AND created_at >= @window_start
  AND created_at < @window_end
  AND (CAST(@keyword AS STRING) IS NULL OR keyword = @keyword)
ORDER BY score, confidence DESC, post_id
LIMIT @limit
