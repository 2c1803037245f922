-- Dead letters per stage and reason, most frequent first.
SELECT
  stage,
  reason,
  COUNT(*) AS messages,
  MIN(received_at) AS first_received,
  MAX(received_at) AS last_received
FROM ${dataset}.dead_letters_unique
GROUP BY stage, reason
ORDER BY messages DESC, stage, reason
