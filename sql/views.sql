-- Derived views over the five tables, created by `connectors/duckdb_sql.connect` locally and
-- by `connectors/bigquery.create_views` in BigQuery. One statement per view, `;`-terminated.

-- The last pane of every (window_start, window_end, keyword, lang) window. Panes accumulate
-- (EARLY ... ON_TIME ... LATE), so the highest pane_index holds the window's final figures;
-- emitted_at breaks ties between panes re-emitted after a worker restart.
CREATE OR REPLACE VIEW ${dataset}.sentiment_windows_latest AS
SELECT *
FROM ${dataset}.sentiment_windows
WHERE TRUE
QUALIFY ROW_NUMBER() OVER (
  PARTITION BY window_start, window_end, keyword, lang
  ORDER BY pane_index DESC, emitted_at DESC
) = 1;

-- One row per alert: the alert step may re-emit an alert when a late pane updates its window.
CREATE OR REPLACE VIEW ${dataset}.alerts_latest AS
SELECT *
FROM ${dataset}.alerts
WHERE TRUE
QUALIFY ROW_NUMBER() OVER (
  PARTITION BY window_start, window_end, keyword, kind
  ORDER BY emitted_at DESC
) = 1;
