-- What sets a window apart: the terms (words, hashtags, mentions, emoji; view post_terms) of one keyword's posts in [window_start, window_end) against the same keyword's posts in the baseline before it, ranked by log-odds with an informative Dirichlet prior (Monroe, Colaresi and Quinn 2008, "Fightin' Words", eq. 22): the prior is every keyword's posts over the whole span, scaled to prior_weight pseudo-counts. zscore is the log-odds ratio over its standard error: robust for rare terms, which a raw ratio would put first. Counts are posts holding the term.
-- @param keyword STRING : the keyword ('*' = all keywords)
-- @param window_start TIMESTAMP : start of the window (inclusive)
-- @param window_end TIMESTAMP : end of the window (exclusive)
-- @param baseline_seconds INT64 = 1800 : length of the baseline before window_start (the job's --alert_baseline_windows x --window_size)
-- @param prior_weight FLOAT64 = 500.0 : pseudo-counts of the prior (alpha_0)
-- @param limit INT64 = 10 : how many terms
WITH span AS (
  SELECT term, term_kind,
    COUNTIF((@keyword = '*' OR keyword = @keyword) AND created_at >= @window_start) AS window_posts,
    COUNTIF((@keyword = '*' OR keyword = @keyword) AND created_at < @window_start) AS baseline_posts,
    COUNT(*) AS background_posts
  FROM ${dataset}.post_terms
  WHERE created_at >= TIMESTAMP_SECONDS(UNIX_SECONDS(@window_start) - @baseline_seconds)
    AND created_at < @window_end
  GROUP BY term, term_kind
),
totals AS (
  SELECT term, term_kind, window_posts, baseline_posts,
    @prior_weight * background_posts / SUM(background_posts) OVER () AS prior,
    SUM(window_posts) OVER () AS window_total,
    SUM(baseline_posts) OVER () AS baseline_total
  FROM span
),
log_odds AS (
  SELECT term, term_kind, window_posts, baseline_posts, prior,
    LN(SAFE_DIVIDE(window_posts + prior, window_total + @prior_weight - window_posts - prior))
      - LN(SAFE_DIVIDE(baseline_posts + prior, baseline_total + @prior_weight - baseline_posts - prior)) AS log_odds,
    SQRT(1 / (window_posts + prior) + 1 / (baseline_posts + prior)) AS std_error
  FROM totals
  WHERE window_posts > 0 AND window_total + @prior_weight - window_posts - prior > 0
    AND baseline_total + @prior_weight - baseline_posts - prior > 0
)
SELECT term, term_kind, window_posts, baseline_posts, log_odds, log_odds / std_error AS zscore
FROM log_odds
ORDER BY zscore DESC, term
LIMIT @limit
