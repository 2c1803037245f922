"""The SQL layer, shared by BigQuery and DuckDB: the files `views.sql`, `duckdb_compat.sql` and
`queries/*.sql` (installed with the package), `sqlfiles` (load and render them for a dialect)
and `duckdb_sql` (DuckDB over the job's Parquet output, with the same tables and views).

May import: models, and the other edge packages (connectors.sources, .sinks, .feeds);
never transforms, connectors.monitoring or pipelines.
"""
