-- BigQuery functions the shared SQL uses that DuckDB lacks, as DuckDB macros with BigQuery's
-- semantics (each pinned on edge values by tests/test_sql.py). Run by
-- `connectors/query/duckdb_sql.connect` before any view; never sent to BigQuery.

-- SAFE_DIVIDE(X, Y): X / Y as FLOAT64, NULL where BigQuery's division would fail: division by
-- zero, or a finite quotient overflowing to infinity (DuckDB would give inf for both).
CREATE OR REPLACE MACRO safe_divide(a, b) AS CASE
  WHEN CAST(b AS DOUBLE) = 0 THEN NULL
  WHEN isfinite(CAST(a AS DOUBLE)) AND isinf(CAST(a AS DOUBLE) / CAST(b AS DOUBLE)) THEN NULL
  ELSE CAST(a AS DOUBLE) / CAST(b AS DOUBLE)
END;

-- DIV(X, Y): integer division truncated toward zero (DIV(-7, 2) = -3), an error for Y = 0.
-- BigQuery takes INT64 only; a non-integral value is an error here rather than silently
-- rounded (DuckDB's `//` on a DOUBLE is plain division: -7.5 // 2 = -3.75). DuckDB's integer
-- `//` truncates toward zero, as BigQuery does.
CREATE OR REPLACE MACRO div(a, b) AS CASE
  WHEN b = 0 THEN error('division by zero: DIV(' || a || ', 0)')
  WHEN a <> trunc(a) OR b <> trunc(b) THEN error('DIV takes INT64 arguments, got DIV(' || a || ', ' || b || ')')
  ELSE CAST(a AS BIGINT) // CAST(b AS BIGINT)
END;

-- UNIX_SECONDS(ts): whole seconds since 1970-01-01 00:00:00 UTC, rounding down to the start of
-- the second, before 1970 too (1969-12-31 23:59:59.5 -> -1). `epoch(ts)::BIGINT` rounded to the
-- nearest second instead, which put a post at hh:mm:59.6 into the next window.
CREATE OR REPLACE MACRO unix_seconds(ts) AS
  (epoch_us(CAST(ts AS TIMESTAMPTZ))
   - ((epoch_us(CAST(ts AS TIMESTAMPTZ)) % 1000000) + 1000000) % 1000000) // 1000000;

-- TIMESTAMP_SECONDS(s): the TIMESTAMP s whole seconds after the epoch (negative: before it).
-- BigQuery takes INT64 only; a fractional value is an error here rather than a sub-second time.
CREATE OR REPLACE MACRO timestamp_seconds(s) AS CASE
  WHEN s <> trunc(s) THEN error('TIMESTAMP_SECONDS takes an INT64, got ' || s)
  ELSE to_timestamp(CAST(s AS BIGINT))
END;

-- GENERATE_ARRAY(start, end): the INT64 values start..end inclusive (empty when end < start).
CREATE OR REPLACE MACRO generate_array(a, b) AS generate_series(CAST(a AS BIGINT), CAST(b AS BIGINT));

-- REGEXP_CONTAINS(s, re): whether re matches part of s (both use RE2).
CREATE OR REPLACE MACRO regexp_contains(s, re) AS regexp_matches(s, re);
