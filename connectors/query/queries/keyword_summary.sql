-- Per keyword: posts (all, labelled or not), label counts, share negative (of the labelled
-- posts: unsupported_language posts have no label), mean score, alerts and posts queued for
-- review (what `pulse summary` prints).
WITH post_counts AS (
  SELECT
    keyword,
    COUNT(*) AS posts,
    COUNTIF(label = 'negative') AS negative,
    COUNTIF(label = 'neutral') AS neutral,
    COUNTIF(label = 'positive') AS positive,
    COUNT(label) AS labelled,
    AVG(score) AS mean_score
  FROM ${dataset}.scored_posts_unique
  GROUP BY keyword
),
alert_counts AS (
  SELECT keyword, COUNT(*) AS alerts
  FROM ${dataset}.alerts_unique
  GROUP BY keyword
),
review_counts AS (
  SELECT keyword, COUNT(*) AS review
  FROM ${dataset}.review_queue_unique
  GROUP BY keyword
)
SELECT
  k.keyword,
  COALESCE(p.posts, 0) AS posts,
  COALESCE(p.negative, 0) AS negative,
  COALESCE(p.neutral, 0) AS neutral,
  COALESCE(p.positive, 0) AS positive,
  ROUND(SAFE_DIVIDE(p.negative, p.labelled), 4) AS negative_share,
  ROUND(p.mean_score, 4) AS mean_score,
  COALESCE(a.alerts, 0) AS alerts,
  COALESCE(r.review, 0) AS review
FROM (
  SELECT keyword FROM post_counts
  UNION DISTINCT SELECT keyword FROM alert_counts
  UNION DISTINCT SELECT keyword FROM review_counts
) AS k
LEFT JOIN post_counts AS p ON p.keyword = k.keyword
LEFT JOIN alert_counts AS a ON a.keyword = k.keyword
LEFT JOIN review_counts AS r ON r.keyword = k.keyword
ORDER BY posts DESC, k.keyword
