-- BigQuery functions the shared SQL uses that DuckDB lacks, as DuckDB macros with BigQuery's
-- semantics. Run by `connectors/duckdb_sql.connect` before any view; never sent to BigQuery.
CREATE OR REPLACE MACRO safe_divide(a, b) AS CASE WHEN b = 0 THEN NULL ELSE a::DOUBLE / b END;
CREATE OR REPLACE MACRO div(a, b) AS CASE WHEN b = 0 THEN error('division by zero') ELSE (a // b) END;
CREATE OR REPLACE MACRO unix_seconds(ts) AS epoch(ts)::BIGINT;
CREATE OR REPLACE MACRO timestamp_seconds(s) AS to_timestamp(s);
