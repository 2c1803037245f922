"""SQL shared by BigQuery and DuckDB: `views.sql`, `duckdb_compat.sql` and `queries/*.sql`.

A package only so that the files install with sentiment-pulse; `connectors/sqlfiles.py`
loads and renders them (its docstring states the dialect rules).
"""
